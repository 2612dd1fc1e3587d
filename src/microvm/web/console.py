"""Live serial consoles for many viewers, without disturbing the guest.

What the guest prints comes from its console log (the hypervisor writes it
whoever is connected): one reader per VM follows the file and hands each new
chunk to every viewer, who first gets the end of the log as backlog. The
console socket is connected only to type, a moment each time (see :func:`_type`).

A viewer too slow to take what the guest prints is disconnected (its queue is
bounded), never fed a console with a gap: memory stays bounded and nothing
is silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

BACKLOG = 64 * 1024  # bytes of the log a new viewer sees first
CHUNK = 64 * 1024  # most bytes handed out at once
QUEUE = 1024  # chunks a viewer may fall behind before it is disconnected
POLL = 0.02  # seconds between looks at the log


def _type(path: Path, data: bytes) -> None:
    """Type ``data`` over a connection of its own, closed on our side at once.

    The hypervisor takes the keys, sees the end and lets go: connected, it sends
    the client every byte the guest prints, one at a time, and a client a moment
    late fills the socket; qemu then writes bytes twice into the log. A thread
    empties the socket until the hypervisor closes it.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)  # a console with another client (`microvm console`) keeps us in its backlog
    try:
        sock.connect(os.fspath(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        raise
    threading.Thread(target=_empty, args=(sock,), name=f"console {path.name}", daemon=True).start()


def _empty(sock: socket.socket) -> None:
    with sock, contextlib.suppress(OSError):
        while sock.recv(CHUNK):
            pass


@dataclass(eq=False)
class Viewer:
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    dropped: bool = False  # fell behind: its connection is closed

    def put(self, data: bytes | None) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()  # room for the end mark
            self.queue.put_nowait(None)


class ConsoleHub:
    """One VM's console shared by its viewers: the log followed once, the socket connected once."""

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self.socket_path, self.log_path = socket_path, log_path
        self.viewers: set[Viewer] = set()
        self._log: BinaryIO | None = None
        self._offset = 0
        self._follow: asyncio.Task[None] | None = None
        self._typing = asyncio.Lock()

    def join(self) -> tuple[Viewer, bytes]:
        """A new viewer and its backlog; what follows comes through its queue, without a gap or a repeat."""
        if self._follow is None:
            self._open_log(at_end=True)
            self._follow = asyncio.get_running_loop().create_task(self._follow_log())
        backlog = b""
        if self._log is not None:
            start = max(0, self._offset - BACKLOG)
            backlog = os.pread(self._log.fileno(), self._offset - start, start)
        viewer = Viewer()
        self.viewers.add(viewer)
        return viewer, backlog

    async def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if self.viewers:
            return
        if self._follow is not None:
            self._follow.cancel()
        self._follow = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def send(self, data: bytes) -> None:
        """Type ``data`` into the console; one batch after the other, in order."""
        async with self._typing:
            with contextlib.suppress(OSError):  # not running: nobody to type to
                await asyncio.get_running_loop().run_in_executor(None, _type, self.socket_path, data)

    def _open_log(self, at_end: bool) -> None:
        try:
            self._log = self.log_path.open("rb")
        except OSError:
            self._log = None
            return
        self._offset = os.fstat(self._log.fileno()).st_size if at_end else 0

    def _replaced(self) -> bool:
        """The log was emptied (a fresh boot) or replaced by another file."""
        assert self._log is not None
        try:
            on_disk = os.stat(self.log_path)
        except OSError:
            return False
        ours = os.fstat(self._log.fileno())
        return on_disk.st_ino != ours.st_ino or ours.st_size < self._offset

    async def _follow_log(self) -> None:
        while True:
            if self._log is None or self._replaced():
                if self._log is not None:
                    self._log.close()
                self._open_log(at_end=False)
            data = os.pread(self._log.fileno(), CHUNK, self._offset) if self._log is not None else b""
            if data:
                self._offset += len(data)
                for viewer in list(self.viewers):
                    viewer.put(data)
                await asyncio.sleep(0)  # the viewers' connections run between chunks
            else:
                await asyncio.sleep(POLL)
