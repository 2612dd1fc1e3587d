"""The ``microvm`` command: a thin layer over the library, one module per command group.

Nothing heavy is imported here: ``microvm build`` and ``microvm run`` of an
unchanged, built VM take a fast path (:func:`fast_build_or_run`), and ``list``, ``status``, ``start``/``stop`` and
``--help`` another (:mod:`.fast`), that never load typer, rich or pydantic.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import faults

# microvm.nix's short flags, mapped onto our subcommands so old habits work
# (`microvm -c NAME -f SOURCE`, `microvm -Ru NAME`, `microvm -r NAME`, `microvm -l`; `microvm -s NAME ...`,
# whose arguments are ssh's, below).
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
    if argv[:1] == ["-s"]:  # the rest is ssh's (its -l is not our -l)
        return ["ssh", *argv[1:]]
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


def _build_arguments(argv: list[str]) -> tuple[Path, str | None, Path | None] | None:
    """(file, --hypervisor, --state-dir) of a plain ``build`` or ``run`` command line, else None."""
    if not argv or argv[0] not in ("build", "run"):
        return None
    file, options = None, {"--hypervisor": None} | ({"--state-dir": None} if argv[0] == "run" else {})
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
    state_dir = options.get("--state-dir")
    return Path(file), options["--hypervisor"], Path(state_dir) if state_dir else None


def fast_build_or_run(argv: list[str]) -> int | None:
    """``microvm build|run FILE`` of a built VM whose inputs did not change: print what the build printed
    (its runner, for build) or run it; return the exit code.

    None when the command is anything else or the VM must be evaluated (and
    maybe built) again; see :mod:`microvm.runner.fastpath`.
    """
    if os.environ.get("MICROVM_NO_FAST_RUN") or (parsed := _build_arguments(argv)) is None:
        return None
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..host.statedir import installed_stamp, vm_dir
    from ..runner import fastpath

    file, hypervisor, state_dir = parsed
    if (found := fastpath.lookup(file, hypervisor, installed_stamp(state_dir))) is None:
        return None
    if argv[0] == "run" and found["plan"]["virtiofs"]:
        return None  # its daemons are started from the evaluated config
    for warning in found["warnings"]:
        print(warning, file=sys.stderr)
    if argv[0] == "build":
        # late on purpose: a command loads only what it runs (start-up speed)
        from ..store import Store

        Store().add_root(f"build-{found['name']}", Path(found["runner"]))  # as the full build does
        print(found["accelerator"], file=sys.stderr)
        print(found["runner"])
        return 0
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..runner.foreground import Foreground, run_foreground

    if found["note"]:
        print(found["note"], file=sys.stderr)
    return run_foreground(Foreground.from_json(found["plan"]), vm_dir(found["name"], state_dir))


def full(argv: list[str]) -> None:
    """The typer application (every command, its options and usage errors)."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from .app import app

    code = app(args=argv, prog_name="microvm", standalone_mode=False)
    if isinstance(code, int) and code:
        sys.exit(code)


def main() -> None:
    faults.install()
    if os.environ.get("MICROVM_DEBUG"):
        # late on purpose: a command loads only what it runs (start-up speed)
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    argv = translate_legacy(sys.argv[1:])
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..errors import MicrovmError, io_error

    try:
        if (code := fast_build_or_run(argv)) is not None:
            sys.exit(code)
        # late on purpose: a command loads only what it runs (start-up speed)
        from . import fast

        if (quick := fast.command(argv)) is not None:
            quick()
            return
        if argv == ["--help"]:
            fast.print_help(lambda: full(argv))
            return
        full(argv)
    except BrokenPipeError:  # `microvm list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(141)
    except (MicrovmError, OSError) as exc:
        # late on purpose: a command loads only what it runs (start-up speed)
        from .show import error

        if isinstance(exc, OSError):  # an I/O failure no step named: one line with the command, not a traceback
            exc = io_error(argv[0] if argv else "microvm", exc)
        error(exc)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        # Usage errors (click's ClickException, which newer typer vendors) show themselves and carry an
        # exit code; an abort (typer.Abort, click's Abort) is an interrupted prompt.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        raise
