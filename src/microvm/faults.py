"""Fault injection for the fault tests: SIGKILL this process at its Nth change to the file system.

One audit hook (``sys.addaudithook``) sees every file operation, so no product
code needs a hook of its own. It is installed only when ``MICROVM_FAULT_AT``
or ``MICROVM_FAULT_LOG`` is set, which only the tests do:

- ``MICROVM_FAULT_AT=N``: kill the process just before its Nth change;
- ``MICROVM_FAULT_LOG=PATH``: append each change (``event argument``) to PATH, to count and find the points.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

# Audit events that change the file system (or start a program that may); reads are not counted.
CHANGES = frozenset(
    {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.chmod", "os.truncate"}
    | {"shutil.copyfile", "shutil.rmtree", "shutil.move", "subprocess.Popen"}
)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _changes(event: str, args: tuple[Any, ...]) -> bool:
    if args and "__pycache__" in str(args[0]):
        return False  # Python's own byte-code cache: not ours, and it differs between runs
    if event in CHANGES:
        return True
    if event != "open" or len(args) < 3:
        return False
    mode, flags = args[1], args[2]
    return (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and bool(flags & WRITE_FLAGS)
    )


def install() -> None:
    """Install the hook when the environment asks for it (a no-op otherwise)."""
    at = int(os.environ.get("MICROVM_FAULT_AT") or 0)
    log_path = os.environ.get("MICROVM_FAULT_LOG")
    if not at and not log_path:
        return
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log_path else None
    seen = 0

    def hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal seen
        if not _changes(event, args):
            return
        seen += 1
        if seen == at:
            os.kill(os.getpid(), signal.SIGKILL)
        if log is not None:
            os.write(log, f"{event} {args[0]!r}\n".encode(errors="replace"))

    sys.addaudithook(hook)
