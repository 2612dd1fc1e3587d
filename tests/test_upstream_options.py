"""Options microvm.nix added later, without a boot: what `microvm check` refuses, the runner's
script, the units, and virtiofsd's cache policy on the real (C) virtiofsd.

The boots are in test_upstream_boot.py, ssh over vsock in test_vsock_ssh.py,
machined registration in test_host_systemd.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import microvm, write_vm
from test_hypervisors_golden import guest_for

from microvm.config import vm_config
from microvm.errors import MicrovmError
from microvm.host import units
from microvm.hypervisors import get
from microvm.runner import virtiofsd
from microvm.runner.script import CREATE_VOLUME, run_script

BAD = {
    "backing file on a raw image": (
        '[[microvm.volumes]]\nimage = "a.img"\nsize = 8\nbackingFile = "base.img"\n',
        'backingFile needs imageType = "qcow2"',
    ),
    "cache on a 9p share": (
        '[[microvm.shares]]\ntag = "s"\nsource = "s"\nmountPoint = "/s"\ncache = "never"\n',
        "cache = 'never' needs proto = \"virtiofs\"",
    ),
    "vhost on a user interface": (
        '[[microvm.interfaces]]\ntype = "user"\nid = "u"\nmac = "02:00:00:00:00:01"\ntap.vhost = true\n',
        'only interfaces of type "tap" use vhost-net',
    ),
    "root ports on the pc machine": (
        '[microvm.qemu]\nmachine = "pc"\npcieRootPorts = [{ id = "rp0" }]\n',
        "'pc' machine has no PCI Express",
    ),
    "ssh on vsock without a cid": ("[microvm.vsock]\nssh.enable = true\n", "ssh.enable needs a cid"),
    "backing file that is a volume": (
        (
            '[[microvm.volumes]]\nimage = "a.img"\nsize = 8\n'
            '[[microvm.volumes]]\nimage = "b.qcow2"\nsize = 8\nimageType = "qcow2"\nbackingFile = "a.img"\n'
        ),
        "'a.img' is a volume the guest writes",
    ),
    "two root ports with one id": (
        '[microvm.qemu]\nmachine = "q35"\npcieRootPorts = [{ id = "rp0" }, { id = "rp0" }]\n',
        "root port id 'rp0' is also used by microvm.qemu.pcieRootPorts[0].id",
    ),
    "graphics backend unknown": ('[microvm.graphics]\nenable = true\nbackend = "cocoa"\n', "'gtk' or 'headless'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_refuses_with_the_option_named(tmp_path: Path, case: str) -> None:
    body, message = BAD[case]
    file = write_vm(tmp_path, f'[guest]\nhostName = "bad"\n{body}')
    result = microvm("check", str(file))
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_startup_timeout_is_the_units_timeout(tmp_path: Path) -> None:
    written = units.all_units(tmp_path, tmp_path / "store", [], {}, timeout=42)
    assert "TimeoutSec=42\n" in written["microvm@.service"]
    host = write_vm(tmp_path, "[microvm.host]\nstartupTimeout = 0\n", "host.toml")
    refused = microvm("host", "apply", "--dry-run", str(host))
    assert refused.returncode != 0 and "microvm.host.startupTimeout" in refused.stderr, refused.stderr


RUN_SCRIPT_VM = {
    "extraArgsScript": "echo -smbios type=1,serial=x",
    "interfaces": [{"type": "tap", "id": "vm-fast", "mac": "02:00:00:00:00:0e", "tap": {"vhost": True}}],
    "volumes": [
        {"image": "data.vhdx", "size": 16, "imageType": "vhdx"},
        {"image": "over.qcow2", "size": 16, "imageType": "qcow2", "backingFile": "base.img", "backingFormat": "qcow2"},
    ],
}


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not on PATH")
def test_run_script_creates_images_checks_vhost_and_appends_extra_args(tmp_path: Path) -> None:
    vm = vm_config({"microvm": RUN_SCRIPT_VM, "guest": {"hostName": "web", "arch": "x86_64"}})
    qemu = get("qemu")
    script = run_script(vm, qemu, qemu.runner(vm, guest_for("qemu")), Path("/var/lib/microvm/runners/web"))
    (tmp_path / "microvm-run").write_text(script)
    result = subprocess.run(["shellcheck", str(tmp_path / "microvm-run")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    assert "create_volume data.vhdx 16 vhdx ext4 -q -F\n" in script  # qemu-img calls VHDX vhdx, VHD vpc
    assert "create_overlay over.qcow2 16 base.img qcow2\n" in script
    assert script.index("/dev/vhost-net") < script.index("extra_output=$(echo -smbios type=1,serial=x)")
    assert script.rstrip().endswith('"${extra_args[@]}"')


def _virtiofs_vm(cache: str):
    share = {"tag": "s", "source": "s", "mountPoint": "/s", "proto": "virtiofs", "cache": cache}
    return vm_config({"microvm": {"shares": [share]}, "guest": {"hostName": "fs", "arch": "x86_64"}})


@pytest.mark.parametrize(("cache", "option"), [("never", "cache=none"), ("always", "cache=always")])
def test_share_cache_reaches_the_c_virtiofsd(tmp_path: Path, cache: str, option: str) -> None:
    """The C virtiofsd (qemu-system-common) starts with the policy: its name for never is none."""
    path, rust = virtiofsd.find()
    if rust:
        pytest.skip(f"{path} is the Rust virtiofsd")
    daemons = virtiofsd.start(_virtiofs_vm(cache), tmp_path)
    try:
        cmdline = Path(f"/proc/{daemons[0].pid}/cmdline").read_bytes().split(b"\0")
        assert option.encode() in cmdline
    finally:
        virtiofsd.stop(daemons)


def test_metadata_cache_needs_the_rust_virtiofsd(tmp_path: Path) -> None:
    path, rust = virtiofsd.find()
    if rust:
        pytest.skip(f"{path} is the Rust virtiofsd, which has cache=metadata")
    vm = _virtiofs_vm("metadata")
    with pytest.raises(MicrovmError, match="C virtiofsd lacks"):
        virtiofsd.argv(vm, vm.microvm.shares[0], tmp_path)


@pytest.mark.parametrize(("size_mb", "virtual_mb"), [(32, 32), (8, 16)])
def test_overlay_is_as_large_as_asked_or_as_its_base(tmp_path: Path, size_mb: int, virtual_mb: int) -> None:
    """The run script's create_overlay, run by bash on a 16 MB base: grown when asked for more, never cut."""
    (tmp_path / "base.img").write_bytes(b"")
    os.truncate(tmp_path / "base.img", 16 << 20)
    script = f"set -euo pipefail\n{CREATE_VOLUME}\ncreate_overlay over.qcow2 {size_mb} base.img raw\n"
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "over.qcow2"], cwd=tmp_path, capture_output=True, check=True
        ).stdout
    )
    assert (info["virtual-size"], info["backing-filename"]) == (virtual_mb << 20, str(tmp_path / "base.img"))
    before = (tmp_path / "over.qcow2").read_bytes()
    subprocess.run(["bash", "-c", script.replace(f" {size_mb} ", " 64 ")], cwd=tmp_path, check=True)
    assert (tmp_path / "over.qcow2").read_bytes() == before  # an existing image is never touched
