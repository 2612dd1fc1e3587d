"""Load on `microvm web`: 20 viewers of one live console and 100 page loads a second, for a bounded time.

A real guest (an installed VM run with `microvm run NAME`, no systemd needed)
prints a numbered burst twice: once watched by one viewer, once under the load.
The guest's pace is timed from its console log, which the hypervisor writes
whoever watches; every viewer must get every line in order; the server's memory
must level off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import BOOT_TIMEOUT, microvm, write_vm
from test_host_systemd import wait_for
from test_web import address, serving

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]
websockets = pytest.importorskip("websockets")

VIEWERS, PAGE_LOADS, LOAD_SECONDS, LINES = 20, 100, 20, 3000


def rss_kib(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def burst(n: int) -> tuple[str, str]:
    """The command that prints LINES numbered lines then a mark; the mark as printed (the echo differs)."""
    return f"seq 1 {LINES}; echo burst-$((0+{n}))-done\n", f"burst-{n}-done"


def expected() -> str:
    return "\r\n".join(str(i) for i in range(1, LINES + 1)) + "\r\n"


class PageLoads(threading.Thread):
    """PAGE_LOADS a second, each as the page's: the HTML, then the VM list (new connections, as browsers open)."""

    def __init__(self, base: str, token: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.base, self.token, self.stop = base, token, stop
        self.done, self.slowest = 0, 0.0
        self.failed: list[str] = []

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        start = time.monotonic()
        while not self.stop.is_set():
            due = start + self.done / PAGE_LOADS
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            began = time.monotonic()
            for path in ("/", "/api/vms"):
                try:
                    with urllib.request.urlopen(urllib.request.Request(self.base + path, headers=headers), timeout=10):
                        pass
                except OSError as exc:
                    self.failed.append(f"{path}: {exc!r}")
            self.slowest = max(self.slowest, time.monotonic() - began)
            self.done += 1


async def _collect(ws: websockets.ClientConnection, into: bytearray) -> None:
    async for message in ws:
        into.extend(message)


async def viewer(url: str, token: str, received: bytearray, ready: asyncio.Event) -> None:
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        ready.set()
        await _collect(ws, received)


async def until_in_log(log: Path, mark: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while mark not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"timed out waiting for {mark!r} on the console"
        await asyncio.sleep(0.05)


async def timed_burst(typist: websockets.ClientConnection, log: Path, n: int) -> float:
    """Seconds from typing burst ``n`` until its mark is in the console log."""
    command, mark = burst(n)
    began = time.monotonic()
    await typist.send(command)
    await until_in_log(log, mark)
    return time.monotonic() - began


def test_twenty_viewers_and_a_hundred_page_loads_a_second(tmp_path: Path) -> None:
    src = write_vm(
        tmp_path / "src",
        '[guest]\nhostName = "load"\nshell = true\ncommands = [\'echo "marker: load booted"\']\n[microvm]\nmem = 256\n',
        "load.toml",
    )
    created = microvm("create", "load", "-f", str(src.parent))
    assert created.returncode == 0, created.stderr
    state = Path(os.environ["MICROVM_STATE_DIR"]) / "load"
    log = state / "load-console.log"
    vm = subprocess.Popen(
        [sys.executable, "-m", "microvm", "run", "load"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("the guest's shell", lambda: log.exists() and "marker: load booted" in log.read_text(), BOOT_TIMEOUT)
        with serving("--listen", "127.0.0.1:0") as (server, line):
            base, token = address(line)
            url = base.replace("http", "ws", 1) + "/api/vms/load/console"
            asyncio.run(_under_load(base, url, token, log, server.pid))
    finally:
        vm.terminate()
        vm.wait(timeout=120)


async def _under_load(base: str, url: str, token: str, log: Path, pid: int) -> None:
    typist_seen = bytearray()
    typist = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"})
    drain = asyncio.create_task(_collect(typist, typist_seen))
    for _ in range(60):  # the shell may still be starting: ask until it answers
        await typist.send("echo ready-$((1+1))\n")
        with contextlib.suppress(AssertionError):
            await until_in_log(log, "ready-2", 2)
            break
    alone = await timed_burst(typist, log, 1)
    received = [bytearray() for _ in range(VIEWERS)]
    ready = [asyncio.Event() for _ in range(VIEWERS)]
    watching = [asyncio.create_task(viewer(url, token, received[i], ready[i])) for i in range(VIEWERS)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 30)
    stop = threading.Event()
    loads = PageLoads(base, token, stop)
    began = time.monotonic()
    loads.start()
    memory = []
    await asyncio.sleep(2)
    loaded = await timed_burst(typist, log, 2)
    while time.monotonic() - began < LOAD_SECONDS:
        memory.append(rss_kib(pid))
        await asyncio.sleep(1)
    stop.set()
    await asyncio.to_thread(loads.join)
    elapsed = time.monotonic() - began
    await asyncio.sleep(1)  # the viewers take the rest
    await typist.close()
    for task in [*watching, drain]:
        task.cancel()
    await asyncio.gather(*watching, drain, return_exceptions=True)
    rate = loads.done / elapsed
    half = len(memory) // 2
    print(
        f"\nburst of {LINES} lines: {alone:.2f} s watched by one, {loaded:.2f} s under {VIEWERS} viewers and "
        f"{rate:.0f} page loads/s (slowest {loads.slowest * 1000:.0f} ms); server RSS "
        f"{memory[0] / 1024:.1f} -> {max(memory[:half]) / 1024:.1f} -> {max(memory[half:]) / 1024:.1f} MiB"
    )
    assert loads.failed == [], loads.failed
    assert rate >= 0.9 * PAGE_LOADS, f"only {rate:.0f} page loads a second"
    # the guest's output is not slowed (a loaded 2-core machine: allow noise, not a slowdown)
    assert loaded < alone * 1.5 + 1.0, (alone, loaded)
    # nothing lost: every viewer saw the whole burst, in order, and its mark
    for data in received:
        text = data.decode(errors="replace")
        assert expected() in text and "burst-2-done" in text
    # memory levels off: the second half of the run does not grow past the first
    assert max(memory[half:]) <= max(memory[:half]) + 8 * 1024, memory
