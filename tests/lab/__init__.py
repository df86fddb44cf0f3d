"""The fault lab: histories, checkers and fault scenarios (issue 14).

Every scenario runs in two sizes. The default (what ``./scripts/test`` and CI run) is
short; ``scripts/lab`` sets ``TXLOCK_LAB_SCALE=long`` (and ``TXLOCK_LAB_MINUTES``) for the
figures in ``RELIABILITY.md``. Scenarios report their figures through
:func:`lab.report.record`; see ``docs/reliability.md`` for what each one injects and checks.
"""
