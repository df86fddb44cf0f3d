"""``txlock doctor [URL]``: check a deployment, one pass / warn / fail line per check.

The checks themselves are the library's (:mod:`txlock._doctor` and each backend's
``doctor`` module); this module is the command's options and how it prints them. Exit
codes: 0 when every check passed, 1 with warnings, 2 with failures.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from txlock.cli._output import Output

if TYPE_CHECKING:
    import click

    from txlock._doctor import Check

__all__ = ["cmd_doctor", "doctor_command"]

_LABEL = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}


def doctor_command(
    common: Callable[[Callable[..., Any]], Callable[..., Any]],
    output_and_url: Callable[[click.Context, str | None, bool], tuple[Output, str | None]],
) -> click.Command:
    """The click command, given the group's shared ``--url`` / ``--json`` options."""
    import click  # lazy: click is optional

    @click.command(name="doctor", context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("store_url", metavar="[URL]", required=False, default=None)
    @click.option("--quick", is_flag=True, default=False, help="A 1-second live check instead of 5 seconds.")
    @common
    @click.pass_context
    def doctor(context: click.Context, store_url: str | None, quick: bool, url: str | None, as_json: bool) -> int:
        """Check that a lock store is deployed safely: pass / warn / fail lines, each with what to do.

        Reachability and round-trip time, clock skew, the backend's own settings (Redis
        persistence, eviction, replication, ACLs; PostgreSQL schema, LISTEN, privileges,
        timeouts; the filesystem of file and SQLite stores), then a live check: two processes
        contend on a scratch key (removed at the end; nothing else is written). Exit 0 when
        every check passed, 1 with warnings, 2 with failures.
        """
        output, url = output_and_url(context, url, as_json)
        return cmd_doctor(output, store_url if store_url is not None else url, quick)

    return doctor


def cmd_doctor(output: Output, url: str | None, quick: bool) -> int:
    """``txlock doctor``: run the checks, print them, return 0 / 1 / 2 by the worst status."""
    from txlock import _doctor
    from txlock._url import redact

    seconds = _doctor.QUICK_SECONDS if quick else _doctor.LIVE_SECONDS
    where = "the default store" if url is None else redact(url)
    output.note(f"checking {where} (the live check takes {seconds:g} s)")
    checks = _doctor.run_checks(url, live_seconds=seconds)
    if output.json:
        output.data([check.as_json() for check in checks])
    else:
        import shutil  # here: `txlock run` builds this command too and must start quickly

        for line in report_lines(checks, shutil.get_terminal_size().columns if sys.stdout.isatty() else None):
            output.text(line)
    return _doctor.exit_code(checks)


def report_lines(checks: Sequence[Check], width: int | None) -> list[str]:
    """The report for people: ``STATUS  check  detail`` and ``-> advice`` under it, wrapped to
    ``width`` columns (``None``: one line each, for logs and grep)."""
    name_width = max((len(check.check) for check in checks), default=0)
    indent = " " * (6 + name_width + 2)
    lines = []
    for check in checks:
        head = f"{_LABEL.get(check.status, check.status.upper())}  {check.check.ljust(name_width)}  "
        lines += _wrapped(head + check.detail, indent, width)
        if check.advice:
            lines += _wrapped(indent + "-> " + check.advice, indent + "   ", width)
    counts = {status: sum(1 for check in checks if check.status == status) for status in _LABEL}
    lines.append(f"{counts['pass']} passed, {counts['warn']} warned, {counts['fail']} failed")
    return lines


def _wrapped(text: str, indent: str, width: int | None) -> list[str]:
    if width is None:
        return [text]
    import textwrap

    return textwrap.wrap(text, width=max(60, width - 1), subsequent_indent=indent, break_on_hyphens=False) or [text]
