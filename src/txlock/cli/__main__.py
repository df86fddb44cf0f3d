"""``python -m txlock.cli``: the ``txlock`` command, as ``python -m txlock`` is."""

from txlock.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
