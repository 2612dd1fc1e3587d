"""A stand-in for systemd's notify socket: what a Type=notify service would tell the service manager."""

from __future__ import annotations

import array
import os
import socket
import struct
import threading
import time
from pathlib import Path


class FakeSystemd:
    """Receives sd_notify messages on ``path`` as (text, sender pid, descriptors received)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.fspath(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[str, int, int]] = []
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        space = socket.CMSG_SPACE(struct.calcsize("3i")) + socket.CMSG_SPACE(16 * array.array("i").itemsize)
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, space)
            except OSError:
                return
            pid, fds = 0, []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = list(array.array("i", payload[: len(payload) - len(payload) % 4]))
            for fd in fds:
                os.close(fd)  # what lets a BARRIER=1 sender go on
            self.messages.append((data.decode(), pid, len(fds)))

    def texts(self) -> list[str]:
        return [text for text, _, _ in self.messages]

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.texts():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.sock.close()
