"""The command line: click's group and options, and :func:`main`, the console script.

click is imported only inside the functions (it is optional: :func:`main` explains when it
is missing).
"""

from __future__ import annotations

import logging
import math
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import txlock
from txlock.cli._commands import cmd_acquire, cmd_force_release, cmd_ls, cmd_release, cmd_run, cmd_status, cmd_wait
from txlock.cli._exit_codes import FAILED, OK, USAGE, CliError
from txlock.cli._output import LogHandler, Output, write

if TYPE_CHECKING:
    import click

__all__ = ["KILL_AFTER", "MIN_TTL", "main", "parse_duration"]

#: Shortest ``--ttl``: a lease must outlive the start of the command and the gaps between
#: its renewals (every ttl/3) under ordinary load, on every backend.
MIN_TTL = 1.0
_MIN_TTL_WHY = (
    "a shorter lease can end before it is put to use (the command started) or between two renewals "
    "(every ttl/3) on a busy machine"
)
#: Default seconds a command gets between SIGTERM and SIGKILL when the lock is lost.
KILL_AFTER = 5.0

_MISSING_CLICK = "txlock's command line needs click: pip install 'txlock[cli]'"

_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*((?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds from ``"1.5"``, ``"30s"``, ``"500ms"``, ``"5m"``, ``"2h"``, ``"1d"`` or ``"inf"``."""
    if text.strip().lower() in {"inf", "infinity", "forever"}:
        return math.inf
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; use seconds (1.5) or a unit: 500ms, 30s, 5m, 2h, 1d")
    return float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def _command_group() -> click.Group:
    import click  # lazy: click is optional: main() explains when it is missing

    class Seconds(click.ParamType):  # type: ignore[type-arg]
        name = "seconds"

        def __init__(self, positive: bool = False, finite: bool = False, minimum: float = 0.0, why: str = "") -> None:
            self.positive = positive
            self.finite = finite
            self.minimum = minimum
            self.why = why

        def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
            if isinstance(value, (int, float)):
                seconds = float(value)
            else:
                try:
                    seconds = parse_duration(str(value))
                except ValueError as exception:
                    self.fail(str(exception), param, ctx)
            if math.isnan(seconds) or seconds < 0 or (self.positive and seconds == 0):
                self.fail(f"{value!r} must be {'> 0' if self.positive else '>= 0'} seconds", param, ctx)
            if self.finite and math.isinf(seconds):
                self.fail(f"{value!r} must be a finite number of seconds", param, ctx)
            if seconds < self.minimum:
                self.fail(f"{value!r} is below the minimum of {self.minimum:g}s: {self.why}", param, ctx)
            return seconds

    def common(function: Callable[..., Any]) -> Callable[..., Any]:
        function = click.option(
            "--json", "as_json", is_flag=True, default=False, help="Machine-readable output (JSON) for scripts."
        )(function)
        function = click.option(
            "--url", metavar="URL", default=None,
            help="Lock store URL (default: $TXLOCK_URL, else the embedded SQLite store).",
        )(function)
        return function

    def output_and_url(context: click.Context, url: str | None, as_json: bool) -> tuple[Output, str | None]:
        root = context.find_root().params
        use_json = as_json or bool(root.get("as_json"))
        output = Output(use_json)
        context.find_root().meta["txlock.out"] = output
        return output, url if url is not None else root.get("url")

    timeout_option = click.option(
        "--timeout", type=Seconds(), default=None, metavar="SECONDS",
        help="Give up after this long (0: one attempt; default: wait forever). Units: 500ms, 30s, 5m, 2h.",
    )

    epilog = (
        "\b\nExit codes: 0 ok, 1 refused, 2 usage, 69 store error, 75 timed out / held,\n"
        "76 lock lost, 78 bad URL / missing extra; `run` exits with the command's code.\n"
        "Docs: https://github.com/txlock/txlock/blob/main/docs/cli.md"
    )

    @click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=epilog)
    @click.option(
        "--url", metavar="URL", envvar="TXLOCK_URL", default=None,
        help="Lock store URL: sqlite:///path.db, file:///dir, redis://host, postgresql://... "
        "[env: TXLOCK_URL; default: the embedded SQLite store]",
    )
    @click.option("--json", "as_json", is_flag=True, default=False, help="Machine-readable output (JSON).")
    @click.version_option(txlock.__version__, "--version", "-V", prog_name="txlock", message="%(prog)s %(version)s")
    def cli(url: str | None, as_json: bool) -> None:
        """Named locks across processes and hosts: hold a lock around any command, manage locks."""

    class RunCommand(click.Command):
        """``run``: its words are KEY... -- COMMAND; click drops the ``--``, so note where it was."""

        def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
            ctx.meta[_AFTER_DASHES] = _words_after_dashes(self, args)
            return super().parse_args(ctx, args)

    @cli.command(cls=RunCommand, context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("words", nargs=-1, required=True, metavar="KEY... -- COMMAND [ARGS]...")
    @click.option("--holder", metavar="NAME", default=None, help="Holder name (default: host:pid:random).")
    @timeout_option
    @click.option(
        "--ttl", type=Seconds(positive=True, finite=True, minimum=MIN_TTL, why=_MIN_TTL_WHY), default=None,
        metavar="SECONDS",
        help="Lease length (at least 1s), renewed in the background while the command runs (default: a hold bound "
        "to this txlock process).",
    )
    @click.option(
        "--kill-after", type=Seconds(finite=True), default=KILL_AFTER, show_default=True, metavar="SECONDS",
        help="If the lock is lost: seconds between SIGTERM and SIGKILL of the command.",
    )
    @common
    @click.pass_context
    def run(
        context: click.Context,
        *,
        words: tuple[str, ...],
        holder: str | None,
        timeout: float | None,
        ttl: float | None,
        kill_after: float,
        url: str | None,
        as_json: bool,
    ) -> int:
        """Wait for KEY, run COMMAND while holding it, release it when COMMAND ends.

        Several keys (txlock run K1 K2 -- COMMAND; the '--' is then required) are taken all
        or nothing, in one canonical order, within one --timeout. Exits with COMMAND's exit
        code. COMMAND gets TXLOCK_HOLDER, TXLOCK_KEYS and TXLOCK_TOKENS (JSON: the keys, and
        each key's fencing token) in its environment, and TXLOCK_KEY and TXLOCK_TOKEN for a
        single key; signals sent to txlock are forwarded to it. Nothing but COMMAND's output
        goes to stdout.
        """
        output, url = output_and_url(context, url, as_json)
        after = context.meta.get(_AFTER_DASHES)
        split = 1 if after is None else len(words) - after  # without '--': one KEY, then COMMAND
        return cmd_run(
            output, url=url, keys=words[:split], command=words[split:], holder=holder, timeout=timeout, ttl=ttl,
            kill_after=kill_after,
        )

    @cli.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @click.option(
        "--ttl", type=Seconds(positive=True, finite=True, minimum=MIN_TTL, why=_MIN_TTL_WHY), required=True,
        metavar="SECONDS",
        help="How long the hold lasts (at least 1s) unless released (required: the hold outlives this command).",
    )
    @click.option("--holder", metavar="NAME", default=None, help="Holder name (default: host:pid:random).")
    @timeout_option
    @common
    @click.pass_context
    def acquire(
        context: click.Context, *, key: str, ttl: float, holder: str | None, timeout: float | None, url: str | None,
        as_json: bool,
    ) -> int:
        """Take KEY for --ttl seconds (a detached hold); print the holder and fencing token."""
        output, url = output_and_url(context, url, as_json)
        return cmd_acquire(output, url=url, key=key, holder=holder, timeout=timeout, ttl=ttl)

    @cli.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @click.option("--holder", metavar="NAME", required=True, help="The holder that took the lock.")
    @common
    @click.pass_context
    def release(context: click.Context, key: str, holder: str, url: str | None, as_json: bool) -> int:
        """Release KEY held by --holder (a no-op when KEY is not held)."""
        output, url = output_and_url(context, url, as_json)
        return cmd_release(output, url, key, holder)

    @cli.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @timeout_option
    @common
    @click.pass_context
    def wait(context: click.Context, key: str, timeout: float | None, url: str | None, as_json: bool) -> int:
        """Wait until KEY is free, without taking it (exit 0 when free, 75 on timeout)."""
        output, url = output_and_url(context, url, as_json)
        return cmd_wait(output, url, key, timeout)

    @cli.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @common
    @click.pass_context
    def status(context: click.Context, key: str, url: str | None, as_json: bool) -> int:
        """Show who holds KEY, with which token, for how long, until when."""
        output, url = output_and_url(context, url, as_json)
        return cmd_status(output, url, key)

    @cli.command(name="ls", context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--prefix", metavar="PREFIX", default=None, help="Only keys starting with PREFIX.")
    @common
    @click.pass_context
    def list_held(context: click.Context, prefix: str | None, url: str | None, as_json: bool) -> int:
        """List the locks held now: key, holder, token, held for, expires in."""
        output, url = output_and_url(context, url, as_json)
        return cmd_ls(output, url, prefix)

    @cli.command(name="force-release", context_settings={"help_option_names": ["-h", "--help"]})
    @click.argument("key")
    @click.option("--yes", "-y", is_flag=True, default=False, help="Do not ask for confirmation.")
    @common
    @click.pass_context
    def force_release(context: click.Context, key: str, yes: bool, url: str | None, as_json: bool) -> int:
        """Free KEY whoever holds it (asks first unless --yes; the holder learns at its next renewal)."""
        output, url = output_and_url(context, url, as_json)
        return cmd_force_release(output, url, key, yes)

    # `txlock top`: its module (and rich, inside it) is imported only when `top` runs.
    @cli.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--prefix", metavar="PREFIX", default=None, help="Only keys starting with PREFIX.")
    @click.option(
        "--interval", type=Seconds(positive=True, finite=True, minimum=0.1, why="each refresh lists the store"),
        default=1.0, show_default=True, metavar="SECONDS", help="Seconds between two refreshes.",
    )
    @click.option("--once", is_flag=True, default=False, help="Print one snapshot as a plain table and exit.")
    @common
    @click.pass_context
    def top(
        context: click.Context, prefix: str | None, interval: float, once: bool, url: str | None, as_json: bool
    ) -> int:
        """A live view of the held locks, longest held first; q or Ctrl-C quits.

        Holder, mode, token, held for, expires in and waiters per key; a header with the
        store, the key count, acquisitions/s (a floor: see docs/operations.md) and waiters.
        A plain table when stdout is not a terminal or with --once; one JSON snapshot with
        --json. Never changes the store.
        """
        from txlock.cli._top import cmd_top

        output, url = output_and_url(context, url, as_json)
        return cmd_top(output, url=url, prefix=prefix, interval=interval, once=once)

    # `txlock doctor [URL]`: its options and output live in cli/_doctor_command.py.
    from txlock.cli._doctor_command import doctor_command

    cli.add_command(doctor_command(common, output_and_url))

    return cli


#: Where ``run`` notes how many of its words came after ``--`` (the command).
_AFTER_DASHES = "txlock.run.after_dashes"


def _words_after_dashes(command: click.Command, args: Sequence[str]) -> int | None:
    """How many of ``command``'s ``args`` come after the ``--`` that ends its options, or
    ``None`` without one (an option's value is never taken for it)."""
    import click

    takes_value = {
        name for param in command.params
        if isinstance(param, click.Option) and not param.is_flag for name in param.opts
    }
    words = iter(enumerate(args))
    for index, word in words:
        if word == "--":
            return len(args) - index - 1
        if word in takes_value:
            next(words, None)
    return None


def _run_without_key(cli: click.Group, options: Sequence[str]) -> bool:
    """Whether ``options`` (the arguments before ``--``) are a ``run`` with no KEY.

    click would take the command's first word as the key (``txlock run -- echo hi`` would
    lock ``echo`` and run ``hi``).
    """
    import click

    run = cli.commands["run"]
    takes_value = {
        name for param in [*cli.params, *run.params]
        if isinstance(param, click.Option) and not param.is_flag for name in param.opts
    }
    words = iter(options)
    seen_run = False
    for word in words:
        if word in takes_value:
            next(words, None)
        elif word.startswith("-"):
            continue
        elif not seen_run:
            if word != "run":
                return False
            seen_run = True
        else:
            return False  # the key
    return seen_run


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``txlock`` console script; exits with one of the documented codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        import click  # lazy: click is optional
    except ImportError:
        write(sys.stderr, _MISSING_CLICK + "\n")
        sys.exit(USAGE)
    # Errors are reported in JSON when --json appears before `--` (click has not parsed
    # anything yet when an early error is reported).
    options = args[: args.index("--")] if "--" in args else args
    output = Output("--json" in options)
    logging.getLogger("txlock").addHandler(LogHandler(output))
    cli = _command_group()
    if "--" in args and _run_without_key(cli, options):
        output.error(CliError(USAGE, "usage", "txlock run needs a KEY before '--': txlock run KEY [OPTIONS] -- COMMAND "
                           "[ARGS]... (see 'txlock run --help')"))
        sys.exit(USAGE)
    try:
        code = cli.main(args, prog_name="txlock", standalone_mode=False)
    except CliError as error:
        output.error(error)
        code = error.code
    except click.UsageError as exception:
        if type(exception).__name__ == "NoArgsIsHelpError":  # bare `txlock` (click >= 8.2)
            write(sys.stderr, exception.format_message() + "\n")
            sys.exit(USAGE)
        where = exception.ctx.command_path if exception.ctx is not None else "txlock"
        message = exception.format_message().rstrip(".")
        if exception.ctx is not None and exception.ctx.info_name == "run" and "No such option" in message:
            message += " (put '--' before the command: txlock run KEY [OPTIONS] -- COMMAND [ARGS]...)"
        output.error(CliError(USAGE, "usage", f"{message} (see '{where} --help')"))
        code = USAGE
    except click.Abort as exception:
        # click turns Ctrl-C into Abort (after a newline on stderr); an EOF at a prompt is
        # a refusal, Ctrl-C is the shell's 130 as documented.
        if isinstance(exception.__cause__ or exception.__context__, KeyboardInterrupt):
            code = 128 + signal.SIGINT
        else:
            write(sys.stderr, "\n")
            code = FAILED
    except click.ClickException as exception:
        output.error(CliError(exception.exit_code, "usage", exception.format_message()))
        code = exception.exit_code
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    sys.exit(code if isinstance(code, int) else OK)
