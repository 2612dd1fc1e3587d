"""The ``microvm`` command: a thin layer over the library, one module per command group."""

from __future__ import annotations

import logging
import os
import sys

import typer

from ..errors import MicrovmError
from . import build_cmds, config_cmds, net_cmds  # noqa: F401  (they register their commands)
from .app import app, err

# microvm.nix's short flags, mapped onto our subcommands so old habits work:
# flag -> (subcommand, how many values it takes: 1 or "rest")
LEGACY_FLAGS: dict[str, tuple[str, int | str]] = {
    "-r": ("run", 1),
}


def translate_legacy(argv: list[str]) -> list[str]:
    """``microvm -r NAME`` -> ``microvm run NAME`` (and the other original flags)."""
    if not argv or argv[0] not in LEGACY_FLAGS:
        return argv
    command, _ = LEGACY_FLAGS[argv[0]]
    return [command, *argv[1:]]


def main() -> None:
    if os.environ.get("MICROVM_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        code = app(args=translate_legacy(sys.argv[1:]), prog_name="microvm", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except MicrovmError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:
        # Usage errors (click's ClickException, which newer typer vendors) show themselves and carry an exit code.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise
