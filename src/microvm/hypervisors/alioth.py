"""alioth: `alioth run` (alias of `boot`), no control API.

Follows alioth's ``README.md`` and its command-line definitions
(``alioth-cli/src/boot/boot.rs`` ``BootArgs``; the option values are the
``serde_aco`` forms of ``MemConfig``, ``BlkFileParam``, ``NetTapParam``
(``if_name``, ``tap``, ``mac``, ``mtu``, ``queue_pairs``), ``VuFsParam``
(``socket``, ``tag``) and ``VhostVsockParam`` (``cid``))
(docs/research/hypervisors.md section 6). Tap queues are opened with
IFF_MULTI_QUEUE when needed (``virtio/dev/net/tap.rs``); a macvtap is given as
``tap=/dev/tapN``, here the descriptor the runner opened, reopened as ``/dev/fd/N``.

Flags are chosen to work on both older and current releases: ``--cmd-line``, ``--num-cpu``
(deprecated for ``--cpu count=``, still accepted), ``--blk path=..,readonly=..``
and ``--net if_name=..`` (bare forms still parsed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Feature, GuestArtifacts, Hypervisor, RunnerSpec
from .common import cmdline, disks, open_macvtap, plain, true_false

if TYPE_CHECKING:
    from ..model.options import VMConfig

MTU = 1500


class Backend(Hypervisor):
    name = "alioth"
    binary = "alioth"
    features = frozenset(
        {
            Feature.SHARE_VIRTIOFS,
            Feature.TAP,
            Feature.MACVTAP,
            Feature.MULTI_QUEUE_TAP,
            Feature.VSOCK,
            Feature.READ_ONLY_VOLUMES,
        }
    )
    kernel_format = "bzImage"
    transport_modules = ("virtio_pci",)
    console = "ttyS0"
    guest_kernel_params = ("reboot=k",)  # as microvm.nix: a guest reboot ends the process
    plain_options = ("disk image", "virtiofs socket")

    def runner(self, vm: VMConfig, guest: GuestArtifacts) -> RunnerSpec:
        mv = vm.microvm
        # memfd memory is shared, so vhost-user (virtiofsd) can map it
        spec = RunnerSpec(argv=[self.binary, "run", "--memory", f"size={mv.mem}M,backend=memfd"])
        argv = spec.argv
        argv += ["--num-cpu", str(mv.vcpu), "--kernel", str(guest.kernel)]
        if guest.initrd is not None:
            argv += ["--initramfs", str(guest.initrd)]
        argv += ["--cmd-line", cmdline(guest), "--entropy"]
        for disk in disks(vm, guest):
            argv += ["--blk", f"path={plain(disk.path, 'disk image', self.name)},readonly={true_false(disk.read_only)}"]
        for share in mv.shares:
            argv += ["--fs", f"vu,socket={plain(str(share.socket), 'virtiofs socket', self.name)},tag={share.tag}"]
        for iface in mv.interfaces:
            if iface.type == "tap":
                head = f"if_name={iface.id}"
            else:
                (fd,) = open_macvtap(spec, iface)
                head = f"tap=/dev/fd/{fd}"
            argv += ["--net", f"{head},mac={iface.mac},mtu={MTU},queue_pairs={mv.vcpu}"]
        if mv.vsock.cid is not None:
            argv += ["--vsock", f"vhost,cid={mv.vsock.cid}"]
        argv += mv.alioth.extraArgs
        return spec
