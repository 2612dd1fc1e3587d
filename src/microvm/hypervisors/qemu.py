"""qemu: every option microvm has, on the microvm, q35 and virt machines.

Syntax follows qemu 7.2's documentation (qemu-system-x86_64(1), docs/system/
i386/microvm.rst, docs/interop/qmp-spec). The console is a unix socket with a
log file (``<name>-console.sock`` / ``.log``) so that a VM run by systemd can
be attached to (``microvm console``) and a foreground run loses nothing.
Control is QMP on ``microvm.socket`` through the ``qemu.qmp`` package.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..layout import READINESS_PORT, ROOT_SERIAL
from ..model.problems import Problem
from .base import Balloon, Feature, GuestArtifacts, Hypervisor, Migrate, Migration, RunnerSpec
from .common import open_macvtap

if TYPE_CHECKING:
    from ..model.options import Interface, VMConfig

BINARIES = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
# The machine types of one architecture that qemu-system of another does not have.
MACHINES = {"x86_64": ("microvm", "q35", "pc"), "aarch64": ("virt",)}
BRIDGE_HELPER = "/usr/lib/qemu/qemu-bridge-helper"


# TCG's translation cache, in MiB, when microvm.qemu.tbSize does not say: a twelfth of the guest's memory
# within these bounds. Measured by hand on a 1-vCPU 256 MB busybox guest only (docs/benchmarks.md): a boot
# fills 48 MiB of qemu's default 1 GiB cache, and boots about as fast with 32; smaller caches were slower
# (TCG translates again after each flush of a full cache). A Debian guest runs far more code, and
# multi-threaded TCG hands the cache out to the vCPU threads in regions: not measured, so they get twice
# the floor.
TB_SIZE_MIN, TB_SIZE_MAX = 32, 256


def tb_size(vm: VMConfig) -> int:
    floor = 2 * TB_SIZE_MIN if vm.guest.base == "debian" or vm.microvm.vcpu > 1 else TB_SIZE_MIN
    return vm.microvm.qemu.tbSize or min(TB_SIZE_MAX, max(floor, vm.microvm.mem // 12))


def console_socket(vm: VMConfig) -> str:
    return f"{vm.guest.hostName}-console.sock"


def console_log(vm: VMConfig) -> str:
    return f"{vm.guest.hostName}-console.log"


def ready_socket(vm: VMConfig) -> str:
    return f"{vm.guest.hostName}-ready.sock"


def vnc_socket(vm: VMConfig) -> str:
    """Where a headless display (graphics.backend) is served, relative to the state directory."""
    return f"{vm.guest.hostName}-vnc.sock"


# qemu's (and qemu-img's) block driver of each microvm.volumes[].imageType (qemu calls VHD "vpc")
IMAGE_FORMATS = {"raw": "raw", "qcow2": "qcow2", "vhd": "vpc", "vhdx": "vhdx"}


def _emulated_cpu(vm: VMConfig) -> str:
    """The CPU model under TCG: everything qemu emulates, less what only makes emulation slower.

    With ERMS the kernel clears and copies pages with ``rep stosb``/``rep movsb``, and TCG runs each
    iteration of a ``rep`` on its own: a byte at a time against eight with ``rep stosq``. No program
    needs ERMS; it is a hint that byte-wise string instructions are fast, which here they are not.
    """
    return "max,-erms" if vm.guest.arch == "x86_64" else "max"


def _escape(value: object) -> str:
    """A value inside qemu's ``key=value,...`` syntax, where ``,,`` stands for a comma of the value."""
    return str(value).replace(",", ",,")


def _opts(head: str, **options: object) -> str:
    """``head,key=value,...`` skipping None; True/False as on/off; ``_`` in keys becomes ``-``; commas escaped."""
    parts = [head]
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "on" if value else "off"
        parts.append(f"{key.replace('_', '-')}={_escape(value)}")
    return ",".join(parts)


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """The host's TSC rate in kHz, which TCG guests see as their own (2.6 GHz when it cannot be told).

    The nominal rate in the CPU's model name is the TSC's on Intel; else the kernel's ``cpu MHz``
    when the kernel was told the TSC rate (``tsc_known_freq``, as on virtual machines): elsewhere
    ``cpu MHz`` follows frequency scaling, and a runner must not change with it.
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return 2600000
    if m := re.search(r"^model name\s*:.*@\s*([0-9.]+)\s*GHz", text, re.MULTILINE):
        return round(float(m.group(1)) * 1_000_000)
    known = re.search(r"^flags\s*:.*\btsc_known_freq\b", text, re.MULTILINE)
    if known and (m := re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.MULTILINE)):
        return round(float(m.group(1)) * 1000)
    return 2600000


class Backend(Hypervisor, Balloon, Migrate):
    name = "qemu"
    binary = "qemu-system-x86_64"
    features = frozenset(Feature) - {Feature.INITIAL_BALLOON}
    kernel_format = "bzImage"
    console = "ttyS0"
    control_api = "QMP (`system_powerdown`)"

    def check(self, vm: VMConfig) -> Iterator[Problem]:
        yield from super().check(vm)
        arch, machine = vm.guest.arch, vm.microvm.qemu.machine
        for other, machines in MACHINES.items():
            if other != arch and machine in machines:
                yield Problem(
                    ("microvm", "qemu", "machine"),
                    f"qemu's {machine!r} machine is {other} only; {arch} guests run on "
                    + " or ".join(map(repr, MACHINES[str(arch)])),
                    hint=f"remove microvm.qemu.machine or set it to {MACHINES[str(arch)][0]!r}",
                )
        if vm.microvm.qemu.pcieRootPorts and machine == "pc":
            yield Problem(
                ("microvm", "qemu", "pcieRootPorts"),
                "qemu's 'pc' machine has no PCI Express for root ports (its PCI bus hot-plugs devices itself)",
                hint='set microvm.qemu.machine = "q35", or remove microvm.qemu.pcieRootPorts',
            )
        if vm.microvm.mem == 2048:
            yield Problem(
                ("microvm", "mem"),
                "qemu is known to hang with exactly 2048 MB of RAM",
                "warning",
                hint="use 2047 or 2049",
            )

    # --- the machine -------------------------------------------------------------

    @staticmethod
    def needs_pci(vm: VMConfig) -> bool:
        """PCI only when a device needs it: it costs boot time on the microvm machine."""
        mv = vm.microvm
        multi_queue = mv.vcpu > 1 and any(i.type in ("tap", "macvtap") for i in mv.interfaces)
        wants_pci = mv.devices or mv.hotplugMem or mv.graphics.enable or mv.qemu.pcieRootPorts or multi_queue
        return bool(wants_pci) or mv.qemu.machine != "microvm"

    def _device(self, vm: VMConfig, kind: str) -> str:
        """virtio-X-device on the microvm machine's mmio bus, virtio-X-pci elsewhere or when PCI is on."""
        return f"virtio-{kind}-pci" if self.needs_pci(vm) else f"virtio-{kind}-device"

    def kernel_params(self, vm: VMConfig, accel: str) -> list[str]:
        params: list[str] = []
        if (
            vm.guest.arch == "x86_64"
            and not self.needs_pci(vm)
            and (vm.microvm.qemu.machineOpts or {}).get("pcie") != "on"
        ):
            # The microvm machine without PCI: an x86 kernel with PCI built in probes for a way to reach PCI
            # config space in its pci_arch_init, finds none and prints "PCI: Fatal: No config space access
            # function found" at KERN_ERR, which `quiet` still shows (and `pci=off` does not avoid: it only
            # turns the probes off, the message comes after them). Without that initcall the kernel only
            # prints "PCI: System does not support PCI" at KERN_WARNING (pcibios_init), which `quiet` hides.
            params.append("initcall_blacklist=pci_arch_init")
        if accel != "tcg":
            return params

        if vm.guest.arch == "x86_64":
            # TSC calibration can hang under TCG, where the guest's TSC is the host's: give its rate, so
            # that the guest's clock and sleeps run in real time.
            params.append(f"tsc_early_khz={host_tsc_khz()}")
        # TCG does not speculate: the guest's mitigations against speculative-execution attacks
        # protect nothing there and only cost time.
        return [*params, "mitigations=off"]

    def console_device(self, vm: VMConfig) -> str:
        if not vm.microvm.qemu.serialConsole:
            return "hvc0"  # the virtconsole
        return "ttyAMA0" if vm.guest.arch == "aarch64" else "ttyS0"  # the virt machine's PL011

    def console_socket(self, vm: VMConfig) -> tuple[str, str]:
        return console_socket(vm), console_log(vm)

    def guest_modules(self, vm: VMConfig) -> list[str]:
        modules = ["virtio_mmio"]
        if vm.microvm.qemu.machine != "microvm" or self.needs_pci(vm):
            modules.append("virtio_pci")
        if self._virtio_serial(vm):
            modules.append("virtio_console")
        return modules

    @staticmethod
    def _virtio_serial(vm: VMConfig) -> bool:
        """Whether the VM has a virtio-serial device: for the console (serialConsole off) or the readiness port."""
        return not vm.microvm.qemu.serialConsole or vm.microvm.readiness

    def _machine(self, vm: VMConfig, guest: GuestArtifacts, shared_memory: bool) -> list[str]:
        mv = vm.microvm
        machine = mv.qemu.machine or "microvm"
        if mv.qemu.machineOpts is not None:
            opts = dict(mv.qemu.machineOpts)
        elif machine == "microvm":
            # ACPI stays on: the kernel finds the virtio-mmio devices and the power button through it.
            opts = {"x-option-roms": "off", "isa-serial": "on", "rtc": "on", "pit": "off", "pic": "off"}
            if self.needs_pci(vm):
                opts["pcie"] = "on"
        else:
            opts = {}
        if shared_memory:
            opts["memory-backend"] = "mem"
        args = ["-M", ",".join([machine, *(f"{k}={_escape(v)}" for k, v in opts.items())])]
        args += ["-accel", f"tcg,tb-size={tb_size(vm)}" if guest.accel == "tcg" else guest.accel]
        cpu = mv.cpu or ("host" if guest.accel == "kvm" else _emulated_cpu(vm))
        args += ["-cpu", cpu, "-smp", str(mv.vcpu)]
        return args

    def _memory(self, vm: VMConfig, shared_memory: bool) -> list[str]:
        mv = vm.microvm
        size = f"{mv.mem}M"
        args = ["-m", f"{size},slots=1,maxmem={mv.mem + mv.hotplugMem}M" if mv.hotplugMem else size]
        if shared_memory:
            backend = "memory-backend-file" if mv.hugepageMem else "memory-backend-memfd"
            extra = {"mem_path": "/dev/hugepages"} if mv.hugepageMem else {}
            args += ["-object", _opts(backend, id="mem", size=size, share=True, **extra)]
        if mv.hotplugMem:
            args += [
                "-object",
                _opts("memory-backend-ram", id="hotplug", size=f"{mv.hotplugMem}M"),
                "-device",
                _opts("virtio-mem-pci", id="virtio-mem", memdev="hotplug", requested_size=f"{mv.hotpluggedMem}M"),
            ]
        if mv.balloon:
            args += [
                "-device",
                _opts(
                    self._device(vm, "balloon"), id="balloon", deflate_on_oom=mv.deflateOnOOM, free_page_reporting=True
                ),
            ]
        return args

    # --- devices -------------------------------------------------------------------

    def _disks(self, vm: VMConfig, guest: GuestArtifacts) -> list[str]:

        args: list[str] = []
        device = self._device(vm, "blk")
        if guest.root_image is not None:
            args += [
                "-drive",
                _opts("id=root", format="raw", file=guest.root_image, read_only=True, **{"if": "none"}),
                "-device",
                _opts(device, drive="root", serial=ROOT_SERIAL),
            ]
        for i, volume in enumerate(vm.microvm.volumes):
            drive = f"vol{i}"
            args += [
                "-drive",
                _opts(
                    f"id={drive}",
                    format=IMAGE_FORMATS[volume.imageType],
                    file=volume.image,
                    read_only=volume.readOnly or None,
                    cache="none" if volume.direct else None,
                    **{"if": "none"},
                ),
                "-device",
                _opts(device, drive=drive, serial=volume.serial),
            ]
        return args

    def _interface(self, vm: VMConfig, iface: Interface, spec: RunnerSpec) -> list[str]:
        mv = vm.microvm
        queues = mv.vcpu if mv.vcpu > 1 and iface.type in ("tap", "macvtap") else None
        netdev: str
        if iface.type == "user":
            forwards = [
                f"hostfwd={p.proto}:{p.host.address}:{p.host.port}-{p.guest.address}:{p.guest.port}"
                for p in mv.forwardPorts
                if p.from_ == "host"
            ] + [
                f"guestfwd={p.proto}:{p.guest.address or '10.0.2.100'}:{p.guest.port}-"
                f"{p.proto}:{p.host.address or '127.0.0.1'}:{p.host.port}"
                for p in mv.forwardPorts
                if p.from_ == "guest"
            ]
            netdev = ",".join([f"user,id={iface.id}", *forwards])
        elif iface.type == "tap":
            netdev = _opts(
                f"tap,id={iface.id}",
                ifname=iface.id,
                script="no",
                downscript="no",
                queues=queues,
                vhost=iface.tap.vhost or None,
            )
        elif iface.type == "macvtap":
            # one descriptor per queue, opened by the runner on the macvtap's /dev/tapN
            fds = open_macvtap(spec, iface, queues or 1)
            netdev = f"tap,id={iface.id}," + (f"fds={':'.join(map(str, fds))}" if queues else f"fd={fds[0]}")
        else:
            netdev = _opts(f"bridge,id={iface.id}", br=iface.bridge, helper=BRIDGE_HELPER)
        device_opts = {"netdev": iface.id, "mac": iface.mac}
        if queues:
            device_opts |= {"mq": True, "vectors": 2 * queues + 2}
        return ["-netdev", netdev, "-device", _opts(self._device(vm, "net"), **device_opts)]

    def _shares(self, vm: VMConfig) -> list[str]:
        args: list[str] = []
        for i, share in enumerate(vm.microvm.shares):
            if share.proto == "9p":
                # -fsdev and virtio-9p take security_model and mount_tag with underscores
                readonly = ",readonly=on" if share.readOnly else ""
                args += [
                    "-fsdev",
                    f"local,id=fs{i},path={_escape(share.source)},security_model={share.securityModel}{readonly}",
                    "-device",
                    f"{self._device(vm, '9p')},fsdev=fs{i},mount_tag={share.tag}",
                ]
            else:
                device = "vhost-user-fs-pci" if self.needs_pci(vm) else "vhost-user-fs-device"
                args += [
                    "-chardev",
                    _opts(f"socket,id=fs{i}", path=share.socket),
                    "-device",
                    _opts(device, chardev=f"fs{i}", tag=share.tag),
                ]
        return args

    def _passthrough(self, vm: VMConfig) -> list[str]:
        args: list[str] = []
        for port in vm.microvm.qemu.pcieRootPorts:  # before the devices, which may be placed on them
            args += [
                "-device",
                _opts(
                    f"pcie-root-port,id={port.id}", bus=port.bus, chassis=port.chassis, slot=port.slot, addr=port.addr
                ),
            ]
        if any(d.bus == "usb" for d in vm.microvm.devices):
            args += ["-device", "qemu-xhci"]
        for device in vm.microvm.devices:
            head = f"vfio-pci,host={device.path}" if device.bus == "pci" else f"usb-host,{device.path}"
            extra = device.qemu.deviceExtraArgs
            args += ["-device", f"{head},{extra}" if extra else head]
        return args

    @staticmethod
    def _display(vm: VMConfig) -> list[str]:
        """A gtk window, or (headless) no window and the display on a VNC unix socket."""
        graphics = vm.microvm.graphics
        if graphics.enable and graphics.backend == "gtk":
            return ["-display", "gtk,gl=off"]
        headless = ["-vnc", f"unix:{_escape(vnc_socket(vm))}"] if graphics.enable else []
        return ["-display", "none", *headless]

    # --- the runner ----------------------------------------------------------------

    def runner(self, vm: VMConfig, guest: GuestArtifacts) -> RunnerSpec:
        mv = vm.microvm
        binary = shutil.which(BINARIES[vm.guest.arch]) or f"/usr/bin/{BINARIES[vm.guest.arch]}"
        shared_memory = any(s.proto == "virtiofs" for s in mv.shares) or mv.hugepageMem
        name = vm.guest.hostName
        spec = RunnerSpec(argv=[binary])
        argv = spec.argv
        argv += ["-name", f"{name},process=microvm@{name}" if mv.prettyProcnames else name]
        argv += self._machine(vm, guest, shared_memory)
        argv += self._memory(vm, shared_memory)
        argv += ["-nodefaults", "-no-user-config", "-no-reboot"]
        argv += self._display(vm)
        if mv.user:
            argv += ["-runas", mv.user]
        if not any(i.type == "bridge" for i in mv.interfaces):
            argv += ["-sandbox", "on"]  # the bridge helper must be exec'ed, which the sandbox forbids
        argv += ["-kernel", str(guest.kernel)]
        if guest.initrd is not None:
            argv += ["-initrd", str(guest.initrd)]
        argv += ["-append", " ".join(guest.cmdline)]
        if mv.qemu.machine == "microvm":
            # vhost-user-fs and the virtio keyboard need non-legacy virtio-mmio
            argv += ["-global", "virtio-mmio.force-legacy=false"]
        argv += [
            "-chardev",
            _opts(
                "socket,id=console",
                path=console_socket(vm),
                server=True,
                wait=False,
                logfile=console_log(vm),
                logappend=True,  # the runner empties it when the guest boots afresh
            ),
        ]
        if self._virtio_serial(vm):
            argv += ["-device", self._device(vm, "serial")]
        argv += ["-serial", "chardev:console"] if mv.qemu.serialConsole else ["-device", "virtconsole,chardev=console"]
        if mv.readiness:
            spec.ready_socket = ready_socket(vm)
            argv += [
                "-chardev",
                _opts("socket,id=ready", path=spec.ready_socket, server=True, wait=False),
                "-device",
                _opts("virtserialport,chardev=ready", name=READINESS_PORT),
            ]
        if mv.socket:
            argv += ["-qmp", f"unix:{_escape(mv.socket)},server=on,wait=off"]
        argv += self._disks(vm, guest)
        for iface in mv.interfaces:
            argv += self._interface(vm, iface, spec)
        argv += self._shares(vm)
        if mv.vsock.cid is not None:
            argv += [
                "-device",
                _opts(f"vhost-vsock-{'pci' if self.needs_pci(vm) else 'device'}", guest_cid=mv.vsock.cid),
            ]
        argv += self._passthrough(vm)
        if mv.graphics.enable:
            argv += [
                "-device",
                "virtio-gpu-pci",
                "-device",
                "virtio-keyboard-pci",
                "-device",
                "virtio-tablet-pci",
            ]
        argv += mv.qemu.extraArgs
        return spec

    # --- control -------------------------------------------------------------------
    # QMP's client and asyncio load only here (.qemu_qmp): building, checking and running a VM never speak
    # QMP, and their start-up is what people wait for.

    def fault(self, socket: Path) -> str | None:
        """QMP's run state: a guest that qemu stopped for good (an error, a panic, shut down but kept,
        migrated away) is not running even though qemu is."""
        from . import qemu_qmp  # late on purpose: see above

        return qemu_qmp.fault(socket)

    def request_shutdown(self, socket: Path) -> None:
        from . import qemu_qmp  # late on purpose: see above

        qemu_qmp.run(qemu_qmp.request_shutdown(socket))

    def stop_hard(self, socket: Path, pid: int) -> None:
        from . import qmp  # late on purpose: see above

        qmp.execute(socket, "quit")

    def balloon(self, socket: Path, size_mb: int, mem_mb: int) -> int:
        """qemu's balloon command takes the guest's target memory, not the balloon size."""
        from . import qemu_qmp  # late on purpose: see above

        actual = qemu_qmp.run(qemu_qmp.balloon(socket, (mem_mb - size_mb) * qemu_qmp.MiB))
        return mem_mb - actual // qemu_qmp.MiB

    def suspend(self, socket: Path, state: Path) -> None:
        from . import qemu_qmp  # late on purpose: see above

        qemu_qmp.run(qemu_qmp.suspend(socket, state))

    def resume_args(self, fd: int) -> list[str]:
        return ["-incoming", f"fd:{fd}"]

    def finish_resume(self, socket: Path, alive: Callable[[], bool], loaded: Callable[[], None]) -> bool:
        from . import qemu_qmp  # late on purpose: see above

        return qemu_qmp.run(qemu_qmp.finish_resume(socket, alive, loaded))

    def migrate(self, socket: Path, fd: int) -> Migration:
        from . import qemu_qmp  # late on purpose: see above

        return qemu_qmp.run(qemu_qmp.migrate(socket, fd))

    def continue_here(self, socket: Path) -> None:
        from . import qemu_qmp  # late on purpose: see above

        qemu_qmp.run(qemu_qmp.continue_(socket))
