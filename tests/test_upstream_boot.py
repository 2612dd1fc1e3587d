"""Options microvm.nix added later, booted for real with qemu under TCG.

qcow2 and vhdx volumes (one an overlay over a backing file), PCIe root ports
on q35 with a device hot-plugged into one, extraArgsScript, a headless
display served by VNC on a unix socket. vhost-net needs ``/dev/vhost-net``,
which these machines lack: the runner says so before qemu starts, and the
boot test skips.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import boot, build_file, shut_down, started, write_vm
from test_boot import _wait_for

from microvm.hypervisors import qmp

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]

VOLUMES_VM = """
[guest]
hostName = "formats"
shell = false
commands = [
  'echo "base says: $(cat /data/hello)"',
  'for d in data fresh vhdx; do echo "$d before: $(cat /$d/written 2>/dev/null || echo none)"; done',
  'for d in data fresh vhdx; do echo kept > /$d/written; done; sync',
  "poweroff",
]
[microvm]
mem = 256
[[microvm.volumes]]
image = "overlay.qcow2"
imageType = "qcow2"
backingFile = "base.img"
mountPoint = "/data"
size = 8  # less than the base: the overlay keeps the base's 16 MB
[[microvm.volumes]]
image = "fresh.qcow2"
imageType = "qcow2"
mountPoint = "/fresh"
size = 16
[[microvm.volumes]]
image = "fresh.vhdx"
imageType = "vhdx"
mountPoint = "/vhdx"
size = 16
"""


def _image_info(path: Path) -> dict:
    return json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True).stdout
    )


def test_qcow2_and_vhdx_volumes_with_a_backing_file(shared_store, tmp_path: Path) -> None:
    """Missing images are made in their format (the overlay over the backing file, without mkfs);
    the guest writes the overlay, never the backing file; a second boot keeps every image as it was."""
    state = tmp_path / "state"
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "hello").write_text("from-the-base\n")
    state.mkdir()
    base = state / "base.img"
    with base.open("wb") as image:
        image.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(seed), str(base)], check=True)
    base_sum = hashlib.sha256(base.read_bytes()).hexdigest()
    file = write_vm(tmp_path, VOLUMES_VM)

    first = boot(shared_store, file, state)
    assert first.returncode == 0, first.console
    assert "base says: from-the-base" in first.console
    for volume in ("data", "fresh", "vhdx"):
        assert f"{volume} before: none" in first.console
    overlay = _image_info(state / "overlay.qcow2")
    assert overlay["format"] == "qcow2" and overlay["backing-filename"] == str(base.resolve())
    assert overlay["backing-filename-format"] == "raw" and overlay["virtual-size"] == 16 << 20
    assert _image_info(state / "fresh.qcow2")["format"] == "qcow2"
    assert _image_info(state / "fresh.vhdx")["format"] == "vhdx"
    assert hashlib.sha256(base.read_bytes()).hexdigest() == base_sum  # the guest's writes went to the overlay

    second = boot(shared_store, file, state)
    assert second.returncode == 0, second.console
    for volume in ("data", "fresh", "vhdx"):
        assert f"{volume} before: kept" in second.console
    assert hashlib.sha256(base.read_bytes()).hexdigest() == base_sum


HOTPLUG_VM = """
[guest]
hostName = "hotplug"
shell = false
commands = [
  'echo "serial: $(cat /sys/class/dmi/id/product_serial)"',
  'echo "root ports: $(grep -l 0x0604 /sys/bus/pci/devices/*/class | wc -l)"',
  '''for i in $(seq 1200); do [ -e /sys/bus/pci/devices/0000:01:00.0 ] && break; sleep 0.1; done
echo "plugged: $(cat /sys/bus/pci/devices/0000:01:00.0/vendor 2>/dev/null || echo nothing)"''',
]
[guest.services.idle]
command = "while :; do sleep 1; done"
[microvm]
mem = 256
extraArgsScript = "echo -smbios type=1,serial=from-extra-args"
[microvm.qemu]
machine = "q35"
[[microvm.qemu.pcieRootPorts]]
id = "rp0"
chassis = 1
slot = 1
"""


def test_pcie_root_port_takes_a_hot_plugged_device_on_q35(shared_store, tmp_path: Path) -> None:
    """q35 cannot hot-plug on its root bus: a device_add into the declared root port reaches the guest.
    The extraArgsScript's output ends qemu's command line (its SMBIOS serial is the guest's)."""
    file = write_vm(tmp_path, HOTPLUG_VM)
    state = tmp_path / "state"
    log = state / "hotplug-console.log"
    with started(shared_store, file, state) as (built, vm):
        _wait_for(log, "root ports: 1", vm)
        assert "serial: from-extra-args" in log.read_text(errors="replace")
        qmp.execute(state / "hotplug.sock", "device_add", {"driver": "virtio-rng-pci", "id": "hp0", "bus": "rp0"})
        _wait_for(log, "plugged: 0x1af4", vm)  # virtio's vendor id
        shut_down(built, state, vm)


HEADLESS_VM = """
[guest]
hostName = "headless"
shell = false
commands = ['echo "gpus: $(grep -l 0x1050 /sys/bus/pci/devices/*/device | wc -l)"']
[guest.services.idle]
command = "while :; do sleep 1; done"
[microvm]
mem = 256
graphics = { enable = true, backend = "headless" }
"""


def test_headless_graphics_serve_vnc_on_a_unix_socket(shared_store, tmp_path: Path) -> None:
    """No window (it runs without a desktop, as under systemd); the guest has its GPU; VNC answers."""
    file = write_vm(tmp_path, HEADLESS_VM)
    state = tmp_path / "state"
    with started(shared_store, file, state) as (built, vm):
        _wait_for(state / "headless-console.log", "gpus: 1", vm)  # virtio-gpu's device id
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(state / "headless-vnc.sock"))
            assert client.recv(12) == b"RFB 003.008\n"  # RFC 6143 7.1.1, the server's protocol version
        shut_down(built, state, vm)


VHOST_VM = """
[guest]
hostName = "vhost"
shell = false
commands = ['ip addr add 10.77.0.2/24 dev eth0; ip link set eth0 up; ping -c 1 -W 5 10.77.0.1 && echo "ping ok"', "poweroff"]
[[microvm.interfaces]]
type = "tap"
id = "vm-vhost"
mac = "02:00:00:00:77:02"
tap.vhost = true
[microvm]
mem = 256
"""


@pytest.mark.skipif(not Path("/dev/vhost-net").exists(), reason="no /dev/vhost-net on this host (vhost_net not loaded)")
def test_vhost_net_tap_carries_traffic(shared_store, ns, tmp_path: Path) -> None:
    ns.run("ip", "tuntap", "add", "dev", "vm-vhost", "mode", "tap", "vnet_hdr")
    ns.run("ip", "addr", "add", "10.77.0.1/24", "dev", "vm-vhost")
    ns.run("ip", "link", "set", "vm-vhost", "up")
    file = write_vm(tmp_path, VHOST_VM)
    state = tmp_path / "state"
    state.mkdir()
    run = ns.run(str(build_file(shared_store, file).run), cwd=state, check=False, timeout=300)
    console = (state / "vhost-console.log").read_text(errors="replace")
    assert run.returncode == 0 and "ping ok" in console, console


@pytest.mark.skipif(Path("/dev/vhost-net").exists(), reason="this host has /dev/vhost-net")
def test_missing_vhost_net_is_reported_before_qemu_starts(shared_store, tmp_path: Path) -> None:
    file = write_vm(tmp_path, VHOST_VM)
    booted = boot(shared_store, file, tmp_path / "state")
    assert booted.returncode == 1
    assert "/dev/vhost-net is missing, which tap.vhost of vm-vhost needs" in booted.console
    assert not (tmp_path / "state" / "vhost-console.log").exists()  # qemu never ran
