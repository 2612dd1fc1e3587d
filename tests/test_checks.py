"""Bad configs (validation and microvm.config.checks, the rules across options): a clear error, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import MINIMAL_VM, write_vm
from typer.testing import CliRunner

from microvm.cli.app import app
from microvm.config import load_host, load_vm
from microvm.errors import ConfigErrors

# --- bad input: (file text, expected fragments) -------------------------------


BAD = {
    "toml syntax": ("[guest\nhostName='x'", ["not valid TOML"]),
    "missing guest": ("[microvm]\nmem = 1\n", ["guest: is required"]),
    "wrong type int": (MINIMAL_VM + '[microvm]\nmem = "512"\n', ["microvm.mem", "valid integer", "'512'"]),
    "wrong type bool": (MINIMAL_VM + "[microvm]\nballoon = 1\n", ["microvm.balloon", "boolean"]),
    "unknown option": (
        MINIMAL_VM + "[microvm]\nhugepagemem = true\n",
        ["unknown option", "did you mean microvm.hugepageMem"],
    ),
    "unknown table": (MINIMAL_VM + "[microvm.qmeu]\nmachine = 'q35'\n", ["microvm.qmeu", "did you mean microvm.qemu"]),
    "unknown top level": (MINIMAL_VM + "[guset]\n", ["guset", "did you mean guest"]),
    "bad hypervisor": (MINIMAL_VM + '[microvm]\nhypervisor = "vbox"\n', ["microvm.hypervisor", "'qemu'", "'vbox'"]),
    "zero mem": (MINIMAL_VM + "[microvm]\nmem = 0\n", ["microvm.mem", "greater than 0"]),
    "own guest with nothing to boot": (
        MINIMAL_VM + "[microvm.guest]\nenable = false\n",
        ["microvm.guest.enable", "nothing to boot", "microvm.initrdPath"],
    ),
    "own guest with readiness": (
        MINIMAL_VM + '[microvm]\nreadiness = true\nkernelParams = ["root=/dev/vda"]\n[microvm.guest]\nenable = false\n',
        ["microvm.readiness", "microvm.guest.enable = false"],
    ),
    "missing initrd": (MINIMAL_VM + '[microvm]\ninitrdPath = "no-such.cpio"\n', ["microvm.initrdPath", "no-such.cpio"]),
    "negative vcpu": (MINIMAL_VM + "[microvm]\nvcpu = -1\n", ["microvm.vcpu", "greater than 0"]),
    "bad mac": (
        MINIMAL_VM + '[[microvm.interfaces]]\nid = "vm-a"\nmac = "02:00:00:00:00"\n',
        ["interfaces[0].mac", "MAC"],
    ),
    "multicast mac": (MINIMAL_VM + '[[microvm.interfaces]]\nid = "vm-a"\nmac = "01:00:00:00:00:01"\n', ["multicast"]),
    "long ifname": (
        MINIMAL_VM + '[[microvm.interfaces]]\nid = "vm-abcdefghijklmn"\nmac = "02:00:00:00:00:01"\n',
        ["at most 15"],
    ),
    "path in ifname": (
        MINIMAL_VM + '[[microvm.interfaces]]\nid = "../etc"\nmac = "02:00:00:00:00:01"\n',
        ["not a valid name"],
    ),
    "shell in ifname": (
        MINIMAL_VM + '[[microvm.interfaces]]\nid = "a;rm -rf"\nmac = "02:00:00:00:00:01"\n',
        ["not a valid name"],
    ),
    "bad hostname": ('[guest]\nhostName = "a;rm -rf /"\n', ["guest.hostName", "not a valid host name"]),
    "dotdot hostname": ('[guest]\nhostName = "../etc"\n', ["not a valid host name"]),
    "duplicate ifname": (
        MINIMAL_VM + '[[microvm.interfaces]]\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n'
        '[[microvm.interfaces]]\nid = "vm-a"\nmac = "02:00:00:00:00:02"\n',
        ["microvm.interfaces[1].id", "also used by microvm.interfaces[0].id"],
    ),
    "duplicate mac": (
        MINIMAL_VM + '[[microvm.interfaces]]\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n'
        '[[microvm.interfaces]]\nid = "vm-b"\nmac = "02:00:00:00:00:01"\n',
        ["MAC address"],
    ),
    "bridge on user": (
        MINIMAL_VM + '[[microvm.interfaces]]\ntype = "user"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\nbridge = "br0"\n',
        ['only interfaces of type "bridge" or "tap"'],
    ),
    "bridge without bridge": (
        MINIMAL_VM + '[[microvm.interfaces]]\ntype = "bridge"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n',
        ["interfaces[0].bridge", "is required"],
    ),
    "macvtap without link": (
        MINIMAL_VM + '[[microvm.interfaces]]\ntype = "macvtap"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n',
        ["macvtap.link", "is required"],
    ),
    "duplicate volume": (
        MINIMAL_VM + '[[microvm.volumes]]\nimage = "a.img"\nsize = 1\n[[microvm.volumes]]\nimage = "a.img"\nsize = 1\n',
        ["volume image 'a.img'"],
    ),
    "zero volume size": (MINIMAL_VM + '[[microvm.volumes]]\nimage = "a.img"\nsize = 0\n', ["volumes[0].size"]),
    "relative mountpoint": (
        MINIMAL_VM + '[[microvm.volumes]]\nimage = "a.img"\nsize = 1\nmountPoint = "data"\n',
        ["not an absolute path"],
    ),
    "duplicate share tag": (
        MINIMAL_VM + '[[microvm.shares]]\ntag = "a"\nsource = "/a"\nmountPoint = "/a"\n'
        '[[microvm.shares]]\ntag = "a"\nsource = "/b"\nmountPoint = "/b"\n',
        ["share tag 'a'"],
    ),
    "duplicate virtiofs socket": (
        MINIMAL_VM + '[[microvm.shares]]\ntag = "a"\nsource = "/a"\nmountPoint = "/a"\n'
        'proto = "virtiofs"\nsocket = "s"\n[[microvm.shares]]\ntag = "b"\nsource = "/b"\n'
        'mountPoint = "/b"\nproto = "virtiofs"\nsocket = "s"\n',
        ["virtiofs socket 's'"],
    ),
    "duplicate mount point": (
        MINIMAL_VM + '[[microvm.volumes]]\nimage = "a.img"\nsize = 1\nmountPoint = "/a"\n'
        '[[microvm.shares]]\ntag = "a"\nsource = "/a"\nmountPoint = "/a"\n',
        ["mount point '/a'"],
    ),
    "forwardPorts without user": (
        MINIMAL_VM + "[[microvm.forwardPorts]]\nhost.port = 2222\nguest.port = 22\n",
        ['forwarded ports need an interface of type "user"'],
    ),
    "hotplugged over hotplug": (MINIMAL_VM + "[microvm]\nhotplugMem = 128\nhotpluggedMem = 256\n", ["hotpluggedMem"]),
    "balloon mem without balloon": (MINIMAL_VM + "[microvm]\ninitialBalloonMem = 64\n", ["needs microvm.balloon"]),
    "packages on busybox": (MINIMAL_VM + 'packages = ["nginx"]\n', ["guest.packages", 'guest.base = "debian"']),
    "kvm with emulated cpu": (MINIMAL_VM + '[microvm]\naccel = "kvm"\ncpu = "Haswell"\n', ["microvm.accel"]),
    "unknown after": (MINIMAL_VM + '[guest.services.a]\ncommand = "x"\nafter = ["b"]\n', ["no service named 'b'"]),
    "bad unit name in after": (
        MINIMAL_VM + '[guest.services.a]\ncommand = "x"\nafter = ["a b@c@d"]\n',
        ["guest.services.a.after[0]", "postgresql@15-main.service"],
    ),
    "same guest interface name": (
        MINIMAL_VM + '[[microvm.interfaces]]\nid = "a"\nmac = "02:00:00:00:00:01"\n'
        '[[microvm.interfaces]]\nid = "b"\nmac = "02:00:00:00:00:02"\n'
        '[guest.network.interfaces.a]\nname = "lan"\n[guest.network.interfaces.b]\nname = "lan"\n',
        ["guest.network.interfaces.b.name", "also used by guest.network.interfaces.a.name"],
    ),
    "undeclared credential": (
        MINIMAL_VM + '[guest.services.a]\ncommand = "x"\nenvironmentCredential = "db"\n',
        ["guest.services.a.environmentCredential", "no credential named 'db'"],
    ),
    "store tag on a data share": (
        MINIMAL_VM + '[[microvm.shares]]\ntag = "ro-store"\nsource = "/srv"\nmountPoint = "/srv"\n',
        ["microvm.shares[0].tag", "'ro-store' is the tag of the share of the guest system"],
    ),
    "store share with storeOnDisk": (
        MINIMAL_VM
        + '[microvm]\nstoreOnDisk = true\n[[microvm.shares]]\ntag = "s"\nsource = "store"\nmountPoint = "/s"\n',
        ["microvm.storeOnDisk", "source is the store"],
    ),
    "bad machine id": (MINIMAL_VM + 'machineId = "xyz"\n', ["guest.machineId", "32 lowercase hex"]),
    "imports not a list": ('imports = "a.toml"\n' + MINIMAL_VM, ["imports", "list of file names"]),
    "missing import": ('imports = ["nope.toml"]\n' + MINIMAL_VM, ["imports[0]", "does not exist"]),
    "port out of range": (
        MINIMAL_VM + '[[microvm.interfaces]]\nid = "u"\nmac = "02:00:00:00:00:01"\n'
        "[[microvm.forwardPorts]]\nhost.port = 70000\nguest.port = 22\n",
        ["forwardPorts[0].host.port", "less than 65536"],
    ),
    "modulesDir without image": (
        MINIMAL_VM + '[guest.kernel]\nmodulesDir = "/lib/modules/x"\n',
        ["guest.kernel.modulesDir"],
    ),
    "read-only 9p on crosvm": (
        MINIMAL_VM + '[microvm]\nhypervisor = "crosvm"\n'
        '[[microvm.shares]]\ntag = "a"\nsource = "/a:b"\nmountPoint = "/a"\nreadOnly = true\n',
        ["microvm.shares[0].readOnly", "no read-only mode", "microvm.shares[0].source", "':' separates"],
    ),
    "9p on qemu-less hypervisor": (
        MINIMAL_VM + '[microvm]\nhypervisor = "cloud-hypervisor"\n'
        '[[microvm.shares]]\ntag = "a"\nsource = "/a"\nmountPoint = "/a"\n',
        ["cloud-hypervisor does not support 9p shares", "virtiofs"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_a_clear_error_and_writes_nothing(tmp_path: Path, case: str) -> None:
    text, fragments = BAD[case]
    file = write_vm(tmp_path / "cfg", text)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["check", str(file)])
    assert result.exit_code != 0
    message = str(result.exception) if result.exception else result.output
    assert str(file) in message or "toml" in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_there_are_at_least_30_bad_configs() -> None:
    assert len(BAD) >= 30


def test_warnings_do_not_stop(tmp_path: Path) -> None:
    loaded = load_vm(write_vm(tmp_path, MINIMAL_VM + "[microvm]\nmem = 2048\n"))
    assert any("2048" in str(w) for w in loaded.warnings)


def test_host_file_config_and_source_conflict(tmp_path: Path) -> None:
    file = write_vm(tmp_path, '[microvm.vms.a]\nconfig = "a.toml"\nsource = "/x"\n', "host.toml")
    write_vm(tmp_path, "", "a.toml")
    with pytest.raises(ConfigErrors, match="cannot also set source"):
        load_host(file)


def test_a_debian_service_may_order_after_a_unit_instance(tmp_path: Path) -> None:
    text = MINIMAL_VM + 'base = "debian"\n[guest.services.a]\ncommand = "x"\nafter = ["postgresql@15-main.service"]\n'
    assert load_vm(write_vm(tmp_path, text)).config.guest.services["a"].after == ["postgresql@15-main.service"]


def test_host_bridges_and_vlans_are_checked(tmp_path: Path) -> None:
    text = """
[network.basic]
enable = true
ports = ["eth1"]
[network.bridges.microvm]
[network.bridges.br-a]
ports = ["eth1"]
[network.vlans.br-a]
link = "eth0"
id = 7
"""
    with pytest.raises(ConfigErrors) as info:
        load_host(write_vm(tmp_path, text, "host.toml"))
    message = str(info.value)
    assert "network.bridges.microvm: is network.basic's bridge already" in message
    assert "network.vlans.br-a: a VLAN needs its own name" in message
    assert "network.bridges.br-a.ports[0]: bridge port 'eth1' is also used by network.basic.ports[0]" in message


def test_a_tap_naming_a_bridge_the_host_file_lacks_is_a_warning(tmp_path: Path) -> None:
    text = """
[network.bridges.br-lan]
[microvm.vms.web.config.guest]
shell = false
[[microvm.vms.web.config.microvm.interfaces]]
type = "tap"
id = "vm-web"
mac = "02:00:00:00:00:01"
bridge = "br-dmz"
"""
    host = load_host(write_vm(tmp_path, text, "host.toml"))
    (warning,) = host.warnings
    assert "microvm.interfaces[0].bridge" in str(warning) and "br-dmz is not a bridge of this host file" in str(warning)


def test_own_guest_warns_of_what_only_microvms_guest_side_uses(tmp_path: Path) -> None:
    text = MINIMAL_VM + '[guest.fileSystems."/x"]\ndevice = "tmpfs"\nfsType = "tmpfs"\n[microvm]\n'
    text += 'kernelParams = ["root=/dev/vda"]\ncredentialFiles = { a = "/etc/a" }\n[microvm.guest]\nenable = false\n'
    warnings = [str(w) for w in load_vm(write_vm(tmp_path, text)).warnings]
    assert any("guest.fileSystems: is not used" in w for w in warnings)
    assert any("microvm.credentialFiles: is not used" in w for w in warnings)
