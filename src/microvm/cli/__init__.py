"""The ``microvm`` command: a thin layer over the library, one module per command group."""

from __future__ import annotations

import logging
import os
import sys

import typer

from ..errors import MicrovmError
from . import build_cmds, config_cmds, host_cmds, net_cmds, vm_cmds  # noqa: F401  (they register their commands)
from .app import app, err

# microvm.nix's short flags, mapped onto our subcommands so old habits work
# (`microvm -c NAME -f SOURCE`, `microvm -Ru NAME`, `microvm -r NAME`, `microvm -l`).
LEGACY_FLAGS: dict[str, str] = {"-c": "create", "-u": "update", "-r": "run", "-l": "list"}
# ... and the original's flags that modify them.
LEGACY_OPTIONS: dict[str, str] = {"-R": "--restart", "-f": "--source"}


def _split_short(arg: str) -> list[str] | None:
    """``-Ru`` -> ``["-R", "-u"]`` when every letter is one of the original's flags."""
    if not arg.startswith("-") or arg.startswith("--") or len(arg) < 2:
        return None
    flags = [f"-{letter}" for letter in arg[1:]]
    return flags if all(f in LEGACY_FLAGS or f in LEGACY_OPTIONS for f in flags) else None


def translate_legacy(argv: list[str]) -> list[str]:
    """``microvm -Ru NAME`` -> ``microvm update NAME --restart`` (and the other original flags)."""
    if not argv or not (first := _split_short(argv[0])) or not any(f in LEGACY_FLAGS for f in first):
        return argv
    command, rest = None, []
    for arg in argv:
        flags = _split_short(arg)
        if flags is None:
            rest.append(arg)
            continue
        for flag in flags:
            if flag in LEGACY_FLAGS:
                command = LEGACY_FLAGS[flag]
            else:
                rest.append(LEGACY_OPTIONS[flag])
    return [command, *rest] if command else argv


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
