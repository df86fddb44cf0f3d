"""``python -m txlock``: the ``txlock`` command (see :mod:`txlock.cli`)."""

from txlock.cli import main

if __name__ == "__main__":
    main()
