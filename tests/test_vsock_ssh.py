"""``microvm.vsock.ssh`` and ``microvm ssh NAME``: SSH into a guest over vsock, no network.

These machines have no /dev/vhost-vsock, so a guest with vsock cannot boot
here: the Debian guest's units are checked with systemd-analyze, and
``microvm ssh`` is run for real through cloud-hypervisor's side of vsock (a
unix socket taking ``CONNECT <port>``, docs/vsock.md), played by the test,
which answers as an SSH server would begin. The boot test skips without
/dev/vhost-vsock.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import BOOT_TIMEOUT, build_file, microvm, write_vm
from test_debian import ssh_key, write_debian_vm  # noqa: F401 (ssh_key is a fixture)

from microvm.errors import MicrovmError
from microvm.host.statedir import VMState
from microvm.host.vsock import ssh_argv
from microvm.store import Store

VSOCK = "[microvm]\nvsock = { cid = 42, ssh = { enable = true } }\n"


def _debian_vsock_vm(directory: Path, key: Path) -> Path:
    file = write_debian_vm(directory, key, name="deb-vsock")
    file.write_text(file.read_text().replace("[microvm]\n", VSOCK, 1))
    return file


def test_debian_guest_listens_for_ssh_on_vsock(tmp_path: Path, shared_store: Store, ssh_key: Path) -> None:  # noqa: F811
    root = build_file(shared_store, _debian_vsock_vm(tmp_path, ssh_key)).system
    assert (root / "etc/systemd/system/sockets.target.wants/sshd-vsock.socket").is_symlink()
    assert "ListenStream=vsock::22" in (root / "etc/systemd/system/sshd-vsock.socket").read_text()
    assert (root / "usr/sbin/sshd").exists()
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", "sshd-vsock.socket", "sshd-vsock@0.service"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert (verify.returncode, verify.stderr) == (0, "")


def test_busybox_guest_cannot_have_ssh_on_vsock(tmp_path: Path) -> None:
    file = write_vm(tmp_path, f'[guest]\nhostName = "bb"\n{VSOCK}')
    result = microvm("check", str(file))
    assert result.returncode != 0
    assert "microvm.vsock.ssh.enable" in result.stderr and 'needs guest.base = "debian"' in result.stderr


def _installed(state_dir: Path, name: str, microvm_table: dict) -> VMState:
    """A VM as `microvm create` leaves it, as far as `microvm ssh` reads it: current -> a runner with vm.json."""
    runner = state_dir / f"runner-{name}"
    (runner / "share/microvm").mkdir(parents=True)
    (runner / "share/microvm/vm.json").write_text(json.dumps({"microvm": microvm_table, "guest": {"hostName": name}}))
    (state_dir / name).mkdir(parents=True)
    (state_dir / name / "current").symlink_to(runner)
    return VMState.of(name, state_dir)


def test_ssh_command_line_by_hypervisor(tmp_path: Path) -> None:
    vsock = {"cid": 7, "ssh": {"enable": True}}
    qemu = ssh_argv(_installed(tmp_path, "q", {"hypervisor": "qemu", "vsock": vsock}), ["uptime"])
    assert qemu[-4:] == ["-l", "root", "q", "uptime"]
    assert "--cid 7" in next(a for a in qemu if a.startswith("ProxyCommand="))
    ch = ssh_argv(_installed(tmp_path, "c", {"hypervisor": "cloud-hypervisor", "vsock": vsock}), ["-l", "alice"])
    assert ch[-3:] == ["c", "-l", "alice"] and "root" not in ch  # -l after the host is still ssh's option
    assert f"--mux {tmp_path / 'c' / 'notify.vsock'}" in next(a for a in ch if a.startswith("ProxyCommand="))
    fc = ssh_argv(_installed(tmp_path, "f", {"hypervisor": "firecracker", "vsock": vsock}), [])
    assert f"--mux {tmp_path / 'f' / 'notify.vsock'}" in next(a for a in fc if a.startswith("ProxyCommand="))
    with pytest.raises(MicrovmError, match="no SSH server on vsock"):
        ssh_argv(_installed(tmp_path, "n", {"hypervisor": "qemu", "vsock": {"cid": 8}}), [])


def _serve_mux(path: Path, received: list[bytes]) -> socket.socket:
    """cloud-hypervisor's host side of vsock: CONNECT 22 -> OK, then an SSH server's first words."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            received.append(conn.recv(64))
            conn.sendall(b"OK 1073741824\n")
            conn.sendall(b"SSH-2.0-microvm-test\r\n")
            conn.settimeout(10)
            received.append(conn.recv(64))

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_microvm_ssh_reaches_the_guest_through_cloud_hypervisor_vsock(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    vsock = {"cid": 9, "ssh": {"enable": True}}
    _installed(state_dir, "chvm", {"hypervisor": "cloud-hypervisor", "vsock": vsock})
    received: list[bytes] = []
    with _serve_mux(state_dir / "chvm" / "notify.vsock", received):
        result = subprocess.run(
            [sys.executable, "-m", "microvm", "ssh", "chvm", "-v", "-o", "BatchMode=yes", "true"],
            env={**os.environ, "MICROVM_STATE_DIR": str(state_dir)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert received[0] == b"CONNECT 22\n"
    assert received[1].startswith(b"SSH-2.0-OpenSSH")  # ssh's own banner came through the proxy
    assert "remote software version microvm-test" in result.stderr  # and ours reached ssh
    assert result.returncode == 255  # the pretend server says no more


@pytest.mark.boot
@pytest.mark.skipif(not Path("/dev/vhost-vsock").exists(), reason="no /dev/vhost-vsock on this host (vhost_vsock)")
def test_ssh_over_vsock_into_a_debian_guest(tmp_path: Path, ns, ssh_key: Path) -> None:  # noqa: F811
    """In a namespace (the guest's forwarded ports stay there); vsock itself is the host kernel's."""
    state_dir = tmp_path / "state"
    env = {**os.environ, "MICROVM_STATE_DIR": str(state_dir)}
    _debian_vsock_vm(tmp_path / "src" / "deb-vsock", ssh_key)
    assert microvm("create", "deb-vsock", "-f", str(tmp_path / "src"), env=env).returncode == 0
    run = ns.popen([sys.executable, "-m", "microvm", "run", "deb-vsock"], env=env, stdin=subprocess.DEVNULL)
    key = str(ssh_key.with_suffix(""))

    def ssh(command: str) -> subprocess.CompletedProcess[str]:
        microvm_ssh = [sys.executable, "-m", "microvm", "-s", "deb-vsock", "-i", key, "-o", "BatchMode=yes", command]
        return ns.run(*microvm_ssh, check=False, env=env)

    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while (result := ssh("cat /etc/hostname")).returncode != 0 and time.monotonic() < deadline:
            time.sleep(1)
        assert result.stdout == "deb-vsock\n", result.stderr
        ssh("systemctl poweroff --no-block")
        assert run.wait(timeout=BOOT_TIMEOUT) == 0
    finally:
        run.kill()
