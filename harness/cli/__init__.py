"""The ``fwbench`` command line: one module per command group, parsing and printing only
(``common`` holds what they share). Input is validated once, where it is parsed or in the
records it builds (``RunOptions``); the inside trusts it."""

from __future__ import annotations

import sys
import traceback
from typing import Optional

import typer

# the commands, registered in the order --help lists them
from fwbench.harness.cli import info, run, report, check, envs  # noqa: F401, I001
from fwbench.harness.cli.common import app, err
from fwbench.harness.errors import FwbenchError

DEBUG = False


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: bad input is one line on stderr and exit code 2; --debug (anywhere on the
    line) shows tracebacks."""
    global DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        DEBUG = True
        args.remove("--debug")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="fwbench", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort as exc:  # Ctrl-C, or a stop signal (run.signals), before any work
        err.print("aborted")
        code = getattr(exc.__cause__, "exit_code", 130)
    except typer.TyperException as exc:  # typer's usage errors (it vendors click since 0.20)
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "fwbench"
        print(f"fwbench: error: {exc.format_message()} (see {where} --help)", file=sys.stderr)
        code = 2
    except FwbenchError as exc:
        if DEBUG:
            traceback.print_exc()
        print(f"fwbench: error: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:  # a bug in fwbench: still one line unless --debug
        if DEBUG:
            traceback.print_exc()
        print(f"fwbench: internal error: {type(exc).__name__}: {exc} (rerun with --debug for "
              "the traceback)", file=sys.stderr)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
