"""Rules that span options: uniqueness, consistency; and the hypervisor's own check.

Each rule yields :class:`Problem`s with the option path it is about; the
loader attaches the file that set that option. Errors stop the command,
warnings are printed. What a hypervisor cannot do is its backend's to say
(:meth:`microvm.hypervisors.base.Hypervisor.check`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..hypervisors import get
from ..layout import written_paths
from ..model.addresses import nth_host_address
from ..model.names import host_arch
from ..model.options import NETWORK_FS_PACKAGES, STORE_SHARE_SOURCE, STORE_SHARE_TAG, HostConfig, VMConfig
from ..model.problems import OptionPath, Problem, format_path


def _duplicates(items: Iterable[tuple[OptionPath, object]], what: str) -> Iterator[Problem]:
    seen: dict[object, OptionPath] = {}
    for path, value in items:
        if value is None:
            continue
        if value in seen:
            yield Problem(path, f"{what} {value!r} is also used by {format_path(seen[value])}; each must be unique")
        else:
            seen[value] = path


def _interfaces(vm: VMConfig) -> Iterator[Problem]:
    for i, iface in enumerate(vm.microvm.interfaces):
        path = ("microvm", "interfaces", i)
        if iface.bridge is not None and iface.type not in ("bridge", "tap"):
            yield Problem(
                (*path, "bridge"), f'only interfaces of type "bridge" or "tap" take a bridge (this is {iface.type!r})'
            )
        if not int(iface.mac[:2], 16) & 2:
            yield Problem(
                (*path, "mac"),
                f"{iface.mac} is a globally administered MAC address; it may clash with real hardware",
                "warning",
                hint="use a locally administered one (first byte 02, 06, 0a, ...) unless it was assigned to you",
            )
        if iface.tap.vhost and iface.type != "tap":
            yield Problem(
                (*path, "tap", "vhost"), f'only interfaces of type "tap" use vhost-net (this is {iface.type!r})'
            )
        if iface.type == "bridge" and iface.bridge is None:
            yield Problem((*path, "bridge"), 'is required for an interface of type "bridge"')
        if iface.type == "macvtap":
            for key in ("link", "mode"):
                if getattr(iface.macvtap, key) is None:
                    yield Problem((*path, "macvtap", key), 'is required for an interface of type "macvtap"')
    yield from _duplicates(
        ((("microvm", "interfaces", i, "id"), iface.id) for i, iface in enumerate(vm.microvm.interfaces)),
        "interface id",
    )
    yield from _duplicates(
        ((("microvm", "interfaces", i, "mac"), iface.mac) for i, iface in enumerate(vm.microvm.interfaces)),
        "MAC address",
    )
    yield from _duplicates(
        ((("guest", "network", "interfaces", i, "name"), n.name) for i, n in vm.guest.network.interfaces.items()),
        "guest interface name",
    )
    ids = {iface.id for iface in vm.microvm.interfaces}
    for name in vm.guest.network.interfaces:
        if name not in ids:
            yield Problem(
                ("guest", "network", "interfaces", name),
                f"no interface with id {name!r} in microvm.interfaces",
                hint=f"interface ids: {', '.join(sorted(ids)) or 'none'}",
            )
    if vm.microvm.forwardPorts and not any(i.type == "user" for i in vm.microvm.interfaces):
        yield Problem(
            ("microvm", "forwardPorts"),
            'forwarded ports need an interface of type "user"',
            hint='add [[microvm.interfaces]] with type = "user"',
        )
    base = vm.guest.network.base
    if base.enable and base.routed.enable and nth_host_address(base.routed.ipv4Subnet, base.n) is None:
        yield Problem(
            ("guest", "network", "base", "n"),
            f"{base.n} is past the end of guest.network.base.routed.ipv4Subnet {base.routed.ipv4Subnet}: no address",
            hint="use a smaller n or a wider subnet",
        )


def _storage(vm: VMConfig) -> Iterator[Problem]:
    mv = vm.microvm
    volumes, shares = mv.volumes, mv.shares
    yield from _duplicates(
        ((("microvm", "volumes", i, "image"), v.image) for i, v in enumerate(volumes)), "volume image"
    )
    yield from _duplicates(
        ((("microvm", "volumes", i, "label"), v.label) for i, v in enumerate(volumes)), "volume label"
    )
    images = {v.image for v in volumes}
    for i, volume in enumerate(volumes):
        if volume.backingFile in images:
            yield Problem(
                ("microvm", "volumes", i, "backingFile"),
                f"{volume.backingFile!r} is a volume the guest writes; a backing file must not change under its overlay",
                hint="back the overlay with an image no volume uses",
            )
    ports = mv.qemu.pcieRootPorts
    yield from _duplicates(
        ((("microvm", "qemu", "pcieRootPorts", i, "id"), p.id) for i, p in enumerate(ports)), "root port id"
    )
    yield from _duplicates(((("microvm", "shares", i, "tag"), s.tag) for i, s in enumerate(shares)), "share tag")
    yield from _duplicates(
        ((("microvm", "shares", i, "socket"), s.socket) for i, s in enumerate(shares) if s.proto == "virtiofs"),
        "virtiofs socket",
    )
    yield from _duplicates(
        [(("microvm", "volumes", i, "mountPoint"), v.mountPoint) for i, v in enumerate(volumes)]
        + [(("microvm", "shares", i, "mountPoint"), s.mountPoint) for i, s in enumerate(shares)],
        "mount point",
    )
    for i, share in enumerate(shares):
        if share.tag == STORE_SHARE_TAG and share.source != STORE_SHARE_SOURCE:
            yield Problem(
                ("microvm", "shares", i, "tag"),
                f"{STORE_SHARE_TAG!r} is the tag of the share of the guest system, whose source is {STORE_SHARE_SOURCE!r}",
                hint=f'give this share another tag, or source = "{STORE_SHARE_SOURCE}" to share the system',
            )
        if share.source == STORE_SHARE_SOURCE and mv.storeOnDisk:
            yield Problem(
                ("microvm", "storeOnDisk"),
                "is true, but a share's source is the store (the guest system is shared, not on a disk)",
                hint="leave storeOnDisk unset, or remove the share",
            )
        if share.proto == "9p" and share.socket is not None:
            yield Problem(("microvm", "shares", i, "socket"), "only virtiofs shares have a socket")
    for i, volume in enumerate(volumes):
        if volume.mountPoint == "/":
            yield Problem(("microvm", "volumes", i, "mountPoint"), "/ is the guest's root; mount the volume elsewhere")
    overlay = mv.writableStoreOverlay
    if overlay is not None and not any(v.mountPoint and overlay.startswith(v.mountPoint) for v in volumes):
        yield Problem(
            ("microvm", "writableStoreOverlay"),
            f"{overlay} is not on a volume, so writes to the system are lost at shutdown",
            severity="warning",
            hint="set it under a volume's mountPoint",
        )


def _memory(vm: VMConfig) -> Iterator[Problem]:
    mv = vm.microvm
    if mv.hotpluggedMem > mv.hotplugMem:
        yield Problem(
            ("microvm", "hotpluggedMem"),
            f"{mv.hotpluggedMem} MB is more than hotplugMem ({mv.hotplugMem} MB)",
        )
    if mv.initialBalloonMem and not mv.balloon:
        yield Problem(("microvm", "initialBalloonMem"), "needs microvm.balloon = true")
    if mv.initialBalloonMem and mv.initialBalloonMem >= mv.mem:
        yield Problem(("microvm", "initialBalloonMem"), f"must be less than mem ({mv.mem} MB)")
    if mv.mem < 32:
        yield Problem(("microvm", "mem"), f"{mv.mem} MB is very little; most guests need 32 MB or more", "warning")


def _guest(vm: VMConfig) -> Iterator[Problem]:
    guest, mv = vm.guest, vm.microvm
    if guest.base != "debian":
        debian_only = {
            "packages": bool(guest.packages),
            "users": bool(guest.users),
            "groups": bool(guest.groups),
            "files": bool(guest.files),
            "firewall": guest.firewall.enable,
        }
        for option, used in debian_only.items():
            if used:
                yield Problem(("guest", option), f'{option} need guest.base = "debian"')
        for name, service in guest.services.items():
            if service.startAt is not None:
                yield Problem(("guest", "services", name, "startAt"), 'timers need guest.base = "debian"')
        if mv.vsock.ssh.enable:
            yield Problem(
                ("microvm", "vsock", "ssh", "enable"),
                'an SSH server needs guest.base = "debian" (busybox has none)',
                hint='set guest.base = "debian", or turn microvm.vsock.ssh off',
            )
        for path, fs in guest.fileSystems.items():
            if fs.network:
                yield Problem(
                    ("guest", "fileSystems", path, "fsType"), f'{fs.fsType} mounts need guest.base = "debian"'
                )
    for path, fs in guest.fileSystems.items():
        helper = NETWORK_FS_PACKAGES.get(fs.fsType)
        if guest.base == "debian" and helper and not any(p.split("=")[0] == helper for p in guest.packages):
            yield Problem(
                ("guest", "fileSystems", path, "fsType"),
                f"mounting {fs.fsType} needs the package {helper} (its mount helper)",
                hint=f'add "{helper}" to guest.packages',
            )
    if guest.kernel.modulesDir is not None and guest.kernel.image is None:
        yield Problem(("guest", "kernel", "modulesDir"), "only applies together with guest.kernel.image")
    if guest.kernel.package is not None and guest.kernel.image is not None:
        yield Problem(("guest", "kernel", "package"), "set either guest.kernel.package or guest.kernel.image, not both")
    if mv.cpu is not None and mv.accel == "kvm":
        yield Problem(
            ("microvm", "accel"), 'accel = "kvm" cannot emulate microvm.cpu', hint='use accel = "tcg" or "auto"'
        )
    if guest.arch != host_arch() and mv.accel == "kvm":
        yield Problem(
            ("microvm", "accel"),
            f'accel = "kvm" cannot run an {guest.arch} guest on this {host_arch()} host',
            hint='use accel = "tcg" or "auto"',
        )
    for name, service in guest.services.items():
        wanted = [(("credentials", i), c) for i, c in enumerate(service.credentials)]
        wanted += [(("environmentCredential",), service.environmentCredential)] if service.environmentCredential else []
        for path, credential in wanted:
            if credential not in mv.credentialFiles:
                yield Problem(
                    ("guest", "services", name, *path),
                    f"no credential named {credential!r} in microvm.credentialFiles",
                    hint=f"credentials: {', '.join(sorted(mv.credentialFiles)) or 'none'}",
                )
        for i, dep in enumerate(service.after):
            # a debian guest may also order after a systemd unit of its own (network-online.target)
            if dep not in guest.services and not (guest.base == "debian" and "." in dep):
                yield Problem(
                    ("guest", "services", name, "after", i),
                    f"no service named {dep!r}",
                    hint=f"defined services: {', '.join(sorted(guest.services)) or 'none'}",
                )


def _host_wide(vm: VMConfig) -> Iterator[tuple[str, OptionPath, object]]:
    """What must be unique on one host: (what, option path, value)."""
    base = vm.guest.network.base
    if base.enable:
        yield "network number", ("guest", "network", "base", "n"), base.n
    for i, iface in enumerate(vm.microvm.interfaces):
        if iface.type != "user":  # user networking has no host interface
            yield "interface id", ("microvm", "interfaces", i, "id"), iface.id
        yield "MAC address", ("microvm", "interfaces", i, "mac"), iface.mac


def check_against_others(vm: VMConfig, others: dict[str, VMConfig], where: str) -> list[Problem]:
    """Clashes of ``vm`` with the other VMs of the host (installed ones, or declared in the same host file)."""
    taken = {(what, value): name for name, other in others.items() for what, _, value in _host_wide(other)}
    problems = []
    for what, path, value in _host_wide(vm):
        if (owner := taken.get((what, value))) is not None:
            problems.append(
                Problem(path, f"{what} {value!r} is already used by VM {owner!r} ({where}); each must be unique")
            )
    return problems


def _own_guest(vm: VMConfig) -> Iterator[Problem]:
    """microvm.guest.enable = false: nothing of microvm runs in the guest, so nothing may rely on it."""
    guest, mv = vm.guest, vm.microvm
    if mv.guest.enable:
        return
    if mv.initrdPath is None and not any(p.startswith("root=") for p in mv.kernelParams):
        yield Problem(
            ("microvm", "guest", "enable"),
            "no guest is built, and none is given: the kernel would have nothing to boot",
            hint="set microvm.initrdPath, or a root= in microvm.kernelParams",
        )
    if mv.readiness:
        yield Problem(
            ("microvm", "readiness"),
            "readiness is reported by microvm's guest side, which microvm.guest.enable = false leaves out",
        )
    if mv.storeOnDisk is False:
        yield Problem(("microvm", "storeOnDisk"), "there is no system tree to share: microvm.guest.enable is false")
    unused = {
        ("guest", "commands"): guest.commands,
        ("guest", "services"): guest.services,
        ("guest", "packages"): guest.packages,
        ("guest", "fileSystems"): guest.fileSystems,
        ("microvm", "credentialFiles"): mv.credentialFiles,  # the disk is attached; nothing unpacks it
    }
    for path, value in unused.items():
        if value:
            yield Problem(path, "is not used: microvm.guest.enable is false", severity="warning")


def check_vm(vm: VMConfig) -> list[Problem]:
    """Every problem of one VM, its hypervisor's included."""
    return [
        *_interfaces(vm),
        *_storage(vm),
        *_memory(vm),
        *_guest(vm),
        *_own_guest(vm),
        *get(vm.microvm.hypervisor).check(vm),
    ]


def _interface_bridges(host: HostConfig, vm: VMConfig) -> Iterator[Problem]:
    """A tap naming a bridge this host file does not make: tap-up fails unless the host has it otherwise."""
    network = host.network
    made = {*network.bridges, *([network.basic.name] if network.basic.enable else [])}
    for i, iface in enumerate(vm.microvm.interfaces):
        if iface.type == "tap" and iface.bridge is not None and iface.bridge not in made:
            yield Problem(
                ("microvm", "interfaces", i, "bridge"),
                f"{iface.bridge} is not a bridge of this host file",
                "warning",
                hint=f"bridges here: {', '.join(sorted(made)) or 'none'}; fine if the host makes it otherwise",
            )


def check_host_vm(host: HostConfig, vm: VMConfig) -> list[Problem]:
    """Whether a VM declared in a host file fits the host's network."""
    return [*_interface_bridges(host, vm), *_base_fits(host, vm)]


def _base_fits(host: HostConfig, vm: VMConfig) -> list[Problem]:
    """Whether ``guest.network.base`` fits the host's bridge or routed layout."""
    base, basic, routed = vm.guest.network.base, host.network.basic, host.network.routed
    path = ("guest", "network", "base")
    if not base.enable:
        return []
    if base.routed.enable:
        if base.routed != routed:
            return [
                Problem(
                    (*path, "routed"),
                    "differs from the host's network.routed (or it is not enabled there)",
                    hint="set the same enable, ipv4Subnet and ipv6Prefix in both",
                )
            ]
        return []
    problems = []
    if basic.enable and not fnmatch.fnmatchcase(base.tap, basic.tapMatch):
        problems.append(
            Problem(
                (*path, "n"),
                f"the tap {base.tap} does not match network.basic.tapMatch {basic.tapMatch!r}: it joins no bridge",
                "warning",
            )
        )
    if basic.enable and basic.dhcp and basic.ipv4Subnet and nth_host_address(basic.ipv4Subnet, base.n) is None:
        problems.append(
            Problem(
                (*path, "n"),
                f"{base.n} is past the end of network.basic.ipv4Subnet {basic.ipv4Subnet}: no fixed address",
                "warning",
                hint="use a smaller n or a wider subnet",
            )
        )
    return problems


def _host_bridges(host: HostConfig) -> Iterator[Problem]:
    """The bridges and VLANs of ``network``: distinct names, each port on one bridge, a VLAN on another link."""
    network = host.network
    if network.basic.enable and network.basic.name in network.bridges:
        yield Problem(("network", "bridges", network.basic.name), "is network.basic's bridge already")
    for name, vlan in network.vlans.items():
        if name in network.bridges or vlan.link == name:
            yield Problem(("network", "vlans", name), "a VLAN needs its own name, other than its link's and a bridge's")
    ports = [(("network", "basic", "ports", i), p) for i, p in enumerate(network.basic.ports) if network.basic.enable]
    ports += [
        (("network", "bridges", b, "ports", i), p) for b, o in network.bridges.items() for i, p in enumerate(o.ports)
    ]
    yield from _duplicates(ports, "bridge port")


def _cluster(host: HostConfig) -> Iterator[Problem]:
    """Cluster VMs need the cluster, shared storage and a build of their own; the cluster, not autostart, runs them."""
    cluster, vms = host.cluster, host.microvm.vms
    for name in (n for n, declared in vms.items() if declared.cluster):
        path = ("microvm", "vms", name, "cluster")
        if not cluster.enable:
            yield Problem(path, "a cluster VM needs cluster.enable = true", hint="set enable = true under [cluster]")
        elif cluster.sharedStorage is None:
            yield Problem(path, "a cluster VM needs cluster.sharedStorage", hint="the directory every node mounts")
        if vms[name].config is None:
            yield Problem(path, "a cluster VM needs config: its build is what every node runs (not source)")
        if name in host.microvm.autostart:
            i = host.microvm.autostart.index(name)
            yield Problem(("microvm", "autostart", i), f"{name!r} is a cluster VM: the cluster starts it, not the host")


def check_cluster_vm(host: HostConfig, name: str, vm: VMConfig) -> Iterator[Problem]:
    """A cluster VM writes only to the shared storage; one that cannot migrate is moved by a stop and a start."""
    shared = host.cluster.sharedStorage
    if not host.microvm.vms[name].cluster or shared is None:
        return
    vm_dir = Path(host.microvm.stateDir) / name
    for option, path in written_paths(vm.public_dump()["microvm"], vm_dir):
        if not path.is_relative_to(shared):
            yield Problem(
                option,
                f"{path} is not under cluster.sharedStorage {shared}: another node could not take the VM over",
                hint=f"an absolute path under {shared} (relative paths are in {vm_dir})",
            )
    if not vm.microvm.migratable:
        yield Problem(
            ("microvm", "migratable"),
            "a cluster VM that is not migratable moves to another node by a shutdown and a boot",
            "warning",
            hint="set microvm.migratable = true to move it live (allow-migrate)",
        )


def check_host(host: HostConfig) -> list[Problem]:
    """Problems of a host file that no single VM can see."""
    problems = [*_host_bridges(host), *_cluster(host)]
    for name, declared in host.microvm.vms.items():
        path = ("microvm", "vms", name)
        if declared.config is not None and declared.source is not None:
            problems.append(Problem((*path, "source"), "a VM with config cannot also set source"))
        if declared.config is None and declared.source is None:
            problems.append(Problem(path, "needs config (fully declarative) or source (declarative deployment)"))
    for i, name in enumerate(host.microvm.autostart):
        if name not in host.microvm.vms:
            problems.append(
                Problem(
                    ("microvm", "autostart", i),
                    f"{name!r} is not declared here",
                    "warning",
                    hint="fine if it is installed with `microvm create`",
                )
            )
    return problems
