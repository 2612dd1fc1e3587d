"""crosvm: `crosvm run`, control through `crosvm <command> SOCKET`.

Follows crosvm's ``src/crosvm/cmdline.rs`` (``RunCommand``: ``--block``,
``--net``, ``--vsock``, ``--serial``, ``--vfio``, ``--init-mem``,
``--hugepages``, ``--no-balloon``, ``--socket``, ``--pivot-root``;
``PowerbtnCommand``, ``StopCommand``, ``BalloonCommand``) and the book's
``devices/block.md``, ``devices/balloon.md``, ``devices/vsock.md``
(docs/research/hypervisors.md section 3). virtiofs uses the generic
``--vhost-user type=fs`` front-end as microvm.nix does; it reads the tag from
virtiofsd (which must run with ``--tag``). 9p shares are crosvm's own server,
``--shared-dir SOURCE:TAG:type=p9`` (``src/crosvm/sys/linux/config.rs``,
``SharedDir::from_str``: fields split at ``:``, the source must be a
directory; its 9p server has no read-only mode).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .. import proc
from ..errors import MicrovmError
from ..model.problems import Problem
from .base import Balloon, Feature, GuestArtifacts, Hypervisor, RunnerSpec
from .common import MIB, cmdline, disks, open_macvtap, plain, remove_stale_socket, true_false

if TYPE_CHECKING:
    from ..model.options import VMConfig


class Backend(Hypervisor, Balloon):
    name = "crosvm"
    binary = "crosvm"
    features = frozenset(
        {
            Feature.SHARE_VIRTIOFS,
            Feature.SHARE_9P,
            Feature.CONTROL_SOCKET,
            Feature.TAP,
            Feature.MACVTAP,
            Feature.MULTI_QUEUE_TAP,
            Feature.BALLOON,
            Feature.INITIAL_BALLOON,
            Feature.HUGEPAGES,
            Feature.VSOCK,
            Feature.PCI_DEVICES,
            Feature.READ_ONLY_VOLUMES,
            Feature.VOLUME_SERIAL,
            Feature.DIRECT_IO,
        }
    )
    kernel_format = "vmlinux"  # as microvm.nix passes it; the ELF loader works on every version
    transport_modules = ("virtio_pci",)
    console = "ttyS0"
    guest_kernel_params = ("reboot=k",)  # as microvm.nix: a guest reboot ends the process
    plain_options = ("disk image", "volume serial", "virtiofs socket", "PCI address")
    control_api = "`crosvm powerbtn`"

    def check(self, vm: VMConfig) -> Iterator[Problem]:
        yield from super().check(vm)
        for i, share in enumerate(vm.microvm.shares):
            if share.proto != "9p":
                continue
            if share.readOnly:
                yield Problem(
                    ("microvm", "shares", i, "readOnly"),
                    f"crosvm cannot share {share.source} read-only over 9p (its 9p server has no read-only mode)",
                    hint='use proto = "virtiofs", drop readOnly, or use a read-only volume',
                )
            if ":" in share.source:
                yield Problem(
                    ("microvm", "shares", i, "source"),
                    f"crosvm cannot take 9p share source {share.source!r}: ':' separates --shared-dir's fields",
                    hint="choose a directory without ':'",
                )

    def runner(self, vm: VMConfig, guest: GuestArtifacts) -> RunnerSpec:
        mv = vm.microvm
        spec = RunnerSpec(argv=[self.binary, "run", "--cpus", str(mv.vcpu), "--mem", str(mv.mem)])
        argv = spec.argv
        argv += ["--serial", "type=stdout,hardware=serial,num=1,console=true,stdin=true"]
        argv += ["--params", cmdline(guest)]
        if guest.initrd is not None:
            argv += ["--initrd", str(guest.initrd)]
        if not mv.balloon:
            argv.append("--no-balloon")  # crosvm adds a balloon unless told not to
        elif mv.initialBalloonMem:
            argv += ["--init-mem", str(mv.mem - mv.initialBalloonMem)]  # memory outside the balloon at boot
        if mv.hugepageMem:
            argv.append("--hugepages")
        if mv.crosvm.pivotRoot:
            argv += ["--pivot-root", mv.crosvm.pivotRoot]
        if mv.socket:
            argv += ["--socket", mv.socket]
            spec.pre_exec.append(remove_stale_socket(mv.socket))
        for disk in disks(vm, guest):
            opts = [f"path={plain(disk.path, 'disk image', self.name)}", f"ro={true_false(disk.read_only)}"]
            if disk.direct:
                opts.append("o_direct=true")
            if disk.serial is not None:
                opts.append(f"id={plain(disk.serial, 'volume serial', self.name)}")
            argv += ["--block", ",".join(opts)]
        for share in mv.shares:
            if share.proto == "9p":
                argv += ["--shared-dir", f"{share.source}:{share.tag}:type=p9"]
            else:
                argv += ["--vhost-user", f"type=fs,socket={plain(str(share.socket), 'virtiofs socket', self.name)}"]
        for iface in mv.interfaces:
            if iface.type == "tap":
                # crosvm opens the tap multi-queue when vq-pairs > 1
                pairs = f",vq-pairs={mv.vcpu}" if mv.vcpu > 1 else ""
                argv += ["--net", f"tap-name={iface.id},mac={iface.mac}{pairs}"]
            else:  # macvtap: one descriptor, one queue pair
                (fd,) = open_macvtap(spec, iface)
                argv += ["--net", f"tap-fd={fd},mac={iface.mac}"]
        if mv.vsock.cid is not None:
            argv += ["--vsock", f"cid={mv.vsock.cid}"]
        for device in mv.devices:
            argv += ["--vfio", f"/sys/bus/pci/devices/{plain(device.path, 'PCI address', self.name)}"]
        argv.append(os.fspath(guest.kernel))
        argv += mv.crosvm.extraArgs
        return spec

    # --- control: crosvm's own subcommands on the control socket ----------------------

    def request_shutdown(self, socket: Path) -> None:
        proc.run([self.binary, "powerbtn", socket])

    def stop_hard(self, socket: Path, pid: int) -> None:
        try:
            proc.run([self.binary, "stop", socket])
        except MicrovmError:
            super().stop_hard(socket, pid)

    def balloon(self, socket: Path, size_mb: int, mem_mb: int) -> int:
        proc.run([self.binary, "balloon", str(size_mb * MIB), socket])
        stats = json.loads(proc.output([self.binary, "balloon_stats", socket]))
        return int(stats["BalloonStats"]["balloon_actual"]) // MIB
