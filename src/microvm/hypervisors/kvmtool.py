"""kvmtool (`lkvm run`): 9p, user networking, no control API.

Follows kvmtool's ``Documentation/kvmtool.1`` (``-k -i -p -c -m -d --console
--balloon``, ``lkvm balloon``, ``lkvm stop``), ``builtin-run.c`` (``--9p``,
``--hugetlbfs``, ``--vfio-pci``, ``--vsock``, ``--rng``) and
``virtio/net.c`` (``-n mode=,tapif=,guest_mac=``; a ``tapif`` starting with
``/`` is opened as a macvtap device; taps are opened single-queue)
(docs/research/hypervisors.md section 4).

lkvm keeps an instance socket in ``$HOME/.lkvm/<name>.sock``; the runner sets
HOME to the state directory, as microvm.nix does. It is not an API for a
graceful shutdown (``lkvm stop`` kills the guest), so the VM is stopped with a
signal.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MicrovmError
from .base import Feature, GuestArtifacts, Hypervisor, RunnerSpec
from .common import cmdline, disks, open_macvtap, plain, signal_shutdown

if TYPE_CHECKING:
    from ..model.options import VMConfig

HUGETLBFS = "/dev/hugepages"


def instance_socket(vm: VMConfig) -> str:
    """lkvm's own socket (relative to the state directory); its peer is the hypervisor process."""
    return f".lkvm/{vm.guest.hostName}.sock"


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
            if share.readOnly:
                raise MicrovmError(
                    f"kvmtool cannot share {share.source} read-only (its 9p has no read-only mode)",
                    hint="drop readOnly, or use a read-only volume",
                )
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

    # --- control: none; SIGTERM to the process behind lkvm's instance socket -------------

    def shutdown(self, socket: Path, timeout: float) -> None:
        """``socket``: lkvm's instance socket (:func:`instance_socket`), used only to find the process."""
        signal_shutdown(socket, timeout, self.name)

    def request_shutdown(self, socket: Path) -> None:
        raise MicrovmError("kvmtool has no graceful shutdown request (`lkvm stop` kills the guest)")

    def balloon(self, socket: Path, size_mb: int, mem_mb: int) -> int:
        raise MicrovmError(
            "kvmtool's balloon is changed only relatively and cannot be read back",
            hint="HOME=<state directory> lkvm balloon --name NAME --inflate MB (or --deflate MB)",
        )
