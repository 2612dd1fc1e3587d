"""The frequent commands without typer: ``list``, ``status NAME``, ``start|stop|restart NAME``, ``check FILE``,
``--help``.

An operator types these dozens of times a day and scripts call them in loops;
typer, click and rich alone take several times Python's own start-up. A
command line of exactly one of these shapes is run here; anything else (an
option we do not know, ``--help`` of a subcommand, a typo) goes to the full
parser, which gives the same result or the usual usage error.

``--help`` prints the text typer produced the last time, kept per terminal
width and per state of the command modules' files (a changed command changes
the key, so the text cannot go stale).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from ..store import default_store_dir

HELP_DIR = ".cache/help"
LIFECYCLE = ("start", "stop", "restart")

# The commands import what they use when they run (each of these processes runs one of them, and
# every module less is start-up time saved): `--help` needs neither the state directory nor systemd.


def _list(as_json: bool) -> None:
    # late on purpose: a command loads only what it runs (start-up speed)
    from .show import list_command

    list_command(as_json)


def _status(name: str, as_json: bool) -> None:
    # late on purpose: a command loads only what it runs (start-up speed)
    from .show import status_command

    status_command(name, as_json)


def _control(action: str, name: str) -> None:
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..host.lifecycle import control

    control(action, name)


def _check(file: str, host: bool, as_json: bool) -> None:
    # late on purpose: a command loads only what it runs (start-up speed)
    from .checkfile import check_command

    if code := check_command(Path(file), host, as_json):  # Path: the file named as typer's argument names it
        sys.exit(code)


def _flag(argv: list[str], flag: str) -> tuple[list[str], bool]:
    """``argv`` without ``flag``, and whether it was there."""
    return [a for a in argv if a != flag], flag in argv


def command(argv: list[str]) -> Callable[[], None] | None:
    """What to run for ``argv`` when it is one of the fast shapes, else None."""
    rest, as_json = _flag(argv, "--json")
    checked, host = _flag(rest, "--host")
    if len(checked) == 2 and checked[0] == "check" and not checked[1].startswith("-"):
        return lambda: _check(checked[1], host, as_json)
    if rest == ["list"]:
        return lambda: _list(as_json)
    if len(rest) == 2 and rest[0] == "status" and not rest[1].startswith("-"):
        return lambda: _status(rest[1], as_json)
    if not as_json and len(argv) == 2 and argv[0] in LIFECYCLE and not argv[1].startswith("-"):
        return lambda: _control(argv[0], argv[1])
    return None


def help_file() -> Path:
    """Where the top-level help is kept for this terminal width and these command modules."""
    here = Path(__file__).parent
    stats = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in here.glob("*.py"))
    width = shutil.get_terminal_size().columns
    key = hashlib.sha256(repr((__version__, width, stats)).encode()).hexdigest()[:24]
    return default_store_dir() / HELP_DIR / f"{key}.txt"


def print_help(full: Callable[[], object]) -> None:
    """The top-level help: the kept text, or what ``full`` (typer) prints, kept for next time."""
    path = help_file()
    with contextlib.suppress(OSError):
        print(path.read_text(), end="")
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        full()
    text = buffer.getvalue()
    print(text, end="")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
