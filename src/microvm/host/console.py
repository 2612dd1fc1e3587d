"""Attaching the terminal to the serial console of a VM that systemd runs."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

from ..errors import MicrovmError
from ..runner.terminal import relay, terminal_passthrough

DETACH_KEY = b"\x1d"  # Ctrl-]


def attach(name: str, sock_path: Path, log_path: Path, backlog: int = 4096) -> None:
    """Attach the terminal to the serial console of a VM running elsewhere (systemd): Ctrl-] detaches.

    Shows the end of the console log first, then what the guest prints, and
    sends keystrokes to it. Ends when the VM stops or on Ctrl-].
    """
    if not sock_path.is_socket():
        raise MicrovmError(
            f"{name!r} has no console socket {sock_path}",
            hint="it is not running, or its hypervisor has no console socket (qemu has one)",
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fspath(sock_path))
    except OSError as exc:
        sock.close()
        raise MicrovmError(f"cannot attach to the console of {name!r}: {exc}", hint="is it running?") from None
    print(f"microvm: console of {name}; Ctrl-] detaches", file=sys.stderr)
    with terminal_passthrough(), log_path.open("rb") if log_path.exists() else contextlib.nullcontext() as log:
        if log is not None:
            log.seek(max(0, log.seek(0, os.SEEK_END) - backlog))
        relay(lambda: True, sock, log, detach=DETACH_KEY)
