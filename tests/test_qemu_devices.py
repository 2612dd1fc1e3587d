"""qemu devices booted for real under TCG: virtiofs and 9p shares, the balloon, the virtio console."""

from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

import pytest
from helpers import microvm, shut_down, started, wait_for_text, write_vm

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]

SHARE_VM = """
[guest]
hostName = "{name}"
shell = false
commands = [
  'echo "host says: $(cat /mnt/shared/from-host)"',
  'echo guest-was-here > /mnt/shared/from-guest',
  "poweroff",
]
[microvm]
mem = 256
[[microvm.shares]]
tag = "shared"
source = "shared"
mountPoint = "/mnt/shared"
proto = "{proto}"
"""


@pytest.mark.parametrize("proto", ["virtiofs", "9p"])
def test_share_is_read_write_both_ways(tmp_path: Path, proto: str) -> None:
    name = f"share-{proto}"
    file = write_vm(tmp_path, SHARE_VM.format(name=name, proto=proto))
    shared = tmp_path / "state" / name / "shared"
    shared.mkdir(parents=True)
    (shared / "from-host").write_text("hello-from-host\n")
    result = microvm("run", str(file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "host says: hello-from-host" in result.stdout
    assert (shared / "from-guest").read_text() == "guest-was-here\n"


def test_virtio_console_instead_of_the_serial_port(tmp_path: Path) -> None:
    """``qemu.serialConsole = false``: the console is hvc0, from the initrd on, in the same log."""
    file = write_vm(
        tmp_path,
        """
        [guest]
        hostName = "hvc"
        shell = false
        commands = ['echo "console: $(cat /sys/class/tty/console/active)"', "poweroff"]
        [microvm]
        mem = 256
        qemu.serialConsole = false
        """,
    )
    result = microvm("run", str(file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "console: hvc0" in result.stdout


def test_balloon_is_set_and_read_back_with_privileges_dropped(shared_store, tmp_path: Path) -> None:
    """The balloon through bin/microvm-balloon, on a qemu that dropped to ``microvm.user`` (-runas)."""
    file = write_vm(
        tmp_path,
        """
        [guest]
        hostName = "balloon"
        shell = false
        [guest.services.ticker]
        command = 'echo "ready: balloon"; while :; do sleep 1; done'
        [microvm]
        mem = 256
        balloon = true
        user = "nobody"
    """,
    )
    state = tmp_path / "state"
    with started(shared_store, file, state) as (built, vm):
        wait_for_text(state / "balloon-console.log", "ready: balloon", vm)
        uids = next(line for line in Path(f"/proc/{vm.pid}/status").read_text().splitlines() if line.startswith("Uid:"))
        assert set(uids.split()[1:]) == {str(pwd.getpwnam("nobody").pw_uid)}, uids
        result = subprocess.run(
            [built.runner / "bin/microvm-balloon", "64"],
            cwd=state,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert int(result.stdout) == 64
        shut_down(built, state, vm)
