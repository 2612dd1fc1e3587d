"""kvmtool (`lkvm run`): 9p, user networking, no control API.

Follows kvmtool's ``Documentation/kvmtool.1`` (``-k -i -p -c -m -d --console
--balloon``, ``lkvm balloon``, ``lkvm stop``), ``builtin-run.c`` (``--9p``,
``--hugetlbfs``, ``--vfio-pci``, ``--vsock``, ``--rng``) and
``virtio/net.c`` (``-n mode=,tapif=,guest_mac=``; a ``tapif`` starting with
``/`` is opened as a macvtap device; taps are opened single-queue)
(docs/research/hypervisors.md section 4).

lkvm keeps an instance socket in ``$HOME/.lkvm/<name>.sock``; the runner sets
HOME to the state directory, as microvm.nix does. It is not an API for a
graceful shutdown (``lkvm stop`` kills the guest), and its balloon is changed
only relatively and cannot be read back (``lkvm balloon --inflate MB``), so
the backend has no control side: the VM is stopped with a signal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..model.problems import Problem
from .base import Feature, GuestArtifacts, Hypervisor, RunnerSpec
from .common import cmdline, disks, open_macvtap, plain

if TYPE_CHECKING:
    from ..model.options import VMConfig

HUGETLBFS = "/dev/hugepages"


class Backend(Hypervisor):
    name = "kvmtool"
    binary = "lkvm"
    features = frozenset(
        {
            Feature.SHARE_9P,
            Feature.USER_NETWORK,
            Feature.TAP,
            Feature.MACVTAP,
            Feature.BALLOON,
            Feature.HUGEPAGES,
            Feature.VSOCK,
            Feature.PCI_DEVICES,
            Feature.READ_ONLY_VOLUMES,
            Feature.DIRECT_IO,
        }
    )
    kernel_format = "bzImage"
    transport_modules = ("virtio_pci",)
    console = "ttyS0"
    guest_kernel_params = ("reboot=k",)  # as microvm.nix: a guest reboot ends the process
    plain_options = ("disk image", "share source")

    def check(self, vm: VMConfig) -> Iterator[Problem]:
        yield from super().check(vm)
        for i, share in enumerate(vm.microvm.shares):
            if share.readOnly:
                yield Problem(
                    ("microvm", "shares", i, "readOnly"),
                    f"kvmtool cannot share {share.source} read-only (its 9p has no read-only mode)",
                    hint="drop readOnly, or use a read-only volume",
                )

    def runner(self, vm: VMConfig, guest: GuestArtifacts) -> RunnerSpec:
        mv = vm.microvm
        spec = RunnerSpec(argv=[self.binary, "run", "--name", vm.guest.hostName, "-m", str(mv.mem), "-c", str(mv.vcpu)])
        # lkvm puts its instance socket under $HOME/.lkvm
        spec.pre_exec.append('export HOME="$PWD"')
        argv = spec.argv
        argv += ["--console", "serial", "--rng", "-k", str(guest.kernel)]
        if guest.initrd is not None:
            argv += ["-i", str(guest.initrd)]
        argv += ["-p", cmdline(guest)]
        if mv.hugepageMem:
            argv += ["--hugetlbfs", HUGETLBFS]
        for disk in disks(vm, guest):
            suffix = (",direct" if disk.direct else "") + (",ro" if disk.read_only else "")
            argv += ["-d", plain(disk.path, "disk image", self.name) + suffix]
        if mv.balloon:
            argv.append("--balloon")
        for share in mv.shares:
            argv += ["--9p", f"{plain(share.source, 'share source', self.name)},{share.tag}"]
        for iface in mv.interfaces:
            if iface.type == "user":
                argv += ["-n", f"mode=user,guest_mac={iface.mac}"]
            elif iface.type == "tap":
                argv += ["-n", f"mode=tap,tapif={iface.id},guest_mac={iface.mac}"]
            else:  # macvtap: lkvm opens the path itself; /dev/fd/N reopens the device the runner found
                (fd,) = open_macvtap(spec, iface)
                argv += ["-n", f"mode=tap,tapif=/dev/fd/{fd},guest_mac={iface.mac}"]
        for device in mv.devices:
            argv += ["--vfio-pci", device.path]
        if mv.vsock.cid is not None:
            argv += ["--vsock", str(mv.vsock.cid)]
        argv += mv.kvmtool.extraArgs
        return spec
