"""Desugaring: the defaults that depend on other options, and the shorthands expanded.

Our ``mounts.nix``: :mod:`microvm.model.options` declares what may be set;
this module turns a validated file into the complete VM it means. It fills
the computed defaults (``guest.arch``, ``microvm.socket``, ...), expands
``guest.mounts`` and ``guest.store`` into ``microvm.volumes``/``shares``, and
adds the base interface (and for the routed layout its static addresses).
Models are frozen, so each step returns a new one. Idempotent: an expanded
config (``microvm eval``, the runner's vm.json) desugars to itself.
Pure: what it needs to know of a backend is passed in by the caller.
"""

from __future__ import annotations

import hashlib

from ..layout import CREDENTIALS_IMAGE
from .addresses import nth_host_address
from .names import host_arch
from .options import (
    STORE_RW_IMAGE,
    STORE_RW_MOUNTPOINT,
    STORE_SHARE_SOURCE,
    STORE_SHARE_TAG,
    DeclaredVM,
    GuestNetwork,
    GuestOptions,
    HostConfig,
    InterfaceNetwork,
    MicroVMOptions,
    Mount,
    Route,
    Share,
    VMConfig,
    Volume,
)


def desugar_vm(vm: VMConfig, *, control_socket: bool) -> VMConfig:
    """``vm`` complete; ``control_socket``: whether its hypervisor has one (the backends know, the model does not)."""
    mv, guest = vm.microvm, vm.guest
    arch = guest.arch or ("aarch64" if host_arch() == "aarch64" else "x86_64")
    mv, mounts = _expand_mounts(mv, guest)
    shares = [
        share.model_copy(update={"socket": f"{guest.hostName}-virtiofs-{share.tag}.sock"})
        if share.proto == "virtiofs" and share.socket is None
        else share
        for share in mv.shares
    ]
    network = _routed_interface(guest.network)
    base = network.base.interface() if network.base.enable else None
    machine = mv.qemu.machine
    if machine is None:
        machine = "virt" if arch == "aarch64" else "microvm"
    mv = mv.model_copy(
        update={
            "socket": f"{guest.hostName}.sock" if mv.socket is None and control_socket else mv.socket,
            "shares": shares,
            "qemu": mv.qemu.model_copy(update={"machine": machine}),
            "storeOnDisk": (
                not any(share.source == STORE_SHARE_SOURCE for share in shares)
                if mv.storeOnDisk is None
                else mv.storeOnDisk
            ),
            # a config read back from vm.json already has it; a different interface with its name stays a duplicate
            "interfaces": [*mv.interfaces, base] if base is not None and base not in mv.interfaces else mv.interfaces,
        }
    )
    flavor = guest.kernel.flavor
    if flavor == "auto":
        flavor = "generic" if any(share.proto == "9p" for share in shares) else "cloud"
    guest = guest.model_copy(
        update={
            "arch": arch,
            "machineId": guest.machineId or hashlib.sha256(f"microvm:{guest.hostName}".encode()).hexdigest()[:32],
            "mounts": mounts,
            "kernel": guest.kernel.model_copy(update={"flavor": flavor}),
            "network": network,
        }
    )
    return vm.model_copy(update={"microvm": mv, "guest": guest})


def _expand_mounts(mv: MicroVMOptions, guest: GuestOptions) -> tuple[MicroVMOptions, dict[str, Mount]]:
    """Turn ``guest.mounts`` and ``guest.store`` (the wrapper's shorthands) into microvm volumes and shares.

    Returns the microvm table with them, and the mounts with their defaults filled.
    """
    shares = [
        # the system's share: whatever the file calls it, the initrd and the runner know it by its tag
        share.model_copy(update={"tag": STORE_SHARE_TAG, "mountPoint": "/", "readOnly": True})
        if share.source == STORE_SHARE_SOURCE
        else share
        for share in mv.shares
    ]
    tags = {s.tag for s in shares}
    images = {v.image for v in mv.volumes}
    volumes, mounts = list(mv.volumes), {}
    for name, mount in guest.mounts.items():
        if mount.enable:
            as_volume = not mount.share.enable if mount.volume.enable is None else mount.volume.enable
            volume = mount.volume.model_copy(update={"enable": as_volume})
            mount = mount.model_copy(update={"mountpoint": mount.mountpoint or f"/var/lib/{name}", "volume": volume})
            if mount.share.enable and (mount.share.tag or name) not in tags:
                share = mount.share
                shares.append(
                    Share(
                        tag=share.tag or name,
                        source=share.hostPath or name,
                        mountPoint=mount.mountpoint,
                        proto=share.proto,
                        socket=share.socket,
                    )
                )
            elif mount.volume.enable and (mount.volume.image or f"{name}.img") not in images:
                volume = mount.volume
                size = volume.size or (volume.sizeGB * 1024 if volume.sizeGB else 1024)
                volumes.append(
                    Volume(image=volume.image or f"{name}.img", mountPoint=mount.mountpoint, size=size, label=name[:16])
                )
        mounts[name] = mount
    if (guest.store.readonly.enable or mv.storeOnDisk is False) and STORE_SHARE_TAG not in tags:
        shares.append(
            Share(tag=STORE_SHARE_TAG, source=STORE_SHARE_SOURCE, mountPoint="/", proto="virtiofs", readOnly=True)
        )
    if mv.credentialFiles and CREDENTIALS_IMAGE not in images:
        # made by the runner at every start; the initrd finds it by its place among the disks and unpacks it
        volumes.append(Volume(image=CREDENTIALS_IMAGE, size=1, autoCreate=False, fsType="tar", readOnly=True))
    overlay = mv.writableStoreOverlay
    if guest.store.readwrite.enable and STORE_RW_IMAGE not in images:
        volumes.append(
            Volume(
                image=STORE_RW_IMAGE,
                mountPoint=STORE_RW_MOUNTPOINT,
                size=guest.store.readwrite.size,
                label="store-rw",
            )
        )
        overlay = overlay or STORE_RW_MOUNTPOINT
    update = {"shares": shares, "volumes": volumes, "writableStoreOverlay": overlay}
    return mv.model_copy(update=update), mounts


def _routed_interface(network: GuestNetwork) -> GuestNetwork:
    """The routed layout's static addresses and routes through the host on the base tap, unless set by hand.

    A VM whose number is past the end of ``routed.ipv4Subnet`` gets none; the checks report it.
    """
    base = network.base
    routed = base.routed
    if not (base.enable and routed.enable) or base.tap in network.interfaces:
        return network
    if nth_host_address(routed.ipv4Subnet, base.n) is None:
        return network
    host = [address.split("/")[0] for address in routed.host_addresses()]
    own = InterfaceNetwork(
        dhcp=False,
        acceptRA=False,
        addresses=routed.vm_addresses(base.n),
        routes=[Route(destination="0.0.0.0/0", gateway=host[0])]
        + ([Route(destination="::/0", gateway=host[1])] if len(host) > 1 else []),
    )
    return network.model_copy(update={"interfaces": {**network.interfaces, base.tap: own}})


def desugar_host(host: HostConfig) -> HostConfig:
    """``host`` with the computed defaults of its declared VMs."""
    vms = {name: _declared_defaults(declared) for name, declared in host.microvm.vms.items()}
    return host.model_copy(update={"microvm": host.microvm.model_copy(update={"vms": vms})})


def _declared_defaults(declared: DeclaredVM) -> DeclaredVM:
    restart = declared.config is not None if declared.restartIfChanged is None else declared.restartIfChanged
    update = declared.source if declared.updateSource is None else declared.updateSource
    return declared.model_copy(update={"restartIfChanged": restart, "updateSource": update})
