"""firecracker: the VM is a JSON config file; control is REST on the API socket.

Follows firecracker's documentation: ``src/firecracker/swagger/firecracker.yaml``
(``FullVmConfiguration`` is the ``--config-file`` schema), ``docs/getting-started.md``,
``docs/api_requests/actions.md`` (SendCtrlAltDel), ``docs/ballooning.md``,
``docs/hugepages.md`` and ``docs/vsock.md`` (docs/research/hypervisors.md section 2).

No shares (no virtio-fs or 9p device), tap interfaces only, single-queue.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..control import http
from ..layout import SHARE
from .base import Balloon, Feature, GuestArtifacts, Hypervisor, RunnerSpec
from .common import cmdline, disks, remove_stale_socket

if TYPE_CHECKING:
    from ..model.options import VMConfig

CONFIG_FILE = f"{SHARE}/firecracker.json"
CPU_TEMPLATE_FILE = f"{SHARE}/firecracker-cpu.json"  # firecracker.cpu, the config's cpu-config
VSOCK_SOCKET = "notify.vsock"


class Backend(Hypervisor, Balloon):
    name = "firecracker"
    binary = "firecracker"
    features = frozenset(
        {
            Feature.CONTROL_SOCKET,
            Feature.TAP,
            Feature.BALLOON,
            Feature.INITIAL_BALLOON,
            Feature.HUGEPAGES,
            Feature.VSOCK,
            Feature.READ_ONLY_VOLUMES,
        }
    )
    # x86_64 boots an uncompressed ELF (docs/pvh.md); there is no bzImage loader.
    kernel_format = "vmlinux"
    transport_modules = ("virtio_mmio",)
    console = "ttyS0"
    incompatible = ((Feature.BALLOON, Feature.HUGEPAGES, "docs/hugepages.md"),)
    migration_api = "firecracker has snapshots (`PUT /snapshot/create`, `/snapshot/load`) but no live migration"
    control_api = "REST (`PUT /actions` SendCtrlAltDel)"
    vsock_socket = VSOCK_SOCKET  # docs/vsock.md: host-initiated connections

    def kernel_params(self, vm: VMConfig, accel: str) -> list[str]:
        # microvm.nix's boot_args: reboot=k so a guest reboot ends the process; i8042 probing
        # shortcuts that keep the keyboard SendCtrlAltDel needs (docs/api_requests/actions.md)
        return ["reboot=k", "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd"]

    def config(self, vm: VMConfig, guest: GuestArtifacts) -> dict[str, Any]:
        """The ``--config-file`` JSON (swagger ``FullVmConfiguration``), with ``extraConfig`` merged in."""
        mv = vm.microvm
        boot: dict[str, Any] = {"kernel_image_path": os.fspath(guest.kernel), "boot_args": cmdline(guest)}
        if guest.initrd is not None:
            boot["initrd_path"] = os.fspath(guest.initrd)
        machine: dict[str, Any] = {"vcpu_count": mv.vcpu, "mem_size_mib": mv.mem, "smt": False}
        if mv.hugepageMem:
            machine["huge_pages"] = "2M"
        config: dict[str, Any] = {
            "boot-source": boot,
            "machine-config": machine,
            # ids must be alphanumeric/underscore: name drives after the guest's device
            "drives": [
                {
                    "drive_id": disk.name,
                    "path_on_host": disk.path,
                    "is_root_device": False,
                    "is_read_only": disk.read_only,
                    "io_engine": mv.firecracker.driveIoEngine,
                }
                for disk in disks(vm, guest)
            ],
            "network-interfaces": [
                {"iface_id": f"net{i}", "host_dev_name": iface.id, "guest_mac": iface.mac}
                for i, iface in enumerate(mv.interfaces)
            ],
        }
        if mv.firecracker.cpu is not None:
            config["cpu-config"] = f"{RunnerSpec.RUNNER}/{CPU_TEMPLATE_FILE}"
        if mv.vsock.cid is not None:
            config["vsock"] = {"guest_cid": mv.vsock.cid, "uds_path": VSOCK_SOCKET}
        if mv.balloon:
            config["balloon"] = {
                "amount_mib": mv.initialBalloonMem,
                "deflate_on_oom": mv.deflateOnOOM,
                # statistics (actual size) are only reported when polled
                "stats_polling_interval_s": 1,
            }
        return _merge(config, mv.firecracker.extraConfig)

    def runner(self, vm: VMConfig, guest: GuestArtifacts) -> RunnerSpec:
        mv = vm.microvm
        spec = RunnerSpec(
            argv=[self.binary, "--config-file", f"{RunnerSpec.RUNNER}/{CONFIG_FILE}"],
            files={CONFIG_FILE: json.dumps(self.config(vm, guest), indent=2, sort_keys=True) + "\n"},
        )
        if mv.firecracker.cpu is not None:
            spec.files[CPU_TEMPLATE_FILE] = json.dumps(mv.firecracker.cpu, indent=2, sort_keys=True) + "\n"
        if mv.socket:
            spec.argv += ["--api-sock", mv.socket]
            # firecracker will not bind over an existing socket
            spec.pre_exec.append(remove_stale_socket(mv.socket))
        else:
            spec.argv.append("--no-api")
        spec.argv += mv.firecracker.extraArgs
        return spec

    # --- control (swagger paths /actions, /balloon) -------------------------------------

    def request_shutdown(self, socket: Path) -> None:
        # x86_64: Ctrl+Alt+Del through the i8042 controller; aarch64: a GPIO power button
        http.request(socket, "PUT", "/actions", {"action_type": "SendCtrlAltDel"})

    def balloon(self, socket: Path, size_mb: int, mem_mb: int) -> int:
        http.request(socket, "PATCH", "/balloon", {"amount_mib": size_mb})
        try:
            return int(http.request(socket, "GET", "/balloon/statistics").body["actual_mib"])
        except (http.ApiError, KeyError, TypeError):
            return int(http.request(socket, "GET", "/balloon").body["amount_mib"])


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: tables merge recursively, anything else replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
