"""Golden files for the command lines every backend generates.

Each backend gets VM configs exercising every option it declares (derived
from its features, so a newly declared feature shows up here); the argv (one
argument per line, then the descriptors and shell lines the runner adds) and
firecracker's JSON are compared with ``tests/golden/<hypervisor>/<case>.*``.
Regenerate with ``UPDATE_GOLDEN=1 pytest tests/test_hypervisors_golden.py``
and review the diff against the documented syntax cited at each test.
A hypervisor found on the host's PATH (qemu) is written as ``@BINDIR@/NAME``:
the files are the same wherever a machine keeps it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import BACKENDS, QEMU_INTERFACES, full_options, guest_for

from microvm.config import vm_config
from microvm.hypervisors import Feature, RunnerSpec, get
from microvm.hypervisors.base import IMAGE_FEATURES
from microvm.hypervisors.qemu import tb_size

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
BINDIR = "@BINDIR@"  # stands for the host's directory of a hypervisor binary found on its PATH


def cases(hypervisor: str) -> dict[str, dict[str, Any]]:
    base = {"hypervisor": hypervisor}
    found = {
        "minimal": base,
        "full": full_options(hypervisor),
        # vcpu 1: single-queue taps and macvtaps, no num_queues
        "one-cpu": {**full_options(hypervisor), "vcpu": 1, "balloon": False, "initialBalloonMem": 0},
    }
    if get(hypervisor).supports(Feature.HUGEPAGES):
        found["hugepages"] = {**base, "hugepageMem": True}
    found |= upstream_cases(hypervisor)
    if hypervisor == "qemu":
        found |= qemu_cases(full_options(hypervisor))
    return found


def upstream_cases(hypervisor: str) -> dict[str, dict[str, Any]]:
    """Options microvm.nix added later: image formats and backing files, vhost-net, firecracker's CPU template."""
    has = get(hypervisor).supports
    base = {"hypervisor": hypervisor}
    found: dict[str, dict[str, Any]] = {}
    formats = [f for f, feature in IMAGE_FEATURES.items() if has(feature)]
    if formats:
        volumes = [{"image": f"data.{f}", "size": 64, "imageType": f} for f in formats]
        if has(Feature.BACKING_FILE):
            volumes.append({"image": "over.qcow2", "size": 64, "imageType": "qcow2", "backingFile": "base.img"})
        found["image-types"] = {**base, "volumes": volumes}
    if has(Feature.VHOST_NET):
        tap = {"type": "tap", "id": "vm-fast", "mac": "02:00:00:00:00:0e", "tap": {"vhost": True}}
        found["tap-vhost"] = {**base, "interfaces": [tap]}
    if hypervisor == "firecracker":
        template = {"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": []}]}
        firecracker = {"cpu": template, "driveIoEngine": "Sync"}
        found["cpu-template"] = {**base, "volumes": [{"image": "var.img", "size": 64}], "firecracker": firecracker}
    return found


def qemu_cases(full: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """qemu's options beyond the shared ones: machines, pass-through, user networking, emulation."""
    user = {"type": "user", "id": "usernet", "mac": "02:00:00:00:00:09"}
    return {
        "q35": {**full, "qemu": {"machine": "q35", "machineOpts": {"smm": "off"}, "serialConsole": False}},
        "usb-and-pci": {
            "devices": [
                {"bus": "usb", "path": "vendorid=0x1050,productid=0x0407"},
                {"bus": "pci", "path": "0000:02:00.0", "qemu": {"deviceExtraArgs": "x-vga=on"}},
            ]
        },
        "user-forward": {
            "interfaces": [user],
            "forwardPorts": [
                {"host": {"port": 2222}, "guest": {"port": 22}},
                {"proto": "udp", "host": {"address": "127.0.0.1", "port": 5353}, "guest": {"port": 53}},
                {"from": "guest", "host": {"address": "10.0.0.1", "port": 80}, "guest": {"port": 8080}},
            ],
        },
        "emulated-cpu": {"cpu": "Skylake-Server", "vsock": {"cid": 7}},
        "graphics": {"graphics": {"enable": True}},
        "graphics-headless": {"graphics": {"enable": True, "backend": "headless"}},
        # docs/pcie.txt: root ports on pcie.0 first, the devices then placed (or hot-plugged) on them
        "pcie-root-ports": {
            "qemu": {
                "machine": "q35",
                "pcieRootPorts": [
                    {"id": "rp0", "chassis": 1, "slot": 0},
                    {"id": "rp1", "bus": "pcie.0", "chassis": 1, "slot": 1, "addr": "1c.0"},
                ],
            },
            "devices": [{"bus": "pci", "path": "0000:03:00.0"}],
        },
        "runas-bridge": {
            "user": "microvm",
            "interfaces": [{"type": "bridge", "id": "br-if", "mac": "02:00:00:00:00:0a", "bridge": "br0"}],
        },
    }


def render(spec: RunnerSpec) -> str:
    binary, *args = spec.argv
    if Path(binary).is_absolute():
        binary = f"{BINDIR}/{Path(binary).name}"
    lines = [binary, *args]
    if spec.fds:
        lines += ["# fds"] + [f'exec {fd}<>"{target}"' for fd, target in spec.fds]
    if spec.pre_exec:
        lines += ["# pre_exec"] + spec.pre_exec
    if spec.ready_socket:
        lines += ["# ready_socket", spec.ready_socket]
    return "\n".join(lines) + "\n"


def build(hypervisor: str, options: dict[str, Any]) -> RunnerSpec:
    vm = vm_config({"microvm": options, "guest": {"hostName": "web", "arch": "x86_64"}})
    return get(hypervisor).runner(vm, guest_for(hypervisor))


def compare(path: Path, actual: str) -> None:
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        if not UPDATE:
            pytest.fail(f"{path} did not exist and was written; review it and run again")
    assert actual == path.read_text(), f"{path} differs; UPDATE_GOLDEN=1 regenerates it"


def check_golden(hypervisor: str, case: str) -> RunnerSpec:
    spec = build(hypervisor, cases(hypervisor)[case])
    compare(GOLDEN / hypervisor / f"{case}.txt", render(spec))
    for name, content in spec.files.items():
        compare(GOLDEN / hypervisor / f"{case}.{Path(name).name}", content)
    return spec


def all_cases(hypervisor: str) -> list[str]:
    return list(cases(hypervisor))


# qemu: qemu-system-x86_64(1) of qemu 7.2 (-M microvm,x-option-roms=,isa-serial=,rtc=,pit=,pic=,pcie=,
# memory-backend=; -object memory-backend-memfd,id=,size=,share=on; -drive id=,format=raw,file=,if=none,
# read-only=on,cache=none + -device virtio-blk-device|pci,drive=,serial=; -netdev user,id=,hostfwd=
# tcp:HADDR:HPORT-GADDR:GPORT,guestfwd=tcp:GADDR:GPORT-cmd; -netdev tap,ifname=,script=no,downscript=no,
# queues= / fd= / fds=; -netdev bridge,br=,helper=; -device virtio-net-*,netdev=,mac=,mq=on,vectors=;
# -fsdev local,id=,path=,security_model= + -device virtio-9p-*,fsdev=,mount_tag=; -chardev socket,id=,path=
# + -device vhost-user-fs-*,chardev=,tag=; -device vhost-vsock-*,guest-cid=; -device vfio-pci,host=;
# -device qemu-xhci + usb-host,vendorid=,productid=; -device virtio-balloon-*,deflate-on-oom=,
# free-page-reporting=; -object memory-backend-ram + -device virtio-mem-pci,memdev=,requested-size=;
# -runas; -sandbox on; -qmp unix:PATH,server=on,wait=off; -chardev socket,...,logfile=,logappend=;
# -device virtio-serial-device|pci + virtconsole,chardev= / virtserialport,chardev=,name=; -drive format=
# qcow2|vpc|vhdx (docs/system/qemu-block-drivers.rst: VHD is "vpc"); -netdev tap,vhost=on; -display none +
# -vnc unix:PATH; -device pcie-root-port,id=,bus=,chassis=,slot=,addr=)
# and docs/system/i386/microvm.rst (virtio-mmio devices, pcie=on), docs/pcie.txt (root ports for hot-plug).
@pytest.mark.parametrize("case", all_cases("qemu"))
def test_qemu(case: str) -> None:
    spec = check_golden("qemu", case)
    if case == "runas-bridge":  # qemu-bridge-helper must be exec'ed, which -sandbox on forbids
        assert "-sandbox" not in spec.argv and spec.argv[spec.argv.index("-runas") + 1] == "microvm"
    elif case != "minimal":
        assert spec.argv[spec.argv.index("-sandbox") + 1] == "on"


def test_golden_files_do_not_depend_on_where_qemu_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "opt-bin" / "qemu-system-x86_64"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(binary.parent))
    assert check_golden("qemu", "minimal").argv[0] == str(binary)


# cloud-hypervisor: "Commands" help (cloud-hypervisor.github.io: --cpus boot=, --memory size=,shared=,
# hugepages=,hotplug_method=virtio-mem, --disk path=,readonly=,direct=,serial=,num_queues=,
# --net tap=|fd=[..],mac=,num_queues=, --fs tag=,socket=, --balloon size=,deflate_on_oom=,
# free_page_reporting=, --vsock cid=,socket=, --device path=, --platform oem_strings=[..], --api-socket;
# v51 release notes: --disk image_type=, backing_files=on);
# cloud-hypervisor/cloud-hypervisor docs/fs.md (shared=on), docs/macvtap-bridge.md (fd), vmm/src/config.rs (serial).
@pytest.mark.parametrize("case", all_cases("cloud-hypervisor"))
def test_cloud_hypervisor(case: str) -> None:
    check_golden("cloud-hypervisor", case)


# firecracker: firecracker-microvm/firecracker src/firecracker/swagger/firecracker.yaml
# (FullVmConfiguration: boot-source, machine-config huge_pages, drives, network-interfaces, vsock,
# balloon amount_mib/deflate_on_oom/stats_polling_interval_s, drives io_engine Async|Sync),
# src/vmm/src/resources.rs (VmmConfig "cpu-config": the path of a custom CPU template, docs/cpu_templates)
# and src/firecracker/src/main.rs (--config-file, --api-sock, --no-api).
@pytest.mark.parametrize("case", all_cases("firecracker"))
def test_firecracker(case: str) -> None:
    spec = check_golden("firecracker", case)
    config = json.loads(spec.files["share/microvm/firecracker.json"])
    assert config["drives"][0]["path_on_host"].endswith("system.erofs")  # the system image is /dev/vda
    assert spec.argv[2] == f"{RunnerSpec.RUNNER}/share/microvm/firecracker.json"


# crosvm: google/crosvm src/crosvm/cmdline.rs (RunCommand: --cpus, --mem, --serial type=stdout,hardware=,
# console,stdin, --params, --initrd, --no-balloon, --init-mem, --hugepages, --pivot-root, --socket,
# --block path=,ro=,o_direct=,id=, --net tap-name=|tap-fd=,mac=,vq-pairs=, --vsock cid=, --vfio; kernel
# positional) and docs/book/src/devices/block.md; --vhost-user type=fs,socket= as microvm.nix's
# lib/runners/crosvm.nix; --shared-dir SRC:TAG:type=p9 as src/crosvm/sys/linux/config.rs (SharedDir::from_str).
@pytest.mark.parametrize("case", all_cases("crosvm"))
def test_crosvm(case: str) -> None:
    check_golden("crosvm", case)


# kvmtool: kvmtool/kvmtool Documentation/kvmtool.1 (lkvm run --name -m -c -k -i -p -d [,ro] --console
# --balloon) and builtin-run.c (--9p dir,tag, --rng, --hugetlbfs, --vfio-pci, --vsock);
# virtio/net.c set_net_param (mode=, tapif=, guest_mac=; a tapif starting with / is opened as macvtap).
@pytest.mark.parametrize("case", all_cases("kvmtool"))
def test_kvmtool(case: str) -> None:
    check_golden("kvmtool", case)


# stratovirt: openeuler-mirror/stratovirt docs/config_guidebook.md (-machine microvm,mem-share=on, -m,
# -smp, -mem-path, -kernel/-initrd/-append, -drive id=,file=,readonly=,direct= + -device
# virtio-blk-device,drive=,serial=, -netdev tap,ifname=|fd=|fds=,queues= + -device virtio-net-device,mq=on,
# -chardev socket + vhost-user-fs-device, vhost-vsock-device,guest-cid=, virtio-balloon-device,
# deflate-on-oom=, -qmp unix:..,server,nowait, -serial stdio).
@pytest.mark.parametrize("case", all_cases("stratovirt"))
def test_stratovirt(case: str) -> None:
    check_golden("stratovirt", case)


# alioth: google/alioth README.md and alioth-cli/src/boot/boot.rs (BootArgs: run alias, --memory
# size=,backend=memfd, --num-cpu, --kernel, --initramfs, --cmd-line, --entropy, --blk, --net, --fs vu,
# --vsock vhost,cid=) with the parameter structs NetTapParam (if_name, tap, mac, mtu, queue_pairs) and
# VuFsParam (socket, tag).
@pytest.mark.parametrize("case", all_cases("alioth"))
def test_alioth(case: str) -> None:
    check_golden("alioth", case)


@pytest.mark.parametrize("hypervisor", BACKENDS)
def test_system_image_is_first_disk_and_extra_args_last(hypervisor: str) -> None:
    spec = build(hypervisor, full_options(hypervisor))
    assert spec.argv[-2:] == ["--extra", "arg"]
    text = "\n".join([*spec.argv, *spec.files.values()])
    assert text.index("system.erofs") < text.index("var.img") < text.index("data.img")


@pytest.mark.parametrize("hypervisor", BACKENDS)
def test_relative_paths_pass_through(hypervisor: str) -> None:
    """Volumes and sockets are relative to the state directory, where the hypervisor runs."""
    spec = build(hypervisor, full_options(hypervisor))
    text = "\n".join([*spec.argv, *spec.files.values()])
    assert "var.img" in text and "/var.img" not in text
    if get(hypervisor).supports(Feature.SHARE_VIRTIOFS):
        assert "web-virtiofs-home.sock" in text and "/web-virtiofs-home.sock" not in text


@pytest.mark.parametrize("hypervisor", BACKENDS)
def test_commas_in_paths_are_refused(hypervisor: str) -> None:
    from microvm.errors import MicrovmError

    options = {"hypervisor": hypervisor, "volumes": [{"image": "a,b.img", "size": 8}]}
    if hypervisor == "firecracker":  # JSON, no separators to worry about
        assert "a,b.img" in build(hypervisor, options).files["share/microvm/firecracker.json"]
        return
    with pytest.raises(MicrovmError, match="a,b.img"):
        build(hypervisor, options)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not on PATH")
@pytest.mark.parametrize("hypervisor", BACKENDS)
def test_shell_fragments_are_shellcheck_clean(hypervisor: str, tmp_path: Path) -> None:
    spec = build(hypervisor, full_options(hypervisor))
    script = tmp_path / "run.sh"
    script.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        + "".join(f'exec {fd}<>"{target}"\n' for fd, target in spec.fds)
        + "".join(line + "\n" for line in spec.pre_exec)
    )
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("hypervisor", BACKENDS)
def test_kernel_params_are_a_list(hypervisor: str) -> None:
    vm = vm_config({"microvm": {"hypervisor": hypervisor}, "guest": {"hostName": "web"}})
    params = get(hypervisor).kernel_params(vm, "kvm")
    assert isinstance(params, list) and all(isinstance(p, str) and " " not in p for p in params)


@pytest.mark.parametrize(
    "qemu, pci_probe",
    [
        ({}, False),  # the microvm machine has no PCI: the kernel skips its config space probe (and its Fatal line)
        ({"machineOpts": {"pcie": "on"}}, True),
        ({"machine": "q35"}, True),
    ],
)
def test_the_kernel_probes_pci_only_where_there_is_pci(qemu: dict[str, Any], pci_probe: bool) -> None:
    vm = vm_config({"microvm": {"hypervisor": "qemu", "qemu": qemu}, "guest": {"hostName": "web"}})
    for accel in ("kvm", "tcg"):
        assert ("initcall_blacklist=pci_arch_init" not in get("qemu").kernel_params(vm, accel)) == pci_probe
    with_device = {"devices": [{"bus": "pci", "path": "0000:01:00.0"}]}
    vm = vm_config({"microvm": {"hypervisor": "qemu", **with_device}, "guest": {"hostName": "web"}})
    assert "initcall_blacklist=pci_arch_init" not in get("qemu").kernel_params(vm, "tcg")


@pytest.mark.parametrize(
    "options, accel",
    [
        ({"mem": 256}, "tcg,tb-size=32"),  # a twelfth of the guest's memory, at least 32 MiB ...
        ({"mem": 64}, "tcg,tb-size=32"),
        ({"mem": 256, "vcpu": 2}, "tcg,tb-size=64"),  # ... 64 for several vCPUs (the cache is split among them)
        ({"mem": 1024}, "tcg,tb-size=85"),
        ({"mem": 8192}, "tcg,tb-size=256"),  # ... at most 256 MiB
        ({"mem": 256, "qemu": {"tbSize": 16}}, "tcg,tb-size=16"),
    ],
)
def test_tcg_translation_cache_is_sized_for_the_guest(options: dict[str, Any], accel: str) -> None:
    vm = vm_config({"microvm": {"hypervisor": "qemu", **options}, "guest": {"hostName": "web", "arch": "x86_64"}})
    argv = get("qemu").runner(vm, replace(guest_for("qemu"), accel="tcg")).argv
    assert argv[argv.index("-accel") + 1] == accel
    assert build("qemu", options).argv[argv.index("-accel") + 1] == "kvm"  # KVM has no translation cache


def test_a_debian_guest_gets_a_larger_translation_cache() -> None:
    vm = vm_config({"microvm": {"hypervisor": "qemu", "mem": 256}, "guest": {"hostName": "web", "base": "debian"}})
    assert tb_size(vm) == 64
    assert tb_size(vm_config({"microvm": {"mem": 2048}, "guest": {"hostName": "web", "base": "debian"}})) == 170


@pytest.mark.parametrize("case", sorted(QEMU_INTERFACES))
def test_qemu_interfaces(case: str) -> None:
    spec = build("qemu", {"hypervisor": "qemu", **QEMU_INTERFACES[case]})
    compare(GOLDEN / "qemu" / f"interfaces-{case}.txt", render(spec))
    netdevs = [spec.argv[i + 1] for i, a in enumerate(spec.argv) if a == "-netdev"]
    assert not any("vhost=on" in n for n in netdevs)  # no /dev/vhost-net needed
    assert ("-sandbox" in spec.argv) == (case != "bridge")
