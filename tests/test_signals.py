"""Signals and child processes: nothing microvm starts outlives it, and a killed `microvm run` stops its guest;
which directories the unprivileged hypervisor can reach.

Real processes throughout: `microvm build` with a long-running child, `microvm run`
of installed VMs booting under TCG, signals sent as a user, a shell or a hangup would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BOOT_TIMEOUT, LONG_RUNNING_VM, microvm, write_vm

from microvm.host.statedir import VMState
from microvm.runner.privileges import _unreachable


def children(pid: int) -> list[int]:
    """The live (not zombie) children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and int(stat[1]) == pid and stat[0] != "Z":
            found.append(int(entry.name))
    return found


def _stat(pid: int) -> list[str] | None:
    """(state, ppid, ...) of ``pid`` from /proc/PID/stat, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def program(pid: int) -> str:
    """The file name of the program ``pid`` runs (qemu names its process microvm@NAME)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    except (FileNotFoundError, ProcessLookupError):
        return ""


def alive(pid: int) -> bool:
    """Running, not a zombie (PID 1 here reaps orphans late: a dead one can stay a zombie for a while)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The processes of ``pids`` still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def wait_for_child(parent: subprocess.Popen, name: str, timeout: float = BOOT_TIMEOUT) -> int:
    """The pid of ``parent``'s child whose program starts with ``name``, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert parent.poll() is None, f"{parent.args} exited with {parent.returncode}"
        if found := [p for p in children(parent.pid) if program(p).startswith(name)]:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {name} started by {parent.args}")


def test_a_killed_build_takes_its_child_programs_with_it(tmp_path: Path) -> None:
    """SIGKILL to `microvm build` while it runs mkfs.erofs: the tool does not run on.

    The mkfs.erofs found first on PATH here sleeps, so the kill surely lands while it runs.
    """
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "mkfs.erofs").write_text("#!/bin/sh\nexec sleep 300\n")
    (tools / "mkfs.erofs").chmod(0o755)
    name = f"k{uuid.uuid4().hex[:8]}"  # a new system: its root image is surely built
    file = write_vm(tmp_path, f'[guest]\nhostName = "{name}"\n[microvm]\nstoreDiskType = "erofs"\n')
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    build = subprocess.Popen(
        [sys.executable, "-m", "microvm", "build", str(file)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tool = wait_for_child(build, "sleep", timeout=120)
        build.kill()
        build.wait()
        assert wait_gone([tool], timeout=5) == [], "mkfs.erofs runs on after its build was killed"
    finally:
        build.kill()


def _run_installed(tmp_path: Path, name: str, extra: str = "") -> tuple[subprocess.Popen, VMState, Path]:
    """Install VM ``name`` and `microvm run` it in the background until its guest is up; (run, state, output)."""
    write_vm(tmp_path / "src", LONG_RUNNING_VM.format(name=name) + extra, f"{name}.toml")
    created = microvm("create", name, "-f", str(tmp_path / "src"))
    assert created.returncode == 0, created.stderr
    state = VMState.of(name, Path(os.environ["MICROVM_STATE_DIR"]))
    output = tmp_path / "run.out"
    with output.open("w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "microvm", "run", name], stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    log = state.console_files()[1]
    deadline = time.monotonic() + BOOT_TIMEOUT
    while f"ready: {name}" not in (log.read_text(errors="replace") if log.exists() else ""):
        assert run.poll() is None and time.monotonic() < deadline, output.read_text()
        time.sleep(0.1)
    return run, state, output


@pytest.mark.boot
@pytest.mark.xdist_group("boot")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminating_signal_to_run_shuts_the_guest_down(tmp_path: Path, sig: signal.Signals) -> None:
    name = f"sig{sig.name[3:].lower()}"
    run, state, output = _run_installed(tmp_path, name)
    try:
        hypervisor = [p for p in children(run.pid) if program(p).startswith("qemu")]
        assert hypervisor, "no qemu child"
        assert state.booted == state.current
        run.send_signal(sig)
        assert run.wait(timeout=120) == 0, output.read_text()
    finally:
        run.kill()
    console = state.console_files()[1].read_text(errors="replace")
    assert f"microvm: {name} is shutting down" in console and f"microvm: {name} stopped cleanly" in console
    assert "shutting down gracefully" in output.read_text()
    assert wait_gone(hypervisor, timeout=5) == []
    assert state.booted is None  # the foreground run ended: nothing is booted any more


@pytest.mark.boot
@pytest.mark.xdist_group("boot")
def test_a_killed_run_leaves_no_hypervisor_or_virtiofsd(tmp_path: Path) -> None:
    share = '[[microvm.shares]]\ntag = "data"\nsource = "data"\nmountPoint = "/data"\nproto = "virtiofs"\n'
    run, _, output = _run_installed(tmp_path, "sigkill", share)
    try:
        started = {p: program(p) for p in children(run.pid)}
        assert any(c.startswith("qemu") for c in started.values()), started
        assert any("virtiofsd" in c for c in started.values()), started
        run.kill()
        run.wait()
    finally:
        run.kill()
    assert wait_gone(list(started), timeout=5) == [], output.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_a_program_started_as_another_user_still_dies_with_us() -> None:
    """A change of uid clears the parent death signal: proc.spawn sets it after the drop."""
    probe = "import sys, time; from microvm import proc; print(proc.spawn(['sleep', '300'], user=(65534, 65534)).pid, flush=True); time.sleep(300)"
    parent = subprocess.Popen([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        status = Path(f"/proc/{child}/status").read_text()
        assert "\nUid:\t65534\t65534\t65534\t65534\n" in status
        parent.kill()
        parent.wait()
        assert wait_gone([child], timeout=5) == []
    finally:
        parent.kill()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory under /tmp any user can pass through (pytest's own are 0700)."""
    base = Path(tempfile.mkdtemp())
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def test_a_directory_the_hypervisor_user_cannot_pass_is_found(open_dir: Path) -> None:
    """What `microvm run` as root checks before it drops to the microvm user (e.g. a store under /root, 0700)."""
    user, group = 65534, 65534
    home = open_dir / "home"
    store = home / "store"
    store.mkdir(parents=True, mode=0o755)
    home.chmod(0o755)
    assert _unreachable(store, user, group) is None
    home.chmod(0o700)
    assert _unreachable(store, user, group) == home
    home.chmod(0o710)
    os.chown(home, 0, group)  # its group may pass, others not
    assert _unreachable(store, user, group) is None
    assert _unreachable(store, user, group + 1) == home
    os.chown(home, user, 0)  # the owner's bits count for the owner, even when others' would let it pass
    home.chmod(0o071)
    assert _unreachable(store, user, group) == home
