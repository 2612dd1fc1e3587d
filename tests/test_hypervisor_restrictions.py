"""Every option a hypervisor cannot honour is refused by `microvm check`, naming both.

The refusals come from each backend's ``check``: its declared features (the
restriction table in docs/hypervisors.md) and its own limits. These tests
write the offending option to a TOML file and load it the way `microvm check`
does, or run `microvm check` itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from microvm.config import load_vm
from microvm.errors import ConfigErrors, MicrovmError
from microvm.hypervisors import Feature, available, get
from microvm.hypervisors.base import IMAGE_FEATURES
from microvm.runner.build import check_for

# The smallest TOML (below [microvm]) asking for one feature, and the option path the error names.
ASKS: dict[Feature, tuple[str, str]] = {
    Feature.SHARE_9P: (
        '[[microvm.shares]]\ntag = "data"\nsource = "/srv"\nmountPoint = "/data"\nproto = "9p"\n',
        "microvm.shares[0].proto",
    ),
    Feature.SHARE_VIRTIOFS: (
        '[[microvm.shares]]\ntag = "data"\nsource = "/srv"\nmountPoint = "/data"\nproto = "virtiofs"\n',
        "microvm.shares[0].proto",
    ),
    Feature.USER_NETWORK: (
        '[[microvm.interfaces]]\ntype = "user"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n',
        "microvm.interfaces[0].type",
    ),
    Feature.TAP: (
        '[[microvm.interfaces]]\ntype = "tap"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n',
        "microvm.interfaces[0].type",
    ),
    Feature.MACVTAP: (
        (
            '[[microvm.interfaces]]\ntype = "macvtap"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n'
            '[microvm.interfaces.macvtap]\nlink = "eth0"\nmode = "bridge"\n'
        ),
        "microvm.interfaces[0].type",
    ),
    Feature.BRIDGE: (
        '[[microvm.interfaces]]\ntype = "bridge"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\nbridge = "br0"\n',
        "microvm.interfaces[0].type",
    ),
    Feature.BALLOON: ("balloon = true\n", "microvm.balloon"),
    Feature.INITIAL_BALLOON: ("balloon = true\ninitialBalloonMem = 64\n", "microvm.initialBalloonMem"),
    Feature.VIRTIO_MEM: ("hotplugMem = 512\n", "microvm.hotplugMem"),
    Feature.HUGEPAGES: ("hugepageMem = true\n", "microvm.hugepageMem"),
    Feature.VSOCK: ("[microvm.vsock]\ncid = 5\n", "microvm.vsock.cid"),
    Feature.PCI_DEVICES: ('[[microvm.devices]]\nbus = "pci"\npath = "0000:01:00.0"\n', "microvm.devices[0].bus"),
    Feature.USB_DEVICES: (
        '[[microvm.devices]]\nbus = "usb"\npath = "vendorid=0x1234,productid=0x5678"\n',
        "microvm.devices[0].bus",
    ),
    Feature.GRAPHICS: ("[microvm.graphics]\nenable = true\n", "microvm.graphics.enable"),
    Feature.CPU_EMULATION: ('cpu = "cortex-a53"\n', "microvm.cpu"),
    Feature.READ_ONLY_VOLUMES: (
        '[[microvm.volumes]]\nimage = "a.img"\nsize = 8\nreadOnly = true\n',
        "microvm.volumes[0].readOnly",
    ),
    Feature.VOLUME_SERIAL: (
        '[[microvm.volumes]]\nimage = "a.img"\nsize = 8\nserial = "disk-a"\n',
        "microvm.volumes[0].serial",
    ),
    Feature.DIRECT_IO: ('[[microvm.volumes]]\nimage = "a.img"\nsize = 8\ndirect = true\n', "microvm.volumes[0].direct"),
    Feature.MIGRATE: ("migratable = true\n", "microvm.migratable"),
    **{
        feature: (
            f'[[microvm.volumes]]\nimage = "a.{f}"\nsize = 8\nimageType = "{f}"\n',
            "microvm.volumes[0].imageType",
        )
        for f, feature in IMAGE_FEATURES.items()
    },
    Feature.BACKING_FILE: (
        '[[microvm.volumes]]\nimage = "a.qcow2"\nsize = 8\nimageType = "qcow2"\nbackingFile = "base.img"\n',
        "microvm.volumes[0].backingFile",
    ),
    Feature.VHOST_NET: (
        '[[microvm.interfaces]]\ntype = "tap"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\ntap.vhost = true\n',
        "microvm.interfaces[0].tap.vhost",
    ),
}
# Features no option asks for directly (the host asks), or asked for with a companion option.
# Multi-queue taps are used where the hypervisor has them, single-queue elsewhere.
# Suspending is a command (`microvm suspend` refuses it), not an option.
NOT_ASKED = {
    Feature.NOTIFY_READINESS,
    Feature.CONTROL_SOCKET,
    Feature.FORWARD_PORTS,
    Feature.MULTI_QUEUE_TAP,
    Feature.SUSPEND,
}


def write_vm(tmp_path: Path, hypervisor: str, body: str, arch: str | None = None) -> Path:
    file = tmp_path / "vm.toml"
    guest = '[guest]\nhostName = "web"\n' + (f'arch = "{arch}"\n' if arch else "")
    file.write_text(f'{guest}\n[microvm]\nhypervisor = "{hypervisor}"\n{body}')
    return file


def refusal(tmp_path: Path, hypervisor: str, body: str, arch: str | None = None) -> str:
    with pytest.raises(ConfigErrors) as info:
        load_vm(write_vm(tmp_path, hypervisor, body, arch))
    return str(info.value)


def unsupported() -> list[tuple[str, Feature]]:
    return [
        (backend.name, feature)
        for backend in available()
        for feature in Feature
        if feature not in NOT_ASKED and not backend.supports(feature)
    ]


def test_every_asked_feature_has_a_snippet() -> None:
    assert set(Feature) - NOT_ASKED == set(ASKS)


@pytest.mark.parametrize(("hypervisor", "feature"), unsupported(), ids=lambda v: getattr(v, "name", v))
def test_unsupported_feature_is_refused(tmp_path: Path, hypervisor: str, feature: Feature) -> None:
    body, option = ASKS[feature]
    message = refusal(tmp_path, hypervisor, body)
    assert f"{hypervisor} does not support {feature.value}" in message
    assert option in message
    assert "vm.toml" in message


@pytest.mark.parametrize(
    ("hypervisor", "feature"),
    [(b.name, f) for b in available() for f in ASKS if b.supports(f) and f is not Feature.INITIAL_BALLOON],
    ids=lambda v: getattr(v, "name", v),
)
def test_supported_feature_is_not_refused_for_it(tmp_path: Path, hypervisor: str, feature: Feature) -> None:
    body, _ = ASKS[feature]
    try:
        load_vm(write_vm(tmp_path, hypervisor, body))
    except ConfigErrors as exc:  # other features the snippet needs may be missing, never this one
        assert f"does not support {feature.value}" not in str(exc)


def test_9p_on_cloud_hypervisor_suggests_virtiofs(tmp_path: Path) -> None:
    message = refusal(tmp_path, "cloud-hypervisor", ASKS[Feature.SHARE_9P][0])
    assert 'hint: use proto = "virtiofs"' in message


@pytest.mark.parametrize("proto", ["9p", "virtiofs"])
def test_any_share_on_firecracker_suggests_a_volume(tmp_path: Path, proto: str) -> None:
    feature = Feature.SHARE_9P if proto == "9p" else Feature.SHARE_VIRTIOFS
    message = refusal(tmp_path, "firecracker", ASKS[feature][0])
    assert "firecracker does not support" in message and "use a volume instead of a share" in message


@pytest.mark.parametrize("hypervisor", ["kvmtool", "alioth"])
def test_socket_refused_without_control_socket(tmp_path: Path, hypervisor: str) -> None:
    message = refusal(tmp_path, hypervisor, 'socket = "web.sock"\n')
    assert f"{hypervisor} has no control socket" in message and "microvm.socket" in message


@pytest.mark.parametrize("hypervisor", [b.name for b in available() if b.name != "qemu"])
def test_forward_ports_need_qemu_user_networking(tmp_path: Path, hypervisor: str) -> None:
    body = (
        '[[microvm.interfaces]]\ntype = "user"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n'
        "[[microvm.forwardPorts]]\nhost.port = 2222\nguest.port = 22\n"
    )
    message = refusal(tmp_path, hypervisor, body)
    assert f"{hypervisor} does not support {Feature.FORWARD_PORTS.value}" in message
    assert "microvm.forwardPorts" in message


@pytest.mark.parametrize("hypervisor", [b.name for b in available() if b.supports(Feature.CONTROL_SOCKET)])
def test_socket_defaults_where_there_is_one(tmp_path: Path, hypervisor: str) -> None:
    assert load_vm(write_vm(tmp_path, hypervisor, "")).config.microvm.socket == "web.sock"


def test_docs_table_has_every_feature_and_backend() -> None:
    from microvm.hypervisors.table import markdown

    text = markdown()
    for feature in Feature:
        assert f"| {feature.value} |" in text
    for backend in available():
        assert f"### {backend.name}" in text
    assert "use a volume instead of a share" in text.split("### firecracker")[1]


def test_foreign_architecture_needs_cpu_emulation(tmp_path: Path) -> None:
    message = refusal(tmp_path, "cloud-hypervisor", "", "aarch64")
    assert "guest.arch" in message and "cloud-hypervisor does not support CPU emulation (TCG)" in message
    assert "qemu" in message  # the hypervisor that can


def test_x86_machine_refused_for_aarch64_guest(tmp_path: Path) -> None:
    message = refusal(tmp_path, "qemu", '[microvm.qemu]\nmachine = "q35"\n', "aarch64")
    assert "microvm.qemu.machine" in message and "'virt'" in message


def test_arm_machine_refused_for_x86_guest(tmp_path: Path) -> None:
    message = refusal(tmp_path, "qemu", '[microvm.qemu]\nmachine = "virt"\n', "x86_64")
    assert "'virt' machine is aarch64 only" in message and "microvm.qemu.machine" in message


# --- `microvm check` itself: a limit of each backend that only its build used to find -----------

SHARE = '[[microvm.shares]]\ntag = "data"\nsource = "/srv"\nmountPoint = "/data"\n'
# hypervisor -> (TOML below [microvm], guest.arch, the option path the error names, what it says)
LIMITS: dict[str, tuple[str, str | None, str, str]] = {
    "qemu": ('[microvm.qemu]\nmachine = "q35"\n', "aarch64", "microvm.qemu.machine", "'q35' machine is x86_64 only"),
    "cloud-hypervisor": (
        '[[microvm.volumes]]\nimage = "a.img"\nsize = 8\nserial = "disk,a"\n',
        None,
        "microvm.volumes[0].serial",
        "cannot take volume serial 'disk,a'",
    ),
    "firecracker": (
        "balloon = true\nhugepageMem = true\n",
        None,
        "microvm.hugepageMem",
        "cannot combine memory balloon with huge page backed memory",
    ),
    "crosvm": (
        SHARE + 'proto = "virtiofs"\nsocket = "fs,data.sock"\n',
        None,
        "microvm.shares[0].socket",
        "cannot take virtiofs socket 'fs,data.sock'",
    ),
    "kvmtool": (SHARE + 'proto = "9p"\nreadOnly = true\n', None, "microvm.shares[0].readOnly", "read-only"),
    "stratovirt": ("mem = 64\n", None, "microvm.mem", "needs at least 128 MB of memory"),
    "alioth": (
        '[[microvm.volumes]]\nimage = "data,1.img"\nsize = 8\n',
        None,
        "microvm.volumes[0].image",
        "cannot take disk image 'data,1.img'",
    ),
}


def check(file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "microvm", "check", str(file)], check=False, capture_output=True, text=True, timeout=60
    )


def test_every_backend_has_a_limit_here() -> None:
    assert set(LIMITS) == {b.name for b in available()}


@pytest.mark.parametrize("hypervisor", LIMITS)
def test_check_reports_the_backends_limit(tmp_path: Path, hypervisor: str) -> None:
    body, arch, option, says = LIMITS[hypervisor]
    file = write_vm(tmp_path, hypervisor, body, arch)
    result = check(file)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    message = result.stderr + result.stdout
    assert str(file) in message and option in message and hypervisor in message and says in message


def test_qemu_warns_about_2048_mb_and_passes(tmp_path: Path) -> None:
    result = check(write_vm(tmp_path, "qemu", "mem = 2048\n"))
    assert result.returncode == 0, result.stderr
    assert "microvm.mem" in result.stderr + result.stdout and "2048 MB" in result.stderr + result.stdout


def test_build_for_another_hypervisor_applies_its_limits(tmp_path: Path) -> None:
    vm = load_vm(write_vm(tmp_path, "qemu", "mem = 64\n")).config
    with pytest.raises(MicrovmError, match="stratovirt cannot run this VM.*microvm.mem.*at least 128 MB"):
        check_for(get("stratovirt"), vm)
    check_for(get("kvmtool"), vm)  # qemu's control socket is just not used


@pytest.mark.parametrize("hypervisor", ["cloud-hypervisor", "firecracker"])
def test_migratable_names_what_the_hypervisor_api_offers(tmp_path: Path, hypervisor: str) -> None:
    message = refusal(tmp_path, hypervisor, ASKS[Feature.MIGRATE][0])
    assert "snapshot" in message and "microvm migrates qemu VMs only" in message
