"""microvm.readiness and host.useNotifySockets: what the guest says reaches systemd's notify socket.

A fake service manager (a datagram socket that reads each message with its
sender's credentials and closes the descriptors that come with BARRIER=1, as
systemd does) stands in for systemd here; tests/test_host_systemd.py runs the
real one.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BOOT_TIMEOUT, build_file, write_vm
from notify import FakeSystemd

from microvm.runner.ready import accepted


@pytest.fixture
def fake_systemd(tmp_path: Path):
    manager = FakeSystemd(tmp_path / "notify")
    yield manager
    manager.close()


def helper(*args: str, notify: Path | None, **kwargs) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    return subprocess.Popen(
        [sys.executable, "-m", "microvm.helpers", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_the_guest_may_only_say_ready_and_status() -> None:
    assert accepted(b"READY=1\r") == "READY=1"
    assert accepted(b"STATUS=serving") == "STATUS=serving"
    assert accepted(b"STATUS=" + b"x" * 500) == "STATUS=" + "x" * 200
    for refused in (b"MAINPID=1", b"READY=0", b"READY=1 MAINPID=1", b"STATUS=\x1b[2J", b"WATCHDOG=1", b""):
        assert accepted(refused) is None, refused


def test_now_says_ready_then_waits_for_systemd_to_read_it(fake_systemd: FakeSystemd) -> None:
    proc = helper("ready-now", notify=fake_systemd.path)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    # READY=1 from the helper itself (systemd finds the unit by the sender), then the barrier with its descriptor
    assert fake_systemd.messages == [("READY=1", proc.pid, 0), ("BARRIER=1", proc.pid, 1)]


def test_forward_passes_on_ready_and_status_and_nothing_else(tmp_path: Path, fake_systemd: FakeSystemd) -> None:
    port = tmp_path / "web-ready.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # the hypervisor's end of the guest's port
    server.bind(os.fspath(port))
    server.listen(1)
    proc = helper("ready-forward", str(port), "--pid", str(os.getpid()), notify=fake_systemd.path)
    server.settimeout(30)
    conn, _ = server.accept()
    conn.sendall(b"STATUS=starting\nMAINPID=1\nREA")
    conn.sendall(b"DY=1\n")  # a line split across reads
    assert fake_systemd.wait_for("READY=1", 30)
    conn.close()  # the hypervisor exited
    assert proc.wait(timeout=30) == 0
    assert fake_systemd.texts() == ["STATUS=starting", "BARRIER=1", "READY=1", "BARRIER=1"]
    assert "ignored from the guest's readiness port: b'MAINPID=1'" in (proc.stderr.read() if proc.stderr else "")
    server.close()


def test_forward_gives_up_when_the_hypervisor_is_gone_before_its_socket(tmp_path: Path) -> None:
    # the runner's shell (the helper's parent, which becomes the hypervisor) exits at once
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    argv = [sys.executable, "-m", "microvm.helpers", "ready-forward", str(tmp_path / "never.sock")]
    script = f'{shlex.join(argv)} --pid "$$" &'
    # run() returns once every process holding its output pipes is gone, the helper too; a helper
    # still waiting for the socket makes it time out
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def test_without_a_notify_socket_it_says_so() -> None:
    proc = helper("ready-now", notify=None)
    assert proc.wait(timeout=30) == 1
    assert "NOTIFY_SOCKET is not set" in (proc.stderr.read() if proc.stderr else "")


@pytest.mark.parametrize("readiness", [True, False], ids=["guest-says-ready", "ready-at-start"])
def test_booted_guest_reports_ready_through_the_runner(
    tmp_path: Path, shared_store, fake_systemd: FakeSystemd, readiness: bool
) -> None:
    file = write_vm(
        tmp_path,
        f"""
        [guest]
        hostName = "ready"
        shell = false
        commands = ["echo 'ready: commands'", "poweroff"]
        [microvm]
        mem = 256
        readiness = {str(readiness).lower()}
        [guest.services.prepare]
        type = "oneshot"
        command = "echo 'ready: services done'"
        """,
    )
    built = build_file(shared_store, file)
    workdir = tmp_path / "run"
    workdir.mkdir()
    log = workdir / "ready-console.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(fake_systemd.path)}
    vm = subprocess.Popen([built.run], cwd=workdir, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert fake_systemd.wait_for("READY=1", BOOT_TIMEOUT), fake_systemd.messages
        console = log.read_text(errors="replace") if log.exists() else ""
        # with the port, READY=1 comes from the guest after its oneshot services; without it, as the
        # hypervisor starts, long before the guest gets that far
        assert ("ready: services done" in console) == readiness, console
        assert vm.wait(timeout=BOOT_TIMEOUT) == 0
    finally:
        vm.kill()
    assert "ready: commands" in log.read_text(errors="replace")
    assert fake_systemd.texts().count("READY=1") == 1
