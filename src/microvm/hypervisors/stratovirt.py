"""StratoVirt: QEMU-like options on the virtio-mmio ``microvm`` machine, QMP control.

Follows StratoVirt's ``docs/config_guidebook.md`` (``-machine``, ``-m``,
``-smp``, ``-kernel``/``-initrd``/``-append``, ``-drive`` +
``virtio-blk-device``, ``-netdev tap`` + ``virtio-net-device``,
``vhost-user-fs-device``, ``vhost-vsock-device``, ``virtio-balloon-device``,
``-mem-path``, ``-serial``, ``-qmp``) and ``docs/qmp.md`` (``balloon``,
``query-balloon``, ``system_powerdown``, ``quit``)
(docs/research/hypervisors.md section 5). PCI pass-through needs the
standard machine with firmware, which microvm.nix reports as non-functional,
so it is not offered.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MicrovmError
from .base import Balloon, Feature, GuestArtifacts, Hypervisor, RunnerSpec
from .common import MIB, cmdline, disks, on_off, open_macvtap, plain, remove_stale_socket

if TYPE_CHECKING:
    from ..model.options import VMConfig

log = logging.getLogger("microvm.hypervisors.stratovirt")
HUGETLBFS = "/dev/hugepages"
MAX_QUEUES = 16


class Backend(Hypervisor, Balloon):
    name = "stratovirt"
    binary = "stratovirt"
    features = frozenset(
        {
            Feature.SHARE_VIRTIOFS,
            Feature.CONTROL_SOCKET,
            Feature.TAP,
            Feature.MACVTAP,
            Feature.MULTI_QUEUE_TAP,
            Feature.BALLOON,
            Feature.HUGEPAGES,
            Feature.VSOCK,
            Feature.READ_ONLY_VOLUMES,
            Feature.VOLUME_SERIAL,
            Feature.DIRECT_IO,
        }
    )
    kernel_format = "bzImage"
    transport_modules = ("virtio_mmio",)
    console = "ttyS0"
    guest_kernel_params = ("edd=off", "reboot=t")  # as microvm.nix: no BIOS disk probing; reboot ends the process
    min_mem = 128  # the guidebook's lower bound for -m
    incompatible = ((Feature.BALLOON, Feature.HUGEPAGES, "config_guidebook.md"),)
    plain_options = ("socket", "disk image", "volume serial", "virtiofs socket")
    control_api = "QMP (`system_powerdown`, else `quit`)"

    def runner(self, vm: VMConfig, guest: GuestArtifacts) -> RunnerSpec:
        mv = vm.microvm
        machine = "virt" if vm.guest.arch == "aarch64" else "microvm"
        if any(s.proto == "virtiofs" for s in mv.shares):
            machine += ",mem-share=on"  # vhost-user devices map guest memory
        spec = RunnerSpec(argv=[self.binary, "-name", vm.guest.hostName, "-machine", machine])
        argv = spec.argv
        argv += ["-m", str(mv.mem), "-smp", str(mv.vcpu)]
        if mv.hugepageMem:
            argv += ["-mem-path", HUGETLBFS]
        argv += ["-kernel", str(guest.kernel)]
        if guest.initrd is not None:
            argv += ["-initrd", str(guest.initrd)]
        argv += ["-append", cmdline(guest), "-serial", "stdio"]
        if mv.socket:
            argv += ["-qmp", f"unix:{plain(mv.socket, 'socket', self.name)},server,nowait"]
            spec.pre_exec.append(remove_stale_socket(mv.socket))
        argv += ["-object", "rng-random,id=rng0,filename=/dev/random", "-device", "virtio-rng-device,rng=rng0,id=rng0"]
        for disk in disks(vm, guest):
            argv += [
                "-drive",
                (
                    f"id={disk.name},file={plain(disk.path, 'disk image', self.name)},if=none,format=raw,"
                    f"readonly={on_off(disk.read_only)},direct={on_off(disk.direct)}"
                ),
                "-device",
                f"virtio-blk-device,drive={disk.name},id=blk_{disk.name}"
                + (f",serial={plain(disk.serial, 'volume serial', self.name)}" if disk.serial else ""),
            ]
        queues = min(mv.vcpu, MAX_QUEUES)
        for iface in mv.interfaces:
            if iface.type == "tap":
                netdev = f"tap,id={iface.id},ifname={iface.id}"
            else:
                fds = open_macvtap(spec, iface, queues)
                netdev = f"tap,id={iface.id}," + (f"fds={':'.join(map(str, fds))}" if queues > 1 else f"fd={fds[0]}")
            if queues > 1:
                netdev += f",queues={queues}"
            device = f"virtio-net-device,netdev={iface.id},id=net_{iface.id},mac={iface.mac}"
            argv += ["-netdev", netdev, "-device", device + (",mq=on" if queues > 1 else "")]
        for i, share in enumerate(mv.shares):
            argv += [
                "-chardev",
                f"socket,id=fs{i},path={plain(str(share.socket), 'virtiofs socket', self.name)}",
                "-device",
                f"vhost-user-fs-device,id=fs{i},chardev=fs{i},tag={share.tag}",
            ]
        if mv.vsock.cid is not None:
            argv += ["-device", f"vhost-vsock-device,id=vsock0,guest-cid={mv.vsock.cid}"]
        if mv.balloon:
            argv += ["-device", f"virtio-balloon-device,id=balloon0,deflate-on-oom={str(mv.deflateOnOOM).lower()}"]
        argv += mv.stratovirt.extraArgs
        return spec

    # --- control: QMP (docs/qmp.md) --------------------------------------------------------
    # .qmp (and asyncio with it) loads only here: building, checking and running a VM never speak QMP.

    def request_shutdown(self, socket: Path) -> None:
        from . import qmp  # late on purpose: see above

        try:
            qmp.execute(socket, "system_powerdown")
        except qmp.CommandError as exc:
            # the microvm machine has no ACPI power button on every version (microvm.nix)
            log.warning("stratovirt refused system_powerdown (%s); quitting instead", exc)
            qmp.execute(socket, "quit")

    def stop_hard(self, socket: Path, pid: int) -> None:
        from . import qmp  # late on purpose: see above

        try:
            qmp.execute(socket, "quit")
        except MicrovmError:
            super().stop_hard(socket, pid)

    def balloon(self, socket: Path, size_mb: int, mem_mb: int) -> int:
        """QMP's ``balloon`` takes the guest's target memory, not the balloon size."""
        from . import qmp  # late on purpose: see above

        qmp.execute(socket, "balloon", {"value": (mem_mb - size_mb) * MIB})
        actual = qmp.execute(socket, "query-balloon")["actual"]
        return mem_mb - int(actual) // MIB
