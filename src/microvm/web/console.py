"""Live serial consoles for many viewers, without disturbing the guest.

What the guest prints comes from its console log (the hypervisor writes it
whoever is connected): one reader per VM follows the file and hands each new
chunk to every viewer, who first gets the end of the log as backlog. The
console socket is connected only once someone types (a connected client costs
the hypervisor work for every byte, see microvm.runner.terminal.relay), read
and discarded while connected, and closed when the last viewer leaves.

A viewer too slow to take what the guest prints is disconnected (its queue is
bounded), never fed a console with a gap: memory stays bounded and nothing
is silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

BACKLOG = 64 * 1024  # bytes of the log a new viewer sees first
CHUNK = 64 * 1024  # most bytes handed out at once
QUEUE = 1024  # chunks a viewer may fall behind before it is disconnected
POLL = 0.02  # seconds between looks at the log


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
        self._writer: asyncio.StreamWriter | None = None
        self._drain: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

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
        for task in (self._follow, self._drain):
            if task is not None:
                task.cancel()
        self._follow = self._drain = None
        await self._disconnect()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def send(self, data: bytes) -> None:
        """Type ``data`` into the console (connecting its socket on first use)."""
        async with self._connecting:
            if self._writer is None:
                try:
                    reader, self._writer = await asyncio.open_unix_connection(os.fspath(self.socket_path))
                except OSError:
                    return  # not running: there is nobody to type to
                self._drain = asyncio.get_running_loop().create_task(self._discard(reader))
        with contextlib.suppress(OSError):
            self._writer.write(data)
            await self._writer.drain()

    async def _discard(self, reader: asyncio.StreamReader) -> None:
        """Read what the socket sends (the log has it): the hypervisor must be able to write to us."""
        while await reader.read(CHUNK):
            pass
        await self._disconnect()  # the VM stopped: the next keystroke connects to its next boot

    async def _disconnect(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

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
