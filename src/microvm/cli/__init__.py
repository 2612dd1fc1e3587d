"""The ``microvm`` command: a thin layer over the library, one module per command group.

Nothing heavy is imported here: ``microvm run`` of an unchanged, built VM takes
a fast path (:func:`fast_run`) that never loads typer, rich or pydantic.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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


def _run_arguments(argv: list[str]) -> tuple[Path, str | None, Path | None] | None:
    """(file, --hypervisor, --state-dir) of a plain ``run`` command line, else None."""
    if not argv or argv[0] != "run":
        return None
    file, options = None, {"--hypervisor": None, "--state-dir": None}
    rest = argv[1:]
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name in options and options[name] is None:
            if not eq:
                if not rest:
                    return None
                value = rest.pop(0)
            options[name] = value
        elif file is None and not arg.startswith("-"):
            file = arg
        else:
            return None  # --help, a typo, anything else: the full command line parser answers
    if file is None:
        return None
    state_dir = options["--state-dir"]
    return Path(file), options["--hypervisor"], Path(state_dir) if state_dir else None


def fast_run(argv: list[str]) -> int | None:
    """``microvm run FILE`` of a built VM whose inputs did not change: run it, return its exit code.

    None when the command is anything else or the VM must be evaluated (and
    maybe built) again; see :mod:`microvm.build.runstamp`.
    """
    if os.environ.get("MICROVM_NO_FAST_RUN") or (parsed := _run_arguments(argv)) is None:
        return None
    from ..build import runstamp

    file, hypervisor, state_dir = parsed
    if (found := runstamp.lookup(file, hypervisor)) is None:
        return None
    name, plan, notes = found
    from ..host.console import run_foreground
    from ..host.statedir import vm_dir

    for note in notes:
        print(note, file=sys.stderr)
    return run_foreground(plan, vm_dir(name, state_dir))


def main() -> None:
    if os.environ.get("MICROVM_DEBUG"):
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    argv = translate_legacy(sys.argv[1:])
    from ..errors import MicrovmError

    try:
        if (code := fast_run(argv)) is not None:
            sys.exit(code)
        from .app import app

        code = app(args=argv, prog_name="microvm", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except MicrovmError as exc:
        from .app import err

        err.print(f"[red]error:[/red] {exc}", markup=True, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
