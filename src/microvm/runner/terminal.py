"""The terminal side of a VM's serial console: raw keys in, the console's output out.

Shared by the foreground run (:mod:`microvm.runner.foreground`) and attaching to
a VM that systemd runs (:mod:`microvm.host.console`).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from typing import BinaryIO


@contextlib.contextmanager
def terminal_passthrough() -> Iterator[None]:
    """Keys go to the guest one by one, unechoed; Ctrl-C stays a signal for us."""
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):  # not if the terminal hung up
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def relay(
    alive: Callable[[], bool],
    sock: socket.socket | None,
    log: BinaryIO | None,
    detach: bytes = b"",
    connect: Callable[[], socket.socket | None] | None = None,
) -> None:
    """Copy the console log to stdout and stdin to the console socket while ``alive()``.

    What the socket sends is the same as the log and is discarded, but it
    must be read: qemu stops logging what it cannot write to a connected client.
    With ``connect``, the socket is opened only when there is something to
    type: a connected client costs qemu work for every byte the guest prints
    (a boot under TCG took about 0.2 s longer), and the log has it all anyway.
    With a ``detach`` key, typing it or the socket closing (the VM stopped) ends the relay.
    """
    out = sys.stdout.buffer
    stdin: int | None = sys.stdin.fileno()
    try:
        while True:
            finished = not alive() or (detach and sock is None)
            if log is not None and (data := log.read()):
                out.write(data)
                out.flush()
            elif finished:
                break
            watched = [fd for fd in (stdin, sock.fileno() if sock else None) if fd is not None]
            ready = select.select(watched, [], [], 0.02)[0] if watched else time.sleep(0.02) or []
            if sock is not None and sock.fileno() in ready and not sock.recv(65536):
                sock.close()
                sock = None
            if stdin is not None and stdin in ready:
                data = os.read(stdin, 4096)
                detached = bool(detach) and detach in data
                if detached:
                    data = data[: data.index(detach)]  # what was typed before the detach key still goes in
                if detached and not data:
                    break
                if not data:
                    stdin = None  # EOF on our stdin: stop forwarding
                else:
                    if sock is None and connect is not None:
                        sock, connect = connect(), None
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.sendall(data)
                if detached:
                    break
    finally:
        if sock is not None:
            sock.close()
