"""Finding and waiting for the hypervisor process behind a control socket."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path


def peer_pid(path: Path) -> int | None:
    """PID of the process listening on the unix socket ``path`` (SO_PEERCRED), or None."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(os.fspath(path))
        except OSError:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    return pid or None


def connect_when_there(path: Path, waiting: Callable[[], bool], interval: float = 0.01) -> socket.socket | None:
    """Connect to the unix socket ``path`` once a starting hypervisor serves it; None once ``waiting()`` is false."""
    while waiting():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
            return sock
        except OSError:
            sock.close()
            time.sleep(interval)
    return None


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; True if it did."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return not alive(pid)
            if select.select([fd], [], [], min(remaining, 0.2))[0] or not alive(pid):
                return True
    finally:
        os.close(fd)


def stop_hard(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_exit(pid, wait):
            return
