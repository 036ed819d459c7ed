"""The ``acrn`` command.

Each subcommand lives in its own module under ``acrn.cli`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a handler ``(args) -> int``.  Command modules import
only what their parser needs at module level; heavy modules (the emulator, unicorn, capstone) are
imported inside the handlers so that ``acrn --help`` starts fast.

User errors print one line, ``acrn: error: ...``, and exit 2 (usage) or 1 (failure); a traceback is
shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from acrn import __version__

EXAMPLES = """\
examples:
  acrn info                              what this host offers (HSM, accelerators, platform)
  acrn demo                              three built-in guests through the HSM interface
  acrn run --guest hello_long            one built-in guest (acrn run --list-guests)
  acrn run -k bzImage -B console=ttyS0   boot Linux as acrn-dm does (Ctrl-A h: console help)
  acrn -v run --guest hello_real         the same, with the HSM ioctl trace
  acrn regs preset --list                register presets; acrn regs validate FILE checks one

acrn COMMAND --help shows each command's options and examples; README.md has a Troubleshooting table.
"""

#: Subcommand modules, in help order.
COMMANDS = ("info", "regs", "run", "demo", "hv", "exec", "ps")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acrn",
        description="ACRN HSM userspace tools, with an emulated ACRN hypervisor when /dev/acrn_hsm is absent.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pyacrn {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="loader decisions, exit details and every HSM ioctl (name, decoded argument, result, "
        "the I/O request a NOTIFY completes); twice for debug logs and the ioreq loop's ATTACHes",
    )  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"acrn.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"acrn.cli.{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


def setup_logging(verbosity: int) -> Callable[[], None]:
    """Configure logging for one command; returns what puts the trace loggers' levels back (so
    that ``main()`` called in-process, as tests do, leaves no tracing behind)."""
    names = ("acrn.trace", "acrn.trace.attach")
    saved = {name: logging.getLogger(name).level for name in names}

    def restore() -> None:
        for name, lvl in saved.items():
            logging.getLogger(name).setLevel(lvl)

    level = logging.WARNING
    if verbosity == 1:
        level = logging.INFO
    elif verbosity >= 2:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(name)s: %(message)s", stream=sys.stderr)
    if verbosity >= 1:
        logging.getLogger("acrn.trace").setLevel(logging.DEBUG)
        # The ioreq loop's ATTACH returns once per request: shown from -vv on.
        logging.getLogger("acrn.trace.attach").setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    return restore


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # `acrn -v run` and `acrn run -v` mean the same: one verbosity, counted on either side.
    args.verbose += getattr(args, "sub_verbose", 0) or 0
    restore_logging = setup_logging(args.verbose)
    try:
        rc = args.func(args)
        return int(rc or 0)
    except BrokenPipeError:
        # The reader went away (`acrn info | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CliError as e:
        if args.debug:
            raise
        print(f"acrn: error: {e}", file=sys.stderr)
        return e.status
    except (OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"acrn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        # No user-facing path ends in a traceback; --debug shows it.
        if args.debug:
            raise
        print(
            f"acrn: internal error: {type(e).__name__}: {e} "
            f"(acrn --debug {args.command} ... shows the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        restore_logging()
