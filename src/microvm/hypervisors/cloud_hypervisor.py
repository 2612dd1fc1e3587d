"""cloud-hypervisor: virtio-pci devices, virtiofs, REST API on a unix socket.

Follows cloud-hypervisor's documentation: the "Commands" help page
(cloud-hypervisor.github.io), ``docs/api.md``, ``docs/fs.md``,
``docs/memory.md``, ``docs/balloon.md``, ``docs/vsock.md``,
``docs/macvtap-bridge.md``, ``docs/vfio.md`` and the OpenAPI description
``vmm/src/api/openapi/cloud-hypervisor.yaml``; readiness over vsock as
microvm.nix's ``lib/runners/cloud-hypervisor.nix`` does it
(docs/research/hypervisors.md sections 0 and 1).

Device options are given one switch per device (``--disk A --disk B``): the
form both the argh (v30-35) and clap (other) parsers accept.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from ..control import http
from ..errors import MicrovmError
from .base import Balloon, Feature, GuestArtifacts, Hypervisor, RunnerSpec
from .common import MIB, cmdline, disks, on_off, open_macvtap, plain, remove_stale_socket

if TYPE_CHECKING:
    from ..model.options import VMConfig

# Guest systemd finds the host's notify socket in this SMBIOS credential and connects
# to CID 2 (the host), port 8888; cloud-hypervisor forwards that to "<vsock socket>_8888".
# Only systemd 254 and later do this (Debian bookworm has 252, busybox guests have no
# systemd), so microvm.readiness, which our guests implement, is not offered here.
NOTIFY_VSOCK = "notify.vsock"
NOTIFY_PORT = 8888
NOTIFY_CREDENTIAL = f"io.systemd.credential:vmm.notify_socket=vsock-stream:2:{NOTIFY_PORT}"
API = "/api/v1"


class Backend(Hypervisor, Balloon):
    name = "cloud-hypervisor"
    binary = "cloud-hypervisor"
    features = frozenset(
        {
            Feature.SHARE_VIRTIOFS,
            Feature.CONTROL_SOCKET,
            Feature.TAP,
            Feature.MACVTAP,
            Feature.MULTI_QUEUE_TAP,
            Feature.BALLOON,
            Feature.INITIAL_BALLOON,
            Feature.VIRTIO_MEM,
            Feature.HUGEPAGES,
            Feature.VSOCK,
            Feature.PCI_DEVICES,
            Feature.READ_ONLY_VOLUMES,
            Feature.VOLUME_SERIAL,
            Feature.DIRECT_IO,
            Feature.IMAGE_QCOW2,
            Feature.IMAGE_VHD,
            Feature.IMAGE_VHDX,
            Feature.BACKING_FILE,
        }
    )
    # --kernel takes an ELF with a PVH note on x86_64 (no bzImage loader).
    kernel_format = "vmlinux"
    transport_modules = ("virtio_pci",)
    console = "ttyS0"
    guest_kernel_params = ("reboot=t",)  # as microvm.nix: a guest reboot is a triple fault, which ends the process
    plain_options = ("disk image", "volume serial", "virtiofs socket", "PCI address")
    migration_api = "cloud-hypervisor has live migration (`PUT /vm.send-migration`, `/vm.receive-migration`) and snapshots in its REST API"
    control_api = "REST (`PUT /api/v1/vm.power-button`)"
    vsock_socket = NOTIFY_VSOCK  # docs/vsock.md

    def runner(self, vm: VMConfig, guest: GuestArtifacts) -> RunnerSpec:
        mv = vm.microvm
        spec = RunnerSpec(argv=[self.binary, "--cpus", f"boot={mv.vcpu}", "--memory", self._memory(vm)])
        argv = spec.argv
        argv += ["--kernel", str(guest.kernel)]
        if guest.initrd is not None:
            argv += ["--initramfs", str(guest.initrd)]
        argv += ["--cmdline", cmdline(guest)]
        # the guest console is the 8250 serial port on our stdio; no virtio-console
        argv += ["--serial", "tty", "--console", "off"]
        multi_queue = mv.vcpu > 1
        for disk in disks(vm, guest):
            opts = [f"path={plain(disk.path, 'disk image', self.name)}", f"readonly={on_off(disk.read_only)}"]
            if disk.direct:
                opts.append("direct=on")
            if disk.image_type != "raw":  # raw is what it assumes; older versions lack the option
                opts.append(f"image_type={disk.image_type}")
            if disk.backing:
                opts.append("backing_files=on")  # off by default since v51
            if disk.serial is not None:
                opts.append(f"serial={plain(disk.serial, 'volume serial', self.name)}")
            if multi_queue:
                opts.append(f"num_queues={mv.vcpu}")
            argv += ["--disk", ",".join(opts)]
        for iface in mv.interfaces:
            if iface.type == "tap":
                head = f"tap={iface.id}"
            else:  # macvtap: one descriptor per queue pair
                fds = open_macvtap(spec, iface, mv.vcpu if multi_queue else 1)
                head = f"fd=[{','.join(map(str, fds))}]"
            argv += ["--net", f"{head},mac={iface.mac}" + (f",num_queues={2 * mv.vcpu}" if multi_queue else "")]
        for share in mv.shares:
            argv += ["--fs", f"tag={share.tag},socket={plain(str(share.socket), 'virtiofs socket', self.name)}"]
        if mv.balloon:
            argv += [
                "--balloon",
                f"size={mv.initialBalloonMem}M,deflate_on_oom={on_off(mv.deflateOnOOM)},free_page_reporting=on",
            ]
        if mv.vsock.cid is not None:
            argv += ["--vsock", f"cid={mv.vsock.cid},socket={NOTIFY_VSOCK}"]
            argv += ["--platform", f"oem_strings=[{NOTIFY_CREDENTIAL}]"]
            spec.pre_exec += _notify_forwarder()
        for device in mv.devices:
            argv += ["--device", f"path=/sys/bus/pci/devices/{plain(device.path, 'PCI address', self.name)}/"]
        if mv.socket:
            argv += ["--api-socket", mv.socket]
            # it refuses to start over a socket left by a previous run
            spec.pre_exec.append(remove_stale_socket(mv.socket))
        argv += mv.cloud_hypervisor.extraArgs
        return spec

    @staticmethod
    def _memory(vm: VMConfig) -> str:
        mv = vm.microvm
        # vhost-user devices (virtiofsd) need guest memory they can map: shared=on (docs/fs.md)
        shared = any(s.proto == "virtiofs" for s in mv.shares)
        opts = [f"size={mv.mem}M", "mergeable=on", f"shared={on_off(shared)}"]
        if mv.hugepageMem:
            opts.append("hugepages=on")
        if mv.hotplugMem:
            opts += ["hotplug_method=virtio-mem", f"hotplug_size={mv.hotplugMem}M"]
            if mv.hotpluggedMem:
                opts.append(f"hotplugged_size={mv.hotpluggedMem}M")
        return ",".join(opts)

    # --- control (REST API, vmm/src/api/openapi/cloud-hypervisor.yaml) -------------------

    def request_shutdown(self, socket: Path) -> None:
        http.request(socket, "PUT", f"{API}/vm.power-button")

    def stop_hard(self, socket: Path, pid: int) -> None:
        try:
            http.request(socket, "PUT", f"{API}/vmm.shutdown")
        except MicrovmError:
            super().stop_hard(socket, pid)

    def balloon(self, socket: Path, size_mb: int, mem_mb: int) -> int:
        http.request(socket, "PUT", f"{API}/vm.resize", {"desired_balloon": size_mb * MIB})
        try:  # newer versions report the guest's actual balloon
            stats = http.request(socket, "GET", f"{API}/vm.balloon-stats").body
            return int(stats["balloon_actual"]) // MIB
        except (http.ApiError, KeyError, TypeError):
            info = http.request(socket, "GET", f"{API}/vm.info").body
            return int(info["config"]["balloon"]["size"]) // MIB


def _notify_forwarder() -> list[str]:
    """Forward the guest's sd_notify messages to our own $NOTIFY_SOCKET (Type=notify under systemd).

    socat's -T2 closes idle connections: cloud-hypervisor does not pass on the
    half-close systemd >= 256 does after sending (microvm.nix).
    """
    listen = shlex.quote(f"UNIX-LISTEN:{NOTIFY_VSOCK}_{NOTIFY_PORT},fork")
    return [
        f"rm -f -- {NOTIFY_VSOCK} {NOTIFY_VSOCK}_{NOTIFY_PORT}",
        'if [ -n "${NOTIFY_SOCKET:-}" ]; then',
        f'  socat -T2 {listen} "UNIX-SENDTO:$NOTIFY_SOCKET" &',
        "fi",
    ]
