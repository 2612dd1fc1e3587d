"""Real boots under TCG: the example, both machine types, both image types, volumes, shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import LONG_RUNNING_VM, REPO, boot, microvm, shut_down, started, wait_for_text, write_vm

from microvm.config import load_vm
from microvm.guest.cpio import CpioArchive
from microvm.guest.debarch import busybox_path
from microvm.hypervisors import get
from microvm.runner.build import kernel_cmdline

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]

MARKER_VM = """
[guest]
hostName = "{name}"
shell = false
commands = ['echo "marker: {name} up"', "poweroff"]
[microvm]
mem = 256
{extra}
"""


def test_example_boots_with_cli(tmp_path: Path) -> None:
    result = microvm("run", str(REPO / "examples/hello/vm.toml"))
    assert result.returncode == 0, result.stderr
    assert "hello: booted in" in result.stdout
    assert "hello stopped cleanly" in result.stdout
    # the microvm machine has no PCI: the console does not start with the kernel's alarming line about it
    assert "PCI: Fatal" not in result.stdout, result.stdout


@pytest.mark.parametrize(
    "name, extra",
    [
        ("m-q35", '[microvm.qemu]\nmachine = "q35"'),
        ("m-squashfs", 'storeDiskType = "squashfs"'),
    ],
)
def test_machine_and_image_variants_boot(shared_store, tmp_path: Path, name: str, extra: str) -> None:
    file = write_vm(tmp_path, MARKER_VM.format(name=name, extra=extra))
    booted = boot(shared_store, file, tmp_path / "state")
    assert booted.returncode == 0, booted.console
    assert f"marker: {name} up" in booted.console
    assert "stopped cleanly" in booted.console
    # what the guest printed is its user's alone (issue 15: 2), as is the rest of what the run left
    assert [p.name for p in booted.workdir.iterdir() if p.lstat().st_mode & 0o077] == []


def test_a_64_mb_guest_boots(shared_store, tmp_path: Path) -> None:
    """Debian's kernel ran out of memory in its own init below ~80 MB (tracefs's inodes, 2 MB per-CPU units)."""
    file = write_vm(tmp_path, MARKER_VM.format(name="small", extra="").replace("mem = 256", "mem = 64"))
    booted = boot(shared_store, file, tmp_path / "state")
    assert booted.returncode == 0 and "marker: small up" in booted.console, booted.console
    assert "Out of memory" not in booted.console


def test_one_cpu_guest_boots_trimmed_for_emulation(shared_store, tmp_path: Path) -> None:
    """optimize keeps a one-vCPU kernel's lock prefixes (noreplace-smp); under TCG the CPU has no ERMS."""
    file = write_vm(
        tmp_path,
        """
        [guest]
        hostName = "trim"
        shell = false
        commands = [
          'echo "cmdline: $(cat /proc/cmdline)"',
          'grep -qw erms /proc/cpuinfo && echo "cpu: erms" || echo "cpu: no erms"',
          "poweroff",
        ]
        [microvm]
        vcpu = 1
        mem = 256
        """,
    )
    booted = boot(shared_store, file, tmp_path / "state")
    assert booted.returncode == 0, booted.console
    assert "noreplace-smp" in booted.console.split("cmdline: ")[1].splitlines()[0]
    if booted.built.accel.accel == "tcg":
        assert "cpu: no erms" in booted.console
    one_cpu = load_vm(file).config
    two_cpus = one_cpu.model_copy(update={"microvm": one_cpu.microvm.model_copy(update={"vcpu": 2})})
    assert "noreplace-smp" not in kernel_cmdline(two_cpus, get("qemu"), "tcg")


def test_own_guest_boots_its_initramfs_alone(shared_store, tmp_path: Path) -> None:
    """microvm.guest.enable = false: no system, root image or initrd of ours; the user's initramfs boots."""
    archive = CpioArchive()
    archive.add_dir("dev")
    archive.add_char_device("dev/console", 5, 1)
    archive.add_host_file("bin/busybox", busybox_path(), mode=0o755)
    archive.add_file("init", b"#!/bin/busybox sh\n/bin/busybox echo 'own guest: up'\n/bin/busybox poweroff -f\n", 0o755)
    (tmp_path / "own.cpio").write_bytes(archive.to_bytes())
    file = write_vm(
        tmp_path,
        """
        [guest]
        hostName = "own"
        [microvm]
        mem = 256
        initrdPath = "own.cpio"
        [microvm.guest]
        enable = false
        """,
    )
    booted = boot(shared_store, file, tmp_path / "state")
    assert booted.returncode == 0, booted.console
    assert "own guest: up" in booted.console
    assert (booted.built.system, booted.built.root_image) == (None, None)
    assert booted.built.initrd is not None and booted.built.initrd.read_bytes() == archive.to_bytes()
    assert "-drive" not in booted.built.run.read_text()


def test_volume_is_created_once_and_keeps_data(shared_store, tmp_path: Path) -> None:
    file = write_vm(
        tmp_path,
        """
        [guest]
        hostName = "vol"
        shell = false
        commands = [
          'echo "boots before: $(cat /data/count 2>/dev/null || echo 0)"',
          'echo $(( $(cat /data/count 2>/dev/null || echo 0) + 1 )) > /data/count',
          "poweroff",
        ]
        [microvm]
        mem = 256
        [[microvm.volumes]]
        image = "data.img"
        mountPoint = "/data"
        size = 16
        label = "data"
    """,
    )
    state = tmp_path / "state"
    first = boot(shared_store, file, state)
    assert "boots before: 0" in first.console, first.console
    assert "microvm: creating volume data.img (16 MB, ext4)" in first.console  # the step, on stderr
    inode = (state / "data.img").stat().st_ino
    second = boot(shared_store, file, state)
    assert "boots before: 1" in second.console, second.console
    assert (state / "data.img").stat().st_ino == inode  # the image was not recreated
    assert "creating volume" not in second.console

    # a volume mkfs refuses: the runner stops before the hypervisor, naming the step after mkfs's own words
    write_vm(tmp_path, file.read_text().replace('label = "data"', 'mkfsExtraArgs = ["-b", "3"]'))
    failed = boot(shared_store, file, tmp_path / "other")
    assert failed.returncode != 0 and not (tmp_path / "other" / "data.img").exists()
    assert failed.console.rstrip().endswith("microvm: creating volume data.img failed: mkfs.ext4 said so above")
    assert "mkfs.ext4" in failed.console.split("microvm: creating volume data.img (16 MB, ext4)")[1]


def test_a_share_whose_source_is_the_store_carries_the_system(tmp_path: Path) -> None:
    """As a microvm.nix file says it: a share of the store (any tag, any mount point) and no storeOnDisk."""
    file = write_vm(
        tmp_path,
        MARKER_VM.format(
            name="storeshare",
            extra='[[microvm.shares]]\ntag = "nix-store"\nsource = "store"\nmountPoint = "/nix/.ro-store"\n'
            'proto = "virtiofs"',
        ),
    )
    result = microvm("run", str(file))
    assert result.returncode == 0, result.stderr
    assert "marker: storeshare up" in result.stdout
    assert load_vm(file).config.microvm.storeOnDisk is False


def test_microvm_shutdown_stops_guest_gracefully(shared_store, tmp_path: Path) -> None:
    file = write_vm(tmp_path, LONG_RUNNING_VM.format(name="stopme"))
    state = tmp_path / "state"
    with started(shared_store, file, state) as (built, vm):
        wait_for_text(state / "stopme-console.log", "ready: stopme", vm)
        shut_down(built, state, vm)
    console = (state / "stopme-console.log").read_text()
    assert "stopme is shutting down" in console
    assert "stopped cleanly" in console


def test_shutdown_requested_during_boot_is_not_lost(shared_store, tmp_path: Path) -> None:
    """A power-button press before the guest listens for it is repeated until the guest reacts."""
    file = write_vm(tmp_path, LONG_RUNNING_VM.format(name="early"))
    state = tmp_path / "state"
    with started(shared_store, file, state) as (built, vm):
        while not (state / "early.sock").exists():  # QMP is up long before the guest's acpid
            assert vm.poll() is None
            time.sleep(0.01)
        assert "ready: early" not in (state / "early-console.log").read_text(errors="replace")
        shut_down(built, state, vm)
    console = (state / "early-console.log").read_text(errors="replace")
    assert "early stopped cleanly" in console, console


def test_ctrl_c_on_run_shuts_down_gracefully(tmp_path: Path) -> None:
    file = write_vm(tmp_path, LONG_RUNNING_VM.format(name="ctrlc"))
    run = subprocess.Popen(
        [sys.executable, "-m", "microvm", "run", str(file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    log = tmp_path / "state" / "ctrlc" / "ctrlc-console.log"
    try:
        wait_for_text(log, "ready: ctrlc", run)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, err
    assert b"shutting down gracefully" in err
    assert b"ctrlc stopped cleanly" in out


def test_failed_boot_reports_instead_of_hanging(shared_store, tmp_path: Path) -> None:
    """A volume that cannot be found makes the initrd say so and power off."""
    file = write_vm(
        tmp_path,
        """
        [guest]
        hostName = "nolabel"
        [microvm]
        mem = 256
        [[microvm.volumes]]
        image = "x.img"
        mountPoint = "/x"
        size = 8
        autoCreate = false
    """,
    )
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "x.img").write_bytes(b"\0" * 8 * 1024 * 1024)  # no filesystem on it
    booted = boot(shared_store, file, tmp_path / "state")
    assert "microvm initrd: cannot mount" in booted.console


@pytest.mark.skipif(
    not shutil.which("qemu-system-aarch64"), reason="qemu-system-aarch64 not installed (qemu-system-arm)"
)
def test_foreign_architecture_guest_boots_emulated(shared_store, tmp_path: Path) -> None:
    """An aarch64 guest on an x86_64 host: arm64 kernel and busybox from Debian, qemu's virt machine, TCG."""
    file = write_vm(
        tmp_path,
        """
        [guest]
        hostName = "arm"
        arch = "aarch64"
        shell = false
        commands = ['echo "marker: up on $(uname -m)"', "poweroff"]
        [microvm]
        mem = 256
        """,
    )
    booted = boot(shared_store, file, tmp_path / "state")
    assert booted.returncode == 0, booted.console
    assert "marker: up on aarch64" in booted.console
    assert "arm stopped cleanly" in booted.console
    assert booted.built.runner.joinpath("bin/microvm-run").read_text().count("qemu-system-aarch64") == 1
