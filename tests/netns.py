"""Network namespaces for tests: every interface, address, rule and server a test makes lives in one.

The machine's own namespace is never touched; a namespace is removed with
everything in it (processes are killed first) when the test ends.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

_counter = itertools.count()


class NetNS:
    """One named namespace; ``run``/``popen`` execute inside it via ``ip netns exec``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(cmd), check=check, capture_output=True, text=True, timeout=timeout, **kwargs)

    def popen(self, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(cmd), **kwargs)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False).stdout
        return [int(pid) for pid in out.split()]

    def _kill_all(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)

    def delete(self) -> None:
        self._kill_all()
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)


@contextmanager
def netns(prefix: str = "mvt") -> Iterator[NetNS]:
    """A fresh namespace with loopback up, removed afterwards."""
    ns = NetNS(f"{prefix}-{os.getpid()}-{next(_counter)}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
    try:
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        ns.delete()
