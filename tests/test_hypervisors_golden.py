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
from pathlib import Path
from typing import Any

import pytest

from microvm.config import vm_config
from microvm.hypervisors import Feature, GuestArtifacts, RunnerSpec, get
from microvm.hypervisors.base import IMAGE_FEATURES

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
BINDIR = "@BINDIR@"  # stands for the host's directory of a hypervisor binary found on its PATH


def guest_for(hypervisor: str) -> GuestArtifacts:
    kernel = "vmlinux" if get(hypervisor).kernel_format == "vmlinux" else "bzImage"
    return GuestArtifacts(
        kernel=Path(f"/var/lib/microvm/store/k/{kernel}"),
        initrd=Path("/var/lib/microvm/store/i/initrd"),
        root_image=Path("/var/lib/microvm/store/s/system.erofs"),
        cmdline=["console=ttyS0", "init=/init", "quiet"],
        accel="kvm",
    )


def full_options(hypervisor: str) -> dict[str, Any]:
    """A ``microvm`` table using every option ``hypervisor`` declares."""
    has = get(hypervisor).supports
    key = hypervisor
    mv: dict[str, Any] = {"hypervisor": hypervisor, "vcpu": 2, "mem": 1024}
    mv["volumes"] = [
        {
            "image": "var.img",
            "mountPoint": "/var",
            "size": 1024,
            **({"serial": "var-disk"} if has(Feature.VOLUME_SERIAL) else {}),
            **({"direct": True} if has(Feature.DIRECT_IO) else {}),
        },
        {"image": "data.img", "mountPoint": "/data", "size": 64, "readOnly": has(Feature.READ_ONLY_VOLUMES)},
    ]
    ifaces = [{"type": "tap", "id": "vm-web", "mac": "02:00:00:00:00:01"}]
    if has(Feature.MACVTAP):
        ifaces.append(
            {
                "type": "macvtap",
                "id": "vm-web-mv",
                "mac": "02:00:00:00:00:02",
                "macvtap": {"link": "eth0", "mode": "bridge"},
            }
        )
    if has(Feature.USER_NETWORK):
        ifaces.append({"type": "user", "id": "vm-web-user", "mac": "02:00:00:00:00:03"})
    mv["interfaces"] = ifaces
    shares = []
    if has(Feature.SHARE_VIRTIOFS):
        shares.append({"tag": "home", "source": "/home", "mountPoint": "/home", "proto": "virtiofs"})
    if has(Feature.SHARE_9P):
        shares.append({"tag": "srv", "source": "srv-data", "mountPoint": "/srv", "proto": "9p"})
    mv["shares"] = shares
    if has(Feature.BALLOON):
        mv |= {"balloon": True, "deflateOnOOM": False}
    if has(Feature.INITIAL_BALLOON):
        mv["initialBalloonMem"] = 128
    if has(Feature.VIRTIO_MEM):
        mv |= {"hotplugMem": 2048, "hotpluggedMem": 512}
    if has(Feature.VSOCK):
        mv["vsock"] = {"cid": 5}
    if has(Feature.PCI_DEVICES):
        mv["devices"] = [{"bus": "pci", "path": "0000:01:00.0"}]
    if has(Feature.NOTIFY_READINESS):
        mv["readiness"] = True
    mv[key] = {"extraArgs": ["--extra", "arg"]}
    if hypervisor == "crosvm":
        mv[key]["pivotRoot"] = "/var/empty"
    if hypervisor == "firecracker":
        mv[key]["extraConfig"] = {
            "machine-config": {"track_dirty_pages": True},
            "logger": {"log_path": "firecracker.log", "level": "Info"},
        }
    return mv


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
# lib/runners/crosvm.nix.
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


BACKENDS = ["cloud-hypervisor", "firecracker", "crosvm", "kvmtool", "stratovirt", "alioth"]


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


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not on PATH")
@pytest.mark.parametrize("hypervisor", BACKENDS)
def test_whole_run_script_is_shellcheck_clean(hypervisor: str, tmp_path: Path) -> None:
    from microvm.runner.script import run_script

    options = full_options(hypervisor)
    vm = vm_config({"microvm": options, "guest": {"hostName": "web", "arch": "x86_64"}})
    spec = get(hypervisor).runner(vm, guest_for(hypervisor))
    script = tmp_path / "microvm-run"
    script.write_text(run_script(vm, get(hypervisor), spec, Path("/var/lib/microvm/runners/web")))
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


# qemu interfaces: qemu-system-x86_64(1) for 7.2: "-netdev tap,id=id[,fd=h][,fds=x:y:...:z][,ifname=name]
# [,script=file][,downscript=dfile][,vhost=on|off][,queues=n]", "-netdev bridge,id=id[,br=bridge][,helper=helper]",
# "-netdev user,id=id[,hostfwd=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport][,guestfwd=...]";
# docs/system/devices/net.rst; multi-queue virtio-net: "-device virtio-net-pci,mq=on,vectors=2*N+2" with
# "queues=N" on the netdev (qemu's docs/devel/multiqueue / linux-kvm.org Multiqueue). No vhost=on: vhost-net
# is optional, qemu falls back to its own backend. -sandbox on is left out with a bridge: it forbids the
# exec of qemu-bridge-helper.
QEMU_INTERFACES = {
    "tap": {"vcpu": 1, "interfaces": [{"type": "tap", "id": "vm1", "mac": "02:00:00:01:00:01"}]},
    "tap-multiqueue": {"vcpu": 2, "interfaces": [{"type": "tap", "id": "vm1", "mac": "02:00:00:01:00:01"}]},
    "macvtap": {
        "vcpu": 1,
        "interfaces": [
            {
                "type": "macvtap",
                "id": "mv-a",
                "mac": "02:00:00:00:00:0a",
                "macvtap": {"link": "eth0", "mode": "bridge"},
            },
        ],
    },
    "macvtap-multiqueue": {
        "vcpu": 2,
        "interfaces": [
            {
                "type": "macvtap",
                "id": "mv-a",
                "mac": "02:00:00:00:00:0a",
                "macvtap": {"link": "eth0", "mode": "bridge"},
            },
            {"type": "macvtap", "id": "mv-b", "mac": "02:00:00:00:00:0b", "macvtap": {"link": "eth0", "mode": "vepa"}},
        ],
    },
    "bridge": {
        "interfaces": [{"type": "bridge", "id": "vm-br", "mac": "02:00:00:00:00:0c", "bridge": "br0"}],
    },
    "user-forward": {
        "interfaces": [{"type": "user", "id": "usr", "mac": "02:00:00:00:00:0d"}],
        "forwardPorts": [
            {"from": "host", "host": {"address": "127.0.0.1", "port": 8022}, "guest": {"port": 22}},
            {"from": "guest", "proto": "tcp", "host": {"port": 3000}, "guest": {"address": "10.0.2.100", "port": 80}},
        ],
    },
}


@pytest.mark.parametrize("case", sorted(QEMU_INTERFACES))
def test_qemu_interfaces(case: str) -> None:
    spec = build("qemu", {"hypervisor": "qemu", **QEMU_INTERFACES[case]})
    compare(GOLDEN / "qemu" / f"interfaces-{case}.txt", render(spec))
    netdevs = [spec.argv[i + 1] for i, a in enumerate(spec.argv) if a == "-netdev"]
    assert not any("vhost=on" in n for n in netdevs)  # no /dev/vhost-net needed
    assert ("-sandbox" in spec.argv) == (case != "bridge")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not on PATH")
def test_qemu_macvtap_run_script_is_shellcheck_clean(tmp_path: Path) -> None:
    from microvm.runner.script import run_script

    vm = vm_config({"microvm": QEMU_INTERFACES["macvtap-multiqueue"], "guest": {"hostName": "web", "arch": "x86_64"}})
    spec = get("qemu").runner(vm, guest_for("qemu"))
    script = tmp_path / "microvm-run"
    script.write_text(run_script(vm, get("qemu"), spec, Path("/var/lib/microvm/runners/web")))
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    # every queue of every macvtap is a descriptor qemu gets, and the runner opens
    assert 'exec 10<>"/dev/tap$(cat /sys/class/net/mv-a/ifindex)"' in script.read_text()
    assert "fds=12:13" in " ".join(spec.argv)
