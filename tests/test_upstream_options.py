"""Options microvm.nix added later, without a boot: what `microvm check` refuses, the units,
and virtiofsd's cache policy on the real (C) virtiofsd.

The boots are in test_upstream_boot.py, ssh over vsock in test_vsock_ssh.py,
machined registration in test_host_systemd.py, the run script's images and extra args in test_runner_script.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import microvm, write_vm

from microvm.config import vm_config
from microvm.errors import MicrovmError
from microvm.host import units
from microvm.runner import virtiofsd

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
