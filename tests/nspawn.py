"""Real systemd in a systemd-nspawn container (see docs: ENVIRONMENT.md's recipe).

The container boots a Debian rootfs with ``--private-network`` (it cannot
download), in its own cgroup so several can run at once; commands run inside
with ``nsenter`` into every namespace of its PID 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

# cgroup v1 with systemd's named hierarchy (+ unified), or pure cgroup v2
CGROUP_HIERARCHIES = [Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified")]


def _new_cgroup(name: str) -> list[Path]:
    """A new cgroup ``name`` in every hierarchy systemd uses; returns their cgroup.procs files."""
    roots = [r for r in CGROUP_HIERARCHIES if (r / "cgroup.procs").exists()] or [Path("/sys/fs/cgroup")]
    for root in roots:
        (root / name).mkdir(exist_ok=True)
    return [root / name / "cgroup.procs" for root in roots]


def _remove_cgroup(name: str) -> None:
    for root in [*CGROUP_HIERARCHIES, Path("/sys/fs/cgroup")]:
        with contextlib.suppress(OSError):
            (root / name).rmdir()


class Container:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, cgroup: str) -> None:
        self.process = process
        self.log = log
        self.cgroup = cgroup
        self.pid1: int | None = None

    def find_init(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            for child in _children(self.process.pid):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    self.pid1 = child
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the container did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def command(self, argv: tuple[str, ...], env: dict[str, str] | None) -> list[str]:
        """``argv`` run inside, with a clean environment (ours, e.g. the test's MICROVM_STATE_DIR, must not leak in)."""
        assert self.pid1 is not None
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})}
        return [
            "nsenter",
            "-a",
            "-t",
            str(self.pid1),
            "--",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in environment.items()),
            *argv,
        ]

    def popen(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(argv, env), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run(
        self, *argv: str, env: dict[str, str] | None = None, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(argv, env), capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def power_off(self, timeout: float = 30) -> None:
        """Kill every process of the container at once (cgroup.kill), as a power loss; return once all are gone."""
        kills = [r / self.cgroup / "cgroup.kill" for r in [*CGROUP_HIERARCHIES, Path("/sys/fs/cgroup")]]
        kill = next((k for k in kills if k.exists()), None)
        assert kill is not None, "a power loss needs cgroup v2's cgroup.kill (Linux 5.14 or later)"
        kill.write_text("1")
        self.process.wait(timeout=timeout)
        events = kill.with_name("cgroup.events")
        deadline = time.monotonic() + timeout
        while "populated 1" in events.read_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of {self.cgroup} survived cgroup.kill")
            time.sleep(0.02)

    def wait_running(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)
        raise AssertionError(f"the container's systemd is {state!r} after {timeout} s")


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(FileNotFoundError):  # a process that exits meanwhile has no children
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found + [g for c in found for g in _children(c)]


@contextlib.contextmanager
def container(
    rootfs: Path, binds: list[str], ro_binds: list[str], log: Path, netns: str | None = None
) -> Iterator[Container]:
    """Boot ``rootfs``; on exit shut it down (SIGTERM to nspawn: systemd powers off, stopping its units).

    ``netns``: the network namespace (``ip netns`` name) it joins, instead of a new empty one.
    """
    network = f"--network-namespace-path=/run/netns/{netns}" if netns else "--private-network"
    argv = ["systemd-nspawn", "-b", "-D", str(rootfs), "--register=no", "--keep-unit", network]
    argv += [f"--bind={b}" for b in binds] + [f"--bind-ro={b}" for b in ro_binds]
    name = f"microvm-test-{os.getpid()}-{time.monotonic_ns()}"
    # nspawn starts in the new cgroups: a shell moves itself there, then execs it
    enter = 'for procs in $CGROUP_PROCS; do echo $$ > "$procs"; done; exec "$@"'
    env = {**os.environ, "CGROUP_PROCS": " ".join(map(str, _new_cgroup(name)))}
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["sh", "-c", enter, "sh", *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    box = Container(process, log, name)
    try:
        box.find_init(60)
        yield box
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _remove_cgroup(name)
