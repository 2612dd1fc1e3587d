"""The initrd: busybox, the kernel modules the VM's devices need, and /init.

/init loads the modules, mounts the read-only system (a disk image, or the
host store shared over virtiofs/9p) under a writable overlay (tmpfs, or a
directory on a volume with ``writableStoreOverlay``), mounts the volumes and
shares, writes the host name and machine id, and switches to the guest's
init. Everything it needs is decided at build time and written into the
script, so the guest does no probing.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from .. import proc
from ..errors import MicrovmError
from ..hypervisors.base import Feature, Hypervisor
from ..layout import CREDENTIALS_DIRS, CREDENTIALS_IMAGE, ROOT_SERIAL
from ..model.options import STORE_SHARE_TAG, FileSystem, VMConfig
from ..store import Store, file_digest
from .cpio import CpioArchive
from .debarch import busybox_path, guest_busybox, runs_here
from .kernel import KernelEntry
from .kmod import resolve_modules, without_signature

# Read-ahead on the read-only system disk, in KiB (the kernel's default is 128). A program's
# first page faults then read it in one go instead of one 128 KiB window at a time: under TCG
# busybox init started 0.25-0.3 s sooner with 4096 than with the default, and 1024 kept about
# half of that cost (see bench/notes.md).
SYSTEM_READ_AHEAD_KIB = 4096
INITRD_FORMAT = 4  # bump when the generated /init changes meaning
# guest.fileSystems types: the modules they need, and those every kernel has built in
FS_MODULES = {"nfs": ["nfs", "nfsv3"], "nfs4": ["nfs", "nfsv4"], "cifs": ["cifs"], "smb3": ["cifs"]}
BUILT_IN_FS = ("none", "tmpfs", "ramfs", "proc", "sysfs", "devtmpfs")


@dataclass(frozen=True)
class Mount:
    """One filesystem the initrd mounts into the new root."""

    source: str  # shell word: a device path, a tag, or $(disk ...) lookup
    target: str  # guest path
    fstype: str
    options: str


def busybox_applets(busybox: Path) -> list[str]:
    """Paths of every applet (``bin/sh``, ``sbin/insmod``...), for symlinks.

    A foreign architecture's busybox cannot run here; Debian builds
    busybox-static from one configuration for every architecture, so the
    host's busybox lists the same applets.
    """
    return proc.output([busybox if runs_here(busybox) else busybox_path(), "--list-full"]).split()


def needed_modules(vm: VMConfig, hypervisor: Hypervisor) -> list[str]:
    """The kernel modules this VM's devices need, before dependency resolution."""
    mv = vm.microvm
    modules = [*hypervisor.guest_modules(vm), "virtio_blk", "overlay", "button", "evdev"]
    if mv.storeOnDisk:
        modules.append(mv.storeDiskType)
    protos = {share.proto for share in mv.shares}
    if "virtiofs" in protos:
        modules += ["fuse", "virtiofs"]
    if "9p" in protos:
        modules += ["9pnet", "9pnet_virtio", "9p"]
    if mv.interfaces:
        modules.append("virtio_net")
    if mv.balloon:
        modules.append("virtio_balloon")
    if mv.hotplugMem:
        modules.append("virtio_mem")
    if mv.vsock.cid is not None:
        modules.append("vmw_vsock_virtio_transport")
    modules += [volume.fsType for volume in mv.volumes if volume.image != CREDENTIALS_IMAGE]
    for fs in vm.guest.fileSystems.values():
        modules += FS_MODULES.get(fs.fsType, [] if fs.fsType in BUILT_IN_FS else [fs.fsType])
    modules += vm.guest.kernel.extraModules
    return list(dict.fromkeys(modules))


def _disk(hypervisor: Hypervisor, index: int, serial: str | None) -> str:
    """Shell word finding a virtio disk: by serial where the hypervisor sets it, else by order."""
    letter = chr(ord("a") + index)
    if serial and hypervisor.supports(Feature.VOLUME_SERIAL):
        return f'"$(disk {shlex.quote(serial)})"'
    return f"/dev/vd{letter}"


def mounts(vm: VMConfig, hypervisor: Hypervisor) -> tuple[Mount, list[Mount]]:
    """The system mount and the other mounts, in the order /init makes them."""
    mv = vm.microvm
    if mv.storeOnDisk:
        system = Mount(_disk(hypervisor, 0, ROOT_SERIAL), "/", mv.storeDiskType, "ro")
        first_volume = 1
    else:
        share = next(s for s in mv.shares if s.tag == STORE_SHARE_TAG)
        system = _share_mount(share.proto, share.tag, "/", read_only=True)
        first_volume = 0
    others: list[Mount] = []
    for i, volume in enumerate(mv.volumes):  # the credentials disk has no mount point
        if volume.mountPoint is None:
            continue
        source = (
            f'"$(label {shlex.quote(volume.label)})"'
            if volume.label
            else _disk(hypervisor, first_volume + i, volume.serial)
        )
        others.append(Mount(source, volume.mountPoint, volume.fsType, "ro" if volume.readOnly else "rw"))
    for share in mv.shares:
        if share.tag != STORE_SHARE_TAG:
            others.append(_share_mount(share.proto, share.tag, share.mountPoint, share.readOnly))
    return system, others


def ordered_file_systems(vm: VMConfig) -> list[tuple[str, FileSystem]]:
    """``guest.fileSystems`` in mount order: a mount after those holding its mount point or its bind source."""
    declared = vm.guest.fileSystems

    def under(path: str, mount: str) -> bool:
        return path == mount or path.startswith(mount.rstrip("/") + "/")

    graph = {
        path: {
            other
            for other in declared
            if other != path and (under(path, other) or (fs.bind and under(fs.device, other)))
        }
        for path, fs in sorted(declared.items())
    }
    try:
        return [(path, declared[path]) for path in TopologicalSorter(graph).static_order()]
    except CycleError as exc:
        raise MicrovmError(
            f"guest.fileSystems: these bind mounts need each other: {' -> '.join(exc.args[1])}"
        ) from None


def _file_systems(vm: VMConfig) -> list[str]:
    """Lines mounting every file system but the network ones (bind sources are made if missing)."""
    lines = []
    for path, fs in ordered_file_systems(vm):
        if fs.network:
            continue
        source = shlex.quote(f"/sysroot/root{fs.device}" if fs.bind else fs.device)
        if fs.bind:
            lines.append(f"mkdir -p {source}")
        options = shlex.quote(",".join(fs.options) or "defaults")
        lines.append(f"mount_at {source} {shlex.quote('/sysroot/root' + path)} {fs.fsType} {options}")
    return ["# guest.fileSystems", *lines] if lines else []


def _credentials(vm: VMConfig, hypervisor: Hypervisor) -> list[str]:
    """Lines unpacking the credentials disk (microvm.credentialFiles) into a tmpfs at the guest's /run.

    The guest's init keeps that /run (systemd and rc.sysinit mount one only where none is).
    """
    mv = vm.microvm
    index = next((i for i, v in enumerate(mv.volumes) if v.image == CREDENTIALS_IMAGE), None)
    if index is None:
        return []
    device = _disk(hypervisor, (1 if mv.storeOnDisk else 0) + index, None)
    target = shlex.quote("/sysroot/root" + CREDENTIALS_DIRS[vm.guest.base])
    return [
        "# microvm.credentialFiles: from their disk into memory, for root only",
        f"credentials={device}",
        'wait_for "$credentials"',
        "mount_at run /sysroot/root/run tmpfs mode=0755,nosuid,nodev",
        f"mkdir -p {target} && chmod 0700 {target}",
        f'tar -x -f "$credentials" -C {target} || fail "cannot unpack the credentials disk $credentials"',
    ]


def _share_mount(proto: str, tag: str, target: str, read_only: bool) -> Mount:
    options = "ro" if read_only else "rw"
    if proto == "9p":
        return Mount(
            shlex.quote(tag), target, "9p", f"{options},trans=virtio,version=9p2000.L,msize=262144,cache=loose"
        )
    return Mount(shlex.quote(tag), target, "virtiofs", options)


INIT_HEAD = r"""#!/bin/sh
# microvm initrd for {name}: mount the system, the volumes and the shares, then start the guest.
# Generated by microvm; see src/microvm/build/initrd.py.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

fail() {{
    echo "microvm initrd: $*" >&2
    echo "microvm initrd: cannot start the guest; powering off" >&2
    sleep 1
    poweroff -f
}}

# retry MESSAGE COMMAND...: run COMMAND every 10 ms until it succeeds; fail with MESSAGE after 10 s
retry() {{
    msg=$1
    shift
    n=0
    until "$@" 2>/dev/null; do
        n=$((n + 1))
        [ "$n" -gt 1000 ] && fail "$msg"
        usleep 10000
    done
}}

# the device with virtio serial number $1, if it is there yet
serial_device() {{
    for dev in /sys/block/vd*; do
        if [ "$(cat "$dev/serial" 2>/dev/null)" = "$1" ]; then
            echo "/dev/${{dev##*/}}"
            return 0
        fi
    done
    return 1
}}

# disk SERIAL / label LABEL: the device with that virtio serial number / filesystem label
disk() {{ retry "no disk with serial $1" serial_device "$1"; }}
label() {{ retry "no disk labelled $1" findfs "LABEL=$1"; }}
wait_for() {{ retry "$1 did not appear" test -e "$1"; }}

# read_ahead DEVICE KIB: how much the kernel reads ahead on that disk
read_ahead() {{ echo "$2" > "/sys/block/${{1##*/}}/queue/read_ahead_kb" || echo "microvm initrd: cannot set the read-ahead of $1" >&2; }}

mount_at() {{
    # mount_at SOURCE TARGET FSTYPE OPTIONS
    case "$1" in /dev/*) wait_for "$1" ;; esac
    mkdir -p "$2"
    mount -t "$3" -o "$4" "$1" "$2" || fail "cannot mount $1 ($3) on $2"
}}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
"""


def init_script(vm: VMConfig, hypervisor: Hypervisor, modules: list[str]) -> str:
    """The initrd's /init for ``vm``."""
    mv, guest = vm.microvm, vm.guest
    lines = [INIT_HEAD.format(name=guest.hostName)]
    for module in modules:
        # not fatal: an optional soft dependency (crc32c-intel without SSE4.2) may not fit the CPU;
        # a missing driver shows up as a mount that fails, with its own message
        lines.append(
            f"insmod /lib/modules/{shlex.quote(module)} || echo {shlex.quote('microvm initrd: cannot load ' + module)} >&2"
        )
    console = hypervisor.console_device(vm)
    if console.startswith("hvc"):
        # a virtio console exists only now that virtio_console is loaded: the kernel could not give
        # it to us as /dev/console, so take it ourselves; the guest's init inherits it
        device = shlex.quote(f"/dev/{console}")
        lines += ["", f"wait_for {device}", f"exec 0<>{device} 1>&0 2>&0"]
    system, others = mounts(vm, hypervisor)
    lines += ["", "# the read-only system"]
    if mv.storeOnDisk:
        lines += [
            f"system={system.source}",
            'wait_for "$system"',
            f'read_ahead "$system" {SYSTEM_READ_AHEAD_KIB}',
            f'mount_at "$system" /sysroot/ro {system.fstype} {system.options}',
        ]
    else:
        lines.append(f"mount_at {system.source} /sysroot/ro {system.fstype} {system.options}")
    overlay_volume = None
    if mv.writableStoreOverlay is not None:
        overlay_volume = next(
            (
                m
                for m in others
                if mv.writableStoreOverlay.startswith(m.target.rstrip("/") + "/") or mv.writableStoreOverlay == m.target
            ),
            None,
        )
    if overlay_volume is not None:
        inside = mv.writableStoreOverlay[len(overlay_volume.target.rstrip("/")) :]
        staging = "/sysroot/overlay-volume"
        lines += [
            "# the writable layer lives on a volume (writableStoreOverlay)",
            f"mount_at {overlay_volume.source} {staging} {overlay_volume.fstype} {overlay_volume.options}",
            f"rw={shlex.quote(staging + inside)}",
        ]
    else:
        lines += ["# the writable layer is a tmpfs", "mount_at rw /sysroot/rw tmpfs mode=0755", "rw=/sysroot/rw"]
    lines += [
        'mkdir -p "$rw/upper" "$rw/work" /sysroot/root',
        (
            'mount -t overlay -o "lowerdir=/sysroot/ro,upperdir=$rw/upper,workdir=$rw/work" overlay /sysroot/root'
            ' || fail "cannot mount the overlay root"'
        ),
    ]
    if overlay_volume is not None:
        target = shlex.quote("/sysroot/root" + overlay_volume.target)
        lines += [f"mkdir -p {target}", f"mount --move /sysroot/overlay-volume {target}"]
    lines.append("# volumes and shares")
    for m in others:
        if m is not overlay_volume:
            lines.append(
                f"mount_at {m.source} {shlex.quote('/sysroot/root' + m.target)} {m.fstype} {shlex.quote(m.options)}"
            )
    lines += _credentials(vm, hypervisor)
    lines += _file_systems(vm)
    lines += [
        "",
        f"echo {shlex.quote(guest.hostName)} > /sysroot/root/etc/hostname",
        f"echo {shlex.quote(guest.machineId or '')} > /sysroot/root/etc/machine-id",
        "for fs in dev proc sys; do mkdir -p /sysroot/root/$fs; mount --move /$fs /sysroot/root/$fs; done",
        f"exec switch_root /sysroot/root {shlex.quote(guest_init(vm))}",
    ]
    return "\n".join(lines) + "\n"


def guest_init(vm: VMConfig) -> str:
    """The guest's PID 1 after switch_root."""
    return "/lib/systemd/systemd" if vm.guest.base == "debian" else "/sbin/init"


def unsigned_modules(vm: VMConfig) -> bool:
    """Whether the initrd's modules lose their signatures (optimize, unless the kernel must enforce them)."""
    enforced = any(p.startswith(("module.sig_enforce", "lockdown")) for p in vm.microvm.kernelParams)
    return vm.microvm.optimize.enable and not enforced


def use_local_initrd(store: Store, initrd: Path) -> Path:
    """Put a user's initrd (``microvm.initrdPath``) into the store, keyed by content: the runner
    then refers to a file no later edit of the original can change under it."""
    if not initrd.is_file():
        raise MicrovmError(f"initrd {initrd} does not exist")

    def build(out: Path) -> None:
        shutil.copyfile(initrd, out / "initrd")

    entry, _ = store.add("initrd-local", {"initrd": file_digest(initrd)}, build)
    return entry / "initrd"


def build_initrd(store: Store, vm: VMConfig, hypervisor: Hypervisor, kernel: KernelEntry) -> Path:
    """Build (or find) the initrd for ``vm``; return the initrd file."""
    busybox = guest_busybox(store, vm.guest.arch)
    if kernel.modules_dir is None:
        module_files: list[Path] = []
    else:
        module_files = resolve_modules(kernel.modules_dir, needed_modules(vm, hypervisor))
    modules = [str(f.relative_to(kernel.modules_dir)) for f in module_files] if kernel.modules_dir else []
    script = init_script(vm, hypervisor, modules)
    unsigned = unsigned_modules(vm)
    inputs = {
        "format": INITRD_FORMAT,
        "unsigned_modules": unsigned,
        "kernel": str(kernel.path),
        "modules": modules,
        "init": script,
        "busybox": file_digest(busybox),
    }

    def build(out: Path) -> None:
        archive = CpioArchive()
        for d in ("dev", "proc", "sys", "sysroot", "lib/modules"):
            archive.add_dir(d)
        archive.add_char_device("dev/console", 5, 1)
        archive.add_char_device("dev/null", 1, 3, mode=0o666)
        archive.add_host_file("bin/busybox", busybox, mode=0o755)
        for applet in busybox_applets(busybox):
            if applet != "bin/busybox":
                archive.add_symlink(applet, "/bin/busybox")
        for rel, path in zip(modules, module_files):
            if unsigned and path.suffix == ".ko":
                archive.add_file(f"lib/modules/{rel}", without_signature(path.read_bytes()), mode=0o644)
            else:
                archive.add_host_file(f"lib/modules/{rel}", path, mode=0o644)
        archive.add_file("init", script.encode(), mode=0o755)
        with (out / "initrd").open("wb") as f:
            archive.write(f)

    entry, _ = store.add(f"initrd-{vm.guest.hostName}", inputs, build, references=(kernel.path,))
    return entry / "initrd"
