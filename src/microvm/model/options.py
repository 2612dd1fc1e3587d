"""The option model: every option a user can set, typed, with defaults and docs.

Names follow microvm.nix (camelCase) so its documentation maps one to one;
``docs/from-microvm-nix.md`` lists the few renamings. Declarations only, as
microvm.nix's ``options.nix``: types and single-table rules live here;
defaults that depend on other options and the shorthands (mounts, the base
interface) are filled in by :mod:`microvm.model.desugar`; rules that span
options (uniqueness, hypervisor capabilities) live in
:mod:`microvm.config.checks`. Validated models are frozen: a variant is a
``model_copy(update=...)``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .addresses import BASE_N_MAX, base_mac, base_tap, ipv6_host_interface, nth_host_address
from .names import Hypervisor, valid_name

# Used with fullmatch: `$` would also match before a final newline.
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
IFNAME_MAX = 15
# A systemd unit name (systemd.unit(5)): an optional instance after '@', as in postgresql@15-main.service.
UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?(\.[a-z]+)?$")


def _unit_name(value: str) -> str:
    if not UNIT_RE.match(value):
        raise ValueError(
            f"{value!r} is not a service or systemd unit name: use letters, digits and ':', '_', '.', '-', "
            "with at most one '@' for an instance (e.g. postgresql@15-main.service)"
        )
    return value


def _ifname(value: str) -> str:
    valid_name(value)
    if len(value) > IFNAME_MAX:
        raise ValueError(f"{value!r} is {len(value)} characters long; Linux interface names have at most 15")
    return value


def valid_hostname(value: str) -> str:
    if not HOSTNAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid host name: 1-63 letters, digits and '-', not starting or ending with '-'"
        )
    return value


def _node_name(value: str) -> str:
    """A cluster node's name: a host name or a fully qualified one (what ``crm_node -l`` shows)."""
    if not all(HOSTNAME_RE.fullmatch(label) for label in value.split(".")):
        raise ValueError(f"{value!r} is not a cluster node's name: a host name such as n1 or n1.example.org")
    return value


def _mac(value: str) -> str:
    if not MAC_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a MAC address; expected six hex pairs like 02:00:00:00:00:01")
    if int(value[:2], 16) & 1:
        raise ValueError(f"{value!r} is a multicast MAC address; the first octet must be even (e.g. 02:...)")
    return value.lower()


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path; it must start with '/'")
    return value


def _machine_id(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        raise ValueError(f"{value!r} is not a machine id: 32 lowercase hex digits")
    return value


def _ipv4_interface(value: str) -> str:
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 address with prefix length like 10.213.0.1/24") from exc
    if iface.network.prefixlen > 30:
        raise ValueError(f"{value!r}: a /{iface.network.prefixlen} leaves no room for guests; use /30 or wider")
    return value


def _ipv6_prefix(value: str) -> str:
    try:
        ipaddress.IPv6Network(f"{value}/64" if "/" not in value else value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv6 /64 prefix like fd12:3456:789a::") from exc
    return value


def listen_address(value: str) -> tuple[str | None, str, int]:
    """``unix:/PATH`` -> (PATH, "", 0); ``ADDRESS:PORT`` or ``[V6]:PORT`` -> (None, ADDRESS, PORT) (`microvm web`)."""
    if value.startswith("unix:/"):
        return value.removeprefix("unix:"), "", 0
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number < 65536:
        raise ValueError(f"{value!r} is not unix:/PATH (absolute) or ADDRESS:PORT (an IP address), e.g. 127.0.0.1:8480")
    return None, host, number


def _listen(value: str) -> str:
    listen_address(value)
    return value


def _guest_path(value: str) -> str:
    _absolute(value)
    if ".." in value.split("/"):
        raise ValueError(f"{value!r} must not contain '..' components")
    return value


Name = Annotated[str, AfterValidator(valid_name)]
UnitName = Annotated[str, AfterValidator(_unit_name)]
IfName = Annotated[str, AfterValidator(_ifname)]
HostName = Annotated[str, AfterValidator(valid_hostname)]
NodeName = Annotated[str, AfterValidator(_node_name)]
Mac = Annotated[str, AfterValidator(_mac)]
AbsolutePath = Annotated[str, AfterValidator(_absolute)]
GuestPath = Annotated[str, AfterValidator(_guest_path)]  # a path written into the guest tree at build time
MachineId = Annotated[str, AfterValidator(_machine_id)]
PositiveMB = Annotated[int, Field(gt=0)]
# Marks a field whose default is computed from other options (for the reference).
COMPUTED = {"computed": True}


class Options(BaseModel):
    """Base of every options table: strict TOML types, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_default=True,
        frozen=True,
    )

    def dump(self) -> dict:
        """The options as the user writes them (camelCase keys, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Enable(Options):
    """An on/off table (``optimize.enable``): the field holding it says what it turns on."""

    enable: bool = False


# --- interfaces ----------------------------------------------------------------


class MacvtapOptions(Options):
    link: IfName | None = Field(None, description="Host interface the macvtap attaches to (required for type macvtap).")
    mode: Literal["private", "vepa", "bridge", "passthru", "source"] | None = Field(
        None, description="macvtap mode (required for type macvtap)."
    )


class TapOptions(Options):
    vhost: bool = Field(
        False,
        description=(
            "Move the tap's packet processing into the host kernel (vhost-net; qemu only): much faster than in "
            "the hypervisor. Needs `/dev/vhost-net` on the host (`modprobe vhost_net`)."
        ),
    )


class Interface(Options):
    type: Literal["user", "tap", "macvtap", "bridge"] = Field(
        "user",
        description=(
            "user: the hypervisor's NAT (qemu/kvmtool); tap: a tap device created on the host; "
            "macvtap: a macvtap on `macvtap.link`; bridge: qemu-bridge-helper attaches a tap to `bridge`."
        ),
    )
    id: IfName = Field(description="Interface name on the host (at most 15 characters, unique).", examples=["vm-web"])
    mac: Mac = Field(description="MAC address of the guest's interface.", examples=["02:00:00:00:00:01"])
    bridge: IfName | None = Field(
        None,
        description=(
            "Bridge to attach to: for type bridge the one qemu-bridge-helper uses (required); for type tap the one "
            "`bin/tap-up` attaches the tap to, e.g. one of the host's `network.bridges` (optional: taps matching "
            "the host's `network.basic.tapMatch` join its bridge anyway)."
        ),
    )
    macvtap: MacvtapOptions = Field(default_factory=MacvtapOptions, description="macvtap settings.")
    tap: TapOptions = Field(default_factory=TapOptions, description="tap settings (type tap).")


class PortAddress(Options):
    address: str = Field("", description="Address to bind/forward to; empty means any (host) or the guest's.")
    port: Annotated[int, Field(gt=0, lt=65536)] = Field(description="Port number.")


class ForwardPort(Options):
    from_: Literal["host", "guest"] = Field(
        "host", alias="from", description="host: host port -> guest; guest: guest connection -> host."
    )
    proto: Literal["tcp", "udp"] = Field("tcp", description="Protocol.")
    host: PortAddress = Field(description="Host side.")
    guest: PortAddress = Field(description="Guest side.")


# --- storage -------------------------------------------------------------------

ImageType = Literal["raw", "qcow2", "vhd", "vhdx"]


class Volume(Options):
    image: str = Field(
        description="Image file; relative paths are in the VM's state directory. Created if missing, never overwritten.",
        examples=["var.img"],
    )
    mountPoint: AbsolutePath | None = Field(None, description="Where the guest mounts it; null to leave it unmounted.")
    size: PositiveMB = Field(description="Size in MB when created.", examples=[1024])
    autoCreate: bool = Field(True, description="Create the image (truncate + mkfs) if missing.")
    fsType: str = Field("ext4", description="Filesystem made on creation and used to mount.")
    mkfsExtraArgs: list[str] = Field([], description="Extra arguments for mkfs.")
    label: Annotated[str, Field(min_length=1, max_length=16)] | None = Field(
        None, description="Filesystem label; the guest mounts by label when set, else by disk order."
    )
    serial: Annotated[str, Field(min_length=1, max_length=20)] | None = Field(
        None, description="Disk serial number seen by the guest."
    )
    direct: bool = Field(False, description="Bypass the host page cache (O_DIRECT).")
    readOnly: bool = Field(False, description="Attach read-only.")
    imageType: ImageType = Field(
        "raw",
        description=(
            "Format of the image: the hypervisor is told it (no guessing from the content), and a missing image "
            "is created in it (with `qemu-img`). qemu and cloud-hypervisor take all four."
        ),
    )
    backingFile: str | None = Field(
        None,
        description=(
            "qcow2 only: create the image as a copy-on-write overlay of this image (relative paths are in the "
            "VM's state directory), which the guest reads but never changes; no mkfs then. The overlay is `size` "
            "MB or the backing image's size, whichever is larger. Not in microvm.nix."
        ),
    )
    backingFormat: ImageType = Field("raw", description="Format of `backingFile`. Not in microvm.nix.")

    @model_validator(mode="after")
    def _backing_needs_qcow2(self) -> Volume:
        if self.backingFile is not None and self.imageType != "qcow2":
            raise ValueError(f'backingFile needs imageType = "qcow2" (this is {self.imageType!r})')
        return self


class Share(Options):
    tag: Name = Field(description="Unique tag the guest mounts the share by.", examples=["ro-store"])
    source: str = Field(
        description=(
            "Host directory; relative paths are in the VM's state directory. The word `store` (microvm.nix's "
            "`/nix/store`) shares the guest system from the host store: that share is the guest's root, "
            "read-only, with the tag `ro-store`, and `storeOnDisk` defaults to false."
        ),
        examples=["/srv/data"],
    )
    mountPoint: AbsolutePath = Field(description="Where the guest mounts it.")
    proto: Literal["9p", "virtiofs"] = Field("9p", description="9p (served by qemu) or virtiofs (by virtiofsd).")
    socket: str | None = Field(
        None,
        json_schema_extra=COMPUTED,
        description="virtiofs only: vhost-user socket path. Default: `<hostName>-virtiofs-<tag>.sock`.",
    )
    securityModel: Literal["none", "passthrough", "mapped", "mapped-file"] = Field(
        "none", description="9p security model."
    )
    readOnly: bool = Field(False, description="Share read-only.")
    posixAcl: bool = Field(True, description="virtiofs: let virtiofsd handle POSIX ACLs.")
    cache: Literal["auto", "always", "metadata", "never"] = Field(
        "auto",
        description=(
            "virtiofs: how long the guest caches what it read (virtiofsd `--cache`); `metadata` needs the Rust "
            "virtiofsd. 9p shares take only auto."
        ),
    )
    virtiofsdExtraArgs: list[str] = Field([], description="virtiofs: extra arguments for this share's virtiofsd.")

    @model_validator(mode="after")
    def _cache_is_virtiofs(self) -> Share:
        if self.cache != "auto" and self.proto != "virtiofs":
            raise ValueError(f'cache = {self.cache!r} needs proto = "virtiofs" (qemu serves 9p shares uncached)')
        return self


class VirtiofsdOptions(Options):
    threadPoolSize: str | Annotated[int, Field(ge=0)] = Field(
        "`nproc`",
        description="Threads per virtiofsd; the string `nproc` means as many as the host has cores.",
    )
    inodeFileHandles: Literal["never", "prefer", "mandatory"] | None = Field(
        None, description="When virtiofsd references inodes by file handle."
    )
    extraArgs: list[str] = Field([], description="Extra arguments for every virtiofsd.")
    group: str | None = Field("kvm", description="Group virtiofsd runs with, so the hypervisor can use its socket.")


class Device(Options):
    bus: Literal["pci", "usb"] = Field(description="pci (vfio-pci) or usb (usb-host, qemu only).")
    path: str = Field(
        description="PCI address (0000:01:00.0) or USB vendorid/productid (vendorid=0x1234,productid=0x5678)."
    )
    qemu: QemuDeviceOptions = Field(default_factory=lambda: QemuDeviceOptions(), description="qemu-only settings.")


class QemuDeviceOptions(Options):
    deviceExtraArgs: str | None = Field(None, description="Appended to the -device argument, e.g. `x-vga=on`.")


Device.model_rebuild()


# --- per hypervisor -------------------------------------------------------------


class QemuOptions(Options):
    machine: str | None = Field(
        None,
        json_schema_extra=COMPUTED,
        description="qemu machine type. Default: microvm on x86_64, virt on aarch64. q35 also works.",
    )
    machineOpts: dict[str, str] | None = Field(
        None, description="Machine options (`-M TYPE,key=value`); null for the defaults."
    )
    extraArgs: list[str] = Field([], description="Extra qemu arguments, appended.")
    serialConsole: bool = Field(True, description="Console on the serial port (else virtio).")
    tbSize: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description=(
            "Size in MiB of TCG's cache of translated guest code (`-accel tcg,tb-size=`), used only under "
            "emulation; it is host memory, filled as the guest runs new code. Null: a twelfth of `microvm.mem`, "
            "at least 32 (64 for a Debian guest or several vCPUs) and at most 256 (qemu's own default, 1 GiB, "
            "lets a busybox boot fill 48 MiB)."
        ),
    )
    pcieRootPorts: list[PcieRootPort] = Field(
        [],
        description=(
            "PCIe root ports (`-device pcie-root-port`) to hot-plug PCIe devices into (through QMP `device_add`): "
            "the q35 machine cannot hot-plug on its root bus. Not on the pc machine (no PCIe); microvm gets `pcie=on`."
        ),
    )


class PcieRootPort(Options):
    id: Name = Field(description="Unique id of the port, the `bus` of a device plugged into it.", examples=["rp0"])
    bus: Name | None = Field(None, description="Bus the port sits on; null for the root bus (pcie.0).")
    chassis: Annotated[int, Field(ge=0, le=255)] | None = Field(None, description="Chassis number.")
    slot: Annotated[int, Field(ge=0, le=65535)] | None = Field(
        None, description="Slot number (chassis and slot must be unique together)."
    )
    addr: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{1,2}(\.[0-7])?$")] | None = Field(
        None, description="Address on the parent bus, `slot[.function]` in hex like `1c.0`."
    )


QemuOptions.model_rebuild()


class ExtraArgs(Options):
    extraArgs: list[str] = Field([], description="Extra command-line arguments, appended.")


class CrosvmOptions(ExtraArgs):
    pivotRoot: str | None = Field(None, description="crosvm sandbox pivot root directory.")


class FirecrackerOptions(ExtraArgs):
    extraConfig: dict = Field({}, description="Merged into the generated firecracker JSON config.")
    cpu: dict[str, Any] | None = Field(
        None,
        description=(
            "Custom CPU template (firecracker's docs/cpu_templates: `cpuid_modifiers`, `msr_modifiers`, "
            "`reg_modifiers`, ...), written next to the config and given as its `cpu-config`."
        ),
    )
    driveIoEngine: Literal["Async", "Sync"] = Field(
        "Async", description="I/O engine of every drive: Async (io_uring) or Sync (blocking)."
    )


# --- the microvm table ----------------------------------------------------------


class MicroVMOptions(Options):
    hypervisor: Hypervisor = Field("qemu", description="Which hypervisor runs the VM.")
    accel: Literal["auto", "kvm", "tcg"] = Field(
        "auto",
        description=(
            "CPU virtualisation: kvm, tcg (qemu emulation, slow but works everywhere), or auto: kvm when a "
            "probe shows it can boot a guest, else tcg (see `microvm doctor`). Not in microvm.nix."
        ),
    )
    vcpu: Annotated[int, Field(gt=0, le=255)] = Field(1, description="Number of virtual CPUs.")
    mem: PositiveMB = Field(512, description="Guest RAM in MB.")
    hugepageMem: bool = Field(False, description="Back guest RAM with huge pages.")
    hotplugMem: Annotated[int, Field(ge=0)] = Field(
        0, description="Extra RAM in MB the guest can get through virtio-mem."
    )
    hotpluggedMem: Annotated[int, Field(ge=0)] = Field(0, description="Of hotplugMem, how much is plugged at start.")
    balloon: bool = Field(False, description="Add a virtio balloon device (see `microvm-balloon`).")
    initialBalloonMem: Annotated[int, Field(ge=0)] = Field(0, description="Balloon size in MB at start.")
    deflateOnOOM: bool = Field(True, description="Let the guest deflate the balloon on OOM.")
    cpu: str | None = Field(
        None,
        description="Emulate this CPU model with TCG (e.g. `cortex-a53`); null means the host CPU under KVM, and under TCG qemu's `max` (on x86 without ERMS, which only slows emulation down).",
    )
    user: Name | None = Field(None, description="User the hypervisor drops to when started as root.")
    runAsRoot: bool = Field(
        False,
        description=(
            "Let `microvm run` started as root run the hypervisor as root. By default it runs as user `microvm`, "
            "group `kvm` (as under systemd; created if missing), and root only prepares what needs it (virtiofsd, "
            "the state directory). Not in microvm.nix."
        ),
    )
    socket: str | None = Field(
        None,
        json_schema_extra=COMPUTED,
        description="Control socket (relative to the state directory). Default: `<hostName>.sock` where the hypervisor has one.",
    )
    preStart: str = Field("", description="Shell commands run before the hypervisor starts.")
    extraArgsScript: str | None = Field(
        None,
        description=(
            "Shell command run by `bin/microvm-run` just before the hypervisor starts (in the state directory, "
            "after `preStart`); its output, split at blanks, is appended to the hypervisor's arguments."
        ),
    )
    registerWithMachined: bool = Field(
        False,
        description=(
            "Register the running VM with systemd-machined (class vm, `guest.machineId` as its UUID), so "
            "`machinectl list/status/terminate` see it. Under systemd (`microvm@`) only."
        ),
    )
    readiness: bool = Field(
        False,
        description=(
            "The guest tells the host when it has booted (busybox: its system init is done; Debian: "
            "multi-user.target is reached), on a virtio-serial port. Under systemd with "
            "`microvm.host.useNotifySockets`, `systemctl start microvm@NAME` returns only then."
        ),
    )
    migratable: bool = Field(
        False,
        description=(
            "The VM may be moved to another host while it runs (`microvm migrate`); its volumes and shares must "
            "then be on storage every host sees at the same path. Needs a hypervisor with live migration (qemu). "
            "Not in microvm.nix."
        ),
    )
    prettyProcnames: bool = Field(True, description="Name the hypervisor process `microvm@<hostName>`.")
    kernelParams: list[str] = Field([], description="Kernel command-line parameters, after the ones microvm needs.")
    initrdPath: str | None = Field(
        None,
        description="Use this initrd instead of building one (relative to the file that sets it; copied into the store).",
    )
    optimize: Enable = Field(
        default_factory=lambda: Enable(enable=True),
        description="Trim the guest for fast boot: a quiet console, no crypto self-tests at boot (`cryptomgr.notests`), no rewriting of `lock` prefixes on a one-vCPU x86 guest (`noreplace-smp`), initrd modules without signatures to check (kept when `kernelParams` enforce them).",
    )
    guest: Enable = Field(
        default_factory=lambda: Enable(enable=True),
        description=(
            "Build microvm's guest side: the system tree, its root image and the initrd. Off, you bring the "
            "guest: the runner boots `guest.kernel` with `microvm.initrdPath` and `microvm.kernelParams` "
            "(e.g. an initramfs, or `root=` on one of `microvm.volumes`), and the other `guest` options are unused."
        ),
    )
    interfaces: list[Interface] = Field([], description="Network interfaces.")
    forwardPorts: list[ForwardPort] = Field([], description="Ports forwarded through qemu user networking.")
    volumes: list[Volume] = Field([], description="Disk images attached to the VM.")
    shares: list[Share] = Field([], description="Host directories shared with the guest.")
    virtiofsd: VirtiofsdOptions = Field(default_factory=VirtiofsdOptions, description="virtiofsd settings.")
    storeOnDisk: bool | None = Field(
        None,
        json_schema_extra=COMPUTED,
        description=(
            "Put the guest system in a disk image (true) or share it from the host store (false). "
            "Default: true unless a share's source is the store."
        ),
    )
    storeDiskType: Literal["erofs", "squashfs"] = Field("erofs", description="Filesystem of the system image.")
    storeDiskErofsFlags: list[str] = Field(["-zlz4hc"], description="mkfs.erofs flags.")
    storeDiskSquashfsFlags: list[str] = Field(["-comp", "zstd"], description="mksquashfs flags.")
    writableStoreOverlay: AbsolutePath | None = Field(
        None,
        description="Guest path (usually a volume's mountPoint) holding a writable overlay over the system.",
    )
    credentialFiles: dict[Name, str] = Field(
        {},
        description=(
            "Secrets for the guest: credential name -> host file (relative paths are in the VM's state directory). "
            "Read at every start, never copied into the store: the runner packs them into a small read-only "
            "disk (`credentials.img`, mode 0600) that the guest unpacks into a tmpfs, `/run/credentials` (busybox) "
            "or `/run/microvm/credentials` (debian, for `LoadCredential=`); services take them with "
            "`guest.services.<name>.credentials`. Under systemd the runner reads `$CREDENTIALS_DIRECTORY/<name>` "
            "first, so the host unit may load root-only files with `LoadCredential=`. Every hypervisor."
        ),
        examples=[{"db-password": "/etc/microvm/secrets/db-password"}],
    )
    devices: list[Device] = Field([], description="Host devices passed through.")
    vsock: VsockOptions = Field(default_factory=lambda: VsockOptions(), description="virtio-vsock.")
    graphics: GraphicsOptions = Field(default_factory=lambda: GraphicsOptions(), description="A graphical display.")
    binScripts: dict[Name, str] = Field({}, description="Extra scripts put in the runner's bin/ (name -> script text).")
    qemu: QemuOptions = Field(default_factory=QemuOptions, description="qemu settings.")
    cloud_hypervisor: ExtraArgs = Field(
        default_factory=ExtraArgs, alias="cloud-hypervisor", description="cloud-hypervisor settings."
    )
    firecracker: FirecrackerOptions = Field(default_factory=FirecrackerOptions, description="firecracker settings.")
    crosvm: CrosvmOptions = Field(default_factory=CrosvmOptions, description="crosvm settings.")
    kvmtool: ExtraArgs = Field(default_factory=ExtraArgs, description="kvmtool settings.")
    stratovirt: ExtraArgs = Field(default_factory=ExtraArgs, description="stratovirt settings.")
    alioth: ExtraArgs = Field(default_factory=ExtraArgs, description="alioth settings.")


class VsockOptions(Options):
    cid: Annotated[int, Field(ge=3, lt=2**32 - 1)] | None = Field(
        None, description="Guest context id (3 or more, unique per host); null for no vsock."
    )
    ssh: Enable = Field(
        default_factory=Enable,
        description=(
            "An SSH server on vsock port 22 (base debian; installs openssh-server), for `microvm ssh NAME` "
            "without any network. Needs `cid`."
        ),
    )

    @model_validator(mode="after")
    def _ssh_needs_cid(self) -> VsockOptions:
        if self.ssh.enable and self.cid is None:
            raise ValueError("ssh.enable needs a cid (vsock is off without one)")
        return self


class GraphicsOptions(Options):
    enable: bool = Field(False, description="A graphical display (qemu): virtio GPU, keyboard and tablet.")
    backend: Literal["gtk", "headless"] = Field(
        "gtk",
        description=(
            "gtk: a window on the host's desktop (for `microvm run` in a session, not under systemd); headless: "
            "no window, the display is served by VNC on the unix socket `<hostName>-vnc.sock` in the state "
            "directory (works under systemd)."
        ),
    )


MicroVMOptions.model_rebuild()


# --- the guest operating system -------------------------------------------------


class KernelOptions(Options):
    flavor: Literal["auto", "cloud", "generic"] = Field(
        "auto",
        description="Debian kernel: cloud (small, fast), generic (has 9p), auto: cloud unless a 9p share needs generic.",
    )
    package: str | None = Field(None, description="Exact Debian kernel package, e.g. linux-image-6.1.0-28-cloud-amd64.")
    image: str | None = Field(None, description="Use this kernel image instead of a Debian package.")
    modulesDir: str | None = Field(None, description="Modules directory (lib/modules/<release>) matching `image`.")
    extraModules: list[str] = Field([], description="Kernel modules to load at boot besides the ones devices need.")


class Service(Options):
    description: str = Field("", description="What the service is.")
    command: str = Field(description="Command line (run by /bin/sh).", examples=["httpd -f -p 80 -h /srv/www"])
    type: Literal["simple", "oneshot"] = Field(
        "simple", description="simple: runs in the background; oneshot: runs to completion at boot, in order."
    )
    user: Name | None = Field(None, description="User to run as; default root.")
    environment: dict[str, str] = Field({}, description="Environment variables.")
    after: list[UnitName] = Field(
        [],
        description=(
            "Services to start before this one; base debian: also any systemd unit, instances included "
            "(`postgresql@15-main.service`, `network-online.target`)."
        ),
    )
    restart: bool = Field(False, description="Restart the service when it exits (simple services).")
    enable: bool = Field(True, description="Start at boot.")
    startAt: str | None = Field(
        None,
        description=(
            "Base debian: run the service on this systemd calendar schedule (a timer, `OnCalendar=`) "
            "instead of at boot, e.g. `hourly` or `*-*-* 04:00:00`."
        ),
    )
    credentials: list[Name] = Field(
        [],
        description=(
            "Names of `microvm.credentialFiles` the service reads from `$CREDENTIALS_DIRECTORY` (debian: "
            "`LoadCredential=`, readable by the service's user; busybox: `/run/credentials`, root only)."
        ),
    )
    environmentCredential: Name | None = Field(
        None,
        description="A credential of `KEY=value` lines that become the service's environment (`EnvironmentFile=`).",
    )


def _ip_interface(value: str) -> str:
    try:
        ipaddress.ip_interface(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an address with prefix length like 10.0.0.2/24 or fd00::2/64") from exc
    if "/" not in value:
        raise ValueError(f"{value!r} needs a prefix length, like {value}/24 (IPv4) or {value}/64 (IPv6)")
    return value


def _ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from exc
    return value


def _ip_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a network like 10.1.0.0/16, fd00::/8 or 0.0.0.0/0") from exc
    return value


IPInterface = Annotated[str, AfterValidator(_ip_interface)]
IPAddress = Annotated[str, AfterValidator(_ip_address)]
IPNetwork = Annotated[str, AfterValidator(_ip_network)]


class Route(Options):
    destination: IPNetwork = Field(description="Destination network; 0.0.0.0/0 or ::/0 for a default route.")
    gateway: IPAddress | None = Field(None, description="Next hop; null for an on-link route.")


class InterfaceNetwork(Options):
    dhcp: bool = Field(True, description="Get an IPv4 address by DHCP.")
    acceptRA: bool = Field(True, description="Configure IPv6 from router advertisements (SLAAC).")
    name: IfName | None = Field(
        None,
        description="Name of the interface in the guest (it is found by its MAC); null keeps the kernel's (eth0...).",
    )
    linkLocal: bool = Field(True, description="Give the interface an IPv6 link-local address (fe80::/64).")
    addresses: list[IPInterface] = Field(
        [], description="Static addresses with prefix length.", examples=[["10.0.0.2/24"]]
    )
    routes: list[Route] = Field([], description="Static routes through this interface.")


class RoutedNetwork(Options):
    """The routed layout of microvm.nix's routed-network guide: no shared segment, a host route per VM.

    The host has ``ipv4Subnet``'s address (as /32) and ``<ipv6Prefix>1`` (as
    /128) on every routed tap and routes each VM's addresses to its tap; VM
    ``n`` has the n+1-th other address of each, and routes everything through
    the host. The same values must be set on the host (``network.routed``) and
    in the VM (``guest.network.base.routed``).
    """

    enable: bool = Field(False, description="Route instead of bridge: a point-to-point link and host routes per VM.")
    ipv4Subnet: Annotated[str, AfterValidator(_ipv4_interface)] = Field(
        "10.214.0.1/24", description="The host's address and the subnet VM addresses come from (each as a /32)."
    )
    ipv6Prefix: Annotated[str, AfterValidator(_ipv6_prefix)] | Literal[False] = Field(
        "fd12:3456:789b::",
        description="IPv6 /64 the host (`<prefix>1`) and VM addresses (as /128) come from; false for none.",
    )

    def host_addresses(self) -> list[str]:
        """The host's side of every routed tap."""
        v4 = ipaddress.IPv4Interface(self.ipv4Subnet).ip
        return [f"{v4}/32"] + ([f"{ipv6_host_interface(self.ipv6Prefix).split('/')[0]}/128"] if self.ipv6Prefix else [])

    def vm_addresses(self, n: int) -> list[str]:
        """VM ``n``'s addresses (/32 and /128)."""
        found = [f"{nth_host_address(self.ipv4Subnet, n)}/32"]
        if self.ipv6Prefix:
            found.append(f"{nth_host_address(ipv6_host_interface(self.ipv6Prefix), n)}/128")
        return found

    def subnets(self) -> list[str]:
        found = [str(ipaddress.IPv4Interface(self.ipv4Subnet).network)]
        if self.ipv6Prefix:
            found.append(str(ipaddress.IPv6Interface(ipv6_host_interface(self.ipv6Prefix)).network))
        return found


class BaseNetwork(Options):
    """The wrapper module's ``network.base``: one tap on the host's VM bridge, numbered per host.

    VM ``n`` gets the tap ``vm<n>`` (matching the host's default ``tapMatch``)
    and the MAC ``02:00:00:01:HH:LL`` (``n`` as two hex bytes); the host's DHCP
    server hands that MAC the same IPv4 address every time (see
    :func:`microvm.model.addresses.base_ipv4`), and SLAAC derives the IPv6
    address from the MAC.
    """

    enable: bool = Field(
        False, description="Add one tap interface on the host bridge, with MAC and name derived from `n`."
    )
    n: Annotated[int, Field(ge=0, le=BASE_N_MAX)] = Field(
        0, description="The VM's number on this host (unique across installed VMs); gives its MAC and fixed address."
    )
    routed: RoutedNetwork = Field(
        default_factory=RoutedNetwork,
        description=(
            "Routed layout instead of the bridge: the tap is `rvm<n>` (not on any bridge) and the guest gets static "
            "addresses with routes through the host. Must match the host's `network.routed`."
        ),
    )

    @property
    def tap(self) -> str:
        return base_tap(self.n, self.routed.enable)

    @property
    def mac(self) -> str:
        return base_mac(self.n)

    def interface(self) -> Interface:
        return Interface(type="tap", id=self.tap, mac=self.mac)


class GuestNetwork(Options):
    base: BaseNetwork = Field(default_factory=BaseNetwork, description="A ready interface on the host's VM bridge.")
    interfaces: dict[IfName, InterfaceNetwork] = Field(
        {},
        description=(
            "Per-interface settings, keyed by `microvm.interfaces[].id` (the guest finds the interface by its MAC). "
            "Interfaces not listed use DHCP and SLAAC."
        ),
    )
    nameservers: list[IPAddress] = Field([], description="DNS servers; empty means the ones DHCP gives.")


class User(Options):
    """A login account (NixOS ``users.users.<name>``), base debian."""

    uid: Annotated[int, Field(ge=0, lt=65534)] | None = Field(
        None, json_schema_extra=COMPUTED, description="User id. Default: the next free id from 1000, by name."
    )
    description: str = Field("", description="Full name or purpose (the GECOS field).")
    home: GuestPath | None = Field(
        None, json_schema_extra=COMPUTED, description="Home directory, created at build time. Default: /home/<name>."
    )
    shell: AbsolutePath = Field("/bin/bash", description="Login shell.")
    groups: list[Name] = Field(
        [], description="Supplementary groups: the guest's own (e.g. sudo) or ones declared in `guest.groups`."
    )
    hashedPassword: str | None = Field(
        None,
        description="crypt(3) hash of the password (`mkpasswd -m sha-512`); null locks password login.",
    )
    authorizedKeys: list[str] = Field([], description="SSH public keys allowed to log in as this user.")


class Group(Options):
    """A group of the guest (NixOS ``users.groups.<name>``), base debian."""

    gid: Annotated[int, Field(ge=0, lt=65534)] | None = Field(
        None,
        json_schema_extra=COMPUTED,
        description="Group id; an existing group must have it. Default: the next free id from 1000, after the users'.",
    )


class GuestFile(Options):
    """A file written into the guest system at build time."""

    text: str | None = Field(None, description="The file's content.")
    source: str | None = Field(
        None, description="Host file to copy instead; relative paths are relative to the config file that sets it."
    )
    mode: Annotated[str, Field(pattern=r"^0?[0-7]{3,4}$")] = Field("0644", description="Octal permissions.")
    user: Name = Field("root", description="Owner (a user of the guest).")
    group: Name = Field("root", description="Group (a group of the guest).")

    @model_validator(mode="after")
    def _one_source(self) -> GuestFile:
        if (self.text is None) == (self.source is None):
            raise ValueError("set exactly one of text or source")
        return self


class Firewall(Options):
    enable: bool = Field(False, description="Drop incoming traffic except the allowed ports (nftables, base debian).")
    allowedTCPPorts: list[Annotated[int, Field(gt=0, lt=65536)]] = Field([], description="TCP ports open to everyone.")
    allowedUDPPorts: list[Annotated[int, Field(gt=0, lt=65536)]] = Field([], description="UDP ports open to everyone.")


class DebianOptions(Options):
    suite: Name = Field("bookworm", description="Debian release to install.")
    variant: Literal["essential", "required", "minbase", "buildd", "important", "debootstrap", "standard"] = Field(
        "minbase", description="mmdebstrap variant: which priority of packages forms the base."
    )
    mirror: str = Field(
        "http://deb.debian.org/debian", description="Debian mirror (a snapshot.debian.org URL pins time)."
    )
    components: list[Name] = Field(["main"], description="Archive components.")
    lock: str | None = Field(
        None,
        description=(
            "JSON file (name -> version, like the runner's share/microvm/packages.json) pinning the declared packages; "
            "a build whose installed versions differ from it fails. Relative to the config file that sets it."
        ),
    )
    refresh: str = Field(
        "",
        description=(
            "Any text (e.g. a date). Builds are cached by their inputs; change this to reinstall the packages "
            "with the mirror's current versions."
        ),
    )


class MountVolume(Options):
    enable: bool | None = Field(
        None, json_schema_extra=COMPUTED, description="Back the mount with a volume. Default: unless share.enable."
    )
    size: PositiveMB | None = Field(None, description="Size in MB (default 1024 unless sizeGB is set).")
    sizeGB: PositiveMB | None = Field(None, description="Size in GB; alternative to size.")
    image: str | None = Field(None, description="Image file. Default: `<name>.img` in the VM's state directory.")


class MountShare(Options):
    enable: bool = Field(False, description="Back the mount with a host directory shared into the guest.")
    hostPath: str | None = Field(
        None,
        description="Host directory. Default: `<stateDir>/<vm>/<name>` (relative paths are in the state directory).",
    )
    tag: Name | None = Field(None, description="Share tag. Default: the mount's name.")
    socket: str | None = Field(None, description="virtiofs socket. Default: as microvm.shares.")
    proto: Literal["virtiofs", "9p"] = Field("virtiofs", description="Share protocol.")


class Mount(Options):
    """The wrapper module's ``mounts.<name>``: a volume or a share, expanded into microvm.volumes/shares."""

    enable: bool = Field(True, description="Whether to add this mount.")
    mountpoint: AbsolutePath | None = Field(
        None, json_schema_extra=COMPUTED, description="Guest path. Default: /var/lib/<name>."
    )
    volume: MountVolume = Field(default_factory=MountVolume, description="As a volume (the default).")
    share: MountShare = Field(default_factory=MountShare, description="As a share.")

    @model_validator(mode="after")
    def _volume_or_share(self) -> Mount:
        if self.enable and self.share.enable and self.volume.enable:
            raise ValueError("a mount is either a volume or a share, not both")
        return self


# File system types mounted over the network: after the guest's network is up, never by the initrd.
# Network file systems, with the Debian package holding their mount helper.
NETWORK_FS_PACKAGES = {"nfs": "nfs-common", "nfs4": "nfs-common", "cifs": "cifs-utils", "smb3": "cifs-utils"}
NETWORK_FS_TYPES = tuple(NETWORK_FS_PACKAGES)


def _mount_option(value: str) -> str:
    if not value or re.search(r"[,\s]", value):
        raise ValueError(f"{value!r} is not one mount option: no commas or spaces (give each option on its own)")
    return value


class FileSystem(Options):
    """A guest mount beyond volumes and shares (NixOS ``fileSystems.<path>``)."""

    device: Annotated[str, Field(min_length=1, pattern=r"^\S+$")] = Field(
        description=(
            "What to mount: a guest path for a bind mount, `tmpfs`, `server:/export` (nfs), `//server/share` "
            "(cifs), or a device such as `/dev/disk/by-label/x`."
        ),
        examples=["/var/lib/persist/ssh"],
    )
    fsType: Annotated[str, Field(pattern=r"^[a-z0-9.]+$")] = Field(
        "none", description="File system type: `none` with the option `bind`, `tmpfs`, `nfs`, `nfs4`, `cifs`, `ext4`..."
    )
    options: list[Annotated[str, AfterValidator(_mount_option)]] = Field(
        [],
        description="Mount options, one per item: `bind`, `ro`, `size=64M`, `mode=0750`, `vers=4.2`, `credentials=...`.",
        examples=[["bind"], ["size=64M", "mode=0750"]],
    )

    @property
    def network(self) -> bool:
        return self.fsType in NETWORK_FS_TYPES

    @property
    def bind(self) -> bool:
        return "bind" in self.options or "rbind" in self.options

    @model_validator(mode="after")
    def _bind_from_a_path(self) -> FileSystem:
        if self.bind and not (self.device.startswith("/") and ".." not in self.device.split("/")):
            raise ValueError(f"a bind mount's device is the guest path it shows elsewhere, not {self.device!r}")
        return self


class StoreReadWrite(Options):
    enable: bool = Field(
        False, description="Keep a writable overlay over the system on a volume (packages can be installed)."
    )
    size: PositiveMB = Field(5000, description="Size of the overlay volume in MB.")


class StoreOptions(Options):
    """The wrapper module's ``store``: where the guest system comes from and whether it is writable."""

    readonly: Enable = Field(
        default_factory=Enable, description="Share the system tree from the host store (virtiofs) instead of an image."
    )
    readwrite: StoreReadWrite = Field(default_factory=StoreReadWrite, description="A persistent writable overlay.")


class GuestOptions(Options):
    hostName: HostName = Field(description="The guest's host name; also the VM's name on the host.", examples=["web"])
    machineId: MachineId | None = Field(
        None, json_schema_extra=COMPUTED, description="/etc/machine-id; default derived from hostName."
    )
    arch: Literal["x86_64", "aarch64"] | None = Field(
        None,
        json_schema_extra=COMPUTED,
        description="Guest architecture; default the host's. A foreign one is emulated (qemu TCG).",
    )
    base: Literal["busybox", "debian"] = Field(
        "busybox", description="busybox: a tiny system from busybox-static; debian: a Debian system with systemd."
    )
    packages: list[str] = Field([], description="Debian packages to install (base debian).")
    kernel: KernelOptions = Field(default_factory=KernelOptions, description="Which kernel the guest boots.")
    commands: list[str] = Field(
        [], description="Shell commands run once at boot, in order, after the oneshot services (base busybox)."
    )
    services: dict[Name, Service] = Field({}, description="Services started at boot.")
    shell: bool = Field(
        True, description="Give a root shell on the console (base debian: root is logged in on the serial console)."
    )
    network: GuestNetwork = Field(default_factory=GuestNetwork, description="How the guest configures its interfaces.")
    debian: DebianOptions = Field(default_factory=DebianOptions, description="How the debian base is installed.")
    users: dict[Name, User] = Field({}, description="Accounts (base debian); `root` changes the root account.")
    groups: dict[Name, Group] = Field(
        {}, description="Groups created if the guest lacks them (base debian); users and files may name them."
    )
    files: dict[GuestPath, GuestFile] = Field({}, description="Files written into the guest, by guest path.")
    firewall: Firewall = Field(default_factory=Firewall, description="Incoming packet filter (base debian).")
    timeZone: Annotated[str, Field(pattern=r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")] = Field(
        "UTC", description="Time zone, a name from the tz database like Europe/Berlin (base debian)."
    )
    locale: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9-]+)?(@[A-Za-z0-9]+)?$")] = Field(
        "C.UTF-8", description="LANG of the guest, like de_DE.UTF-8 (base debian); others than C.UTF-8 are generated."
    )
    mounts: dict[Name, Mount] = Field(
        {}, description="Volumes and shares by name, expanded into microvm.volumes/shares."
    )
    store: StoreOptions = Field(default_factory=StoreOptions, description="Shared or writable guest system.")
    fileSystems: dict[GuestPath, FileSystem] = Field(
        {},
        description=(
            "More mounts, by guest path: bind mounts (e.g. `/etc/ssh` kept on a volume), tmpfs with size and mode, "
            "network file systems. All but network ones are mounted by the initrd after the volumes and shares, "
            "before the guest's init (so early boot sees them), a mount after the ones holding its path or its "
            "bind source. nfs/nfs4/cifs/smb3 (base debian, with nfs-common or cifs-utils in guest.packages) "
            "are mounted once the network is online (`/etc/fstab` with `_netdev`)."
        ),
    )


class VMConfig(Options):
    """A VM file: the ``microvm`` and ``guest`` tables."""

    microvm: MicroVMOptions = Field(default_factory=MicroVMOptions, description="How the VM runs.")
    guest: GuestOptions = Field(description="What runs inside the VM.")

    @property
    def name(self) -> str:
        return self.guest.hostName

    def public_dump(self) -> dict:
        """``dump()`` without secret values, for files others may read (the runner's vm.json).

        A password hash becomes a digest of it (it is salted: the digest tells nothing, and a
        change still shows in `microvm diff`); the text of a guest file that others may not
        read in the guest becomes a placeholder (a digest of a short text could be guessed).
        """
        data = self.dump()
        for user in data["guest"].get("users", {}).values():
            if "hashedPassword" in user:
                digest = hashlib.sha256(user["hashedPassword"].encode()).hexdigest()[:16]
                user["hashedPassword"] = f"<secret sha256:{digest}>"
        for spec in data["guest"].get("files", {}).values():
            if "text" in spec and not int(spec["mode"], 8) & 0o004:
                spec["text"] = "<secret>"
        return data


# The share that carries the guest system when storeOnDisk is false is the one whose source is the store
# (microvm.nix's `/nix/store`); its source is set to the system's store entry at build time, and its tag is
# always this one.
STORE_SHARE_SOURCE = "store"
STORE_SHARE_TAG = "ro-store"
# Where guest.store.readwrite puts the volume that holds the writable overlay.
STORE_RW_MOUNTPOINT = "/var/lib/microvm-store-rw"
STORE_RW_IMAGE = "store-rw.img"


# --- the host file --------------------------------------------------------------


class HostOptions(Options):
    enable: bool = Field(True, description="Whether to enable the host part.")
    useNotifySockets: bool = Field(
        False,
        description=(
            "`microvm@` is `Type=notify`: starting a VM with `microvm.readiness` waits until its guest "
            "has booted; every other VM is ready as soon as its hypervisor starts."
        ),
    )
    tapScript: str = Field(
        'ip link set "$id" up',
        description="Shell commands run after a tap `$id` is created.",
    )
    startupTimeout: Annotated[int, Field(gt=0)] = Field(
        150, description="Seconds systemd gives a VM to start (and to stop) before it fails it (`TimeoutSec=`)."
    )


class WebOptions(Options):
    enable: bool = Field(
        False, description="Serve `microvm web` (the VMs' page, API and consoles) as `microvm-web.service`."
    )
    listen: Annotated[str, AfterValidator(_listen)] = Field(
        "unix:/run/microvm/web.sock",
        description=(
            "`unix:/PATH` (mode 0660, group `group`: its permissions authorise) or `ADDRESS:PORT` (a per-start "
            "token, written to `/run/microvm/web.token`); an address beyond loopback needs `tlsCertificate`."
        ),
    )
    group: Name = Field("kvm", description="Group that may use the unix socket.")
    tlsCertificate: AbsolutePath | None = Field(None, description="TLS certificate (PEM) to serve https with.")
    tlsKey: AbsolutePath | None = Field(None, description="The certificate's private key (PEM).")

    @model_validator(mode="after")
    def _tls_beyond_loopback(self) -> WebOptions:
        if (self.tlsCertificate is None) != (self.tlsKey is None):
            raise ValueError("set tlsCertificate and tlsKey together")
        unix, host, _ = listen_address(self.listen)
        if unix is None and not ipaddress.ip_address(host).is_loopback and self.tlsCertificate is None:
            raise ValueError(f"listen {self.listen!r} is reachable from other machines: set tlsCertificate and tlsKey")
        return self


def _unit_setting_value(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError("a unit setting's value is one line")
    return value


UnitSettingValue = Annotated[str, AfterValidator(_unit_setting_value)]
# Drop-in settings for a VM's microvm@NAME unit: section -> setting -> value (a list repeats the setting).
UnitOverrides = dict[
    Literal["Unit", "Service"],
    dict[Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9]*$")], UnitSettingValue | list[UnitSettingValue]],
]


class DeclaredVM(Options):
    config: str | dict[str, Any] | None = Field(
        None,
        description=(
            "Fully declarative: the VM file (path relative to this file) or an inline VM table; "
            "rebuilt and reinstalled on every `microvm host apply`."
        ),
    )
    source: str | None = Field(
        None,
        description="Declarative deployment: where the VM is defined (directory or git+file:// URL); installed once.",
    )
    updateSource: str | None = Field(
        None, json_schema_extra=COMPUTED, description="Source to record for later `microvm update`; default `source`."
    )
    autostart: bool = Field(True, description="Add this VM to microvm.autostart.")
    restartIfChanged: bool | None = Field(
        None,
        json_schema_extra=COMPUTED,
        description="Restart the VM when `microvm host apply` changed it. Default: true with config, false with source.",
    )
    cluster: bool = Field(
        False,
        description=(
            "The cluster runs this VM (the Pacemaker resource `microvm-NAME` that `microvm cluster apply` writes; "
            "needs `cluster.enable`): never in this host's autostart, `host apply` installs it without starting "
            "it, and its volumes and writable shares must be under `cluster.sharedStorage`."
        ),
    )
    preferNodes: list[NodeName] = Field(
        [],
        description=(
            "Cluster nodes this cluster VM prefers, most preferred first (`rsc_location` constraints with "
            "descending positive scores: a preference, not a ban; it runs elsewhere when none of them can). "
            "Each must be a node of the cluster. The scores are 10 for the last, 10 more for each before it: "
            "with up to 10 entries at or below the default `cluster.stickiness`, so a running VM does not move "
            "back to a preferred node that returns."
        ),
        examples=[["n1", "n2"]],
    )
    after: list[Name] = Field(
        [],
        description=(
            "Cluster VMs of this host file this cluster VM starts after (a mandatory `rsc_order`: each of them "
            "starts before it, and it stops before them; a live migration of one of them is no stop)."
        ),
        examples=[["db"]],
    )
    apartFrom: list[Name] = Field(
        [],
        description=(
            "Cluster VMs of this host file this cluster VM never shares a node with (an `rsc_colocation` of score "
            "-INFINITY): with fewer nodes than such VMs, the ones that find no node stay stopped; of two, the one "
            "that names the other (of two naming each other, the first by name)."
        ),
        examples=[["web2"]],
    )
    unitOverrides: UnitOverrides = Field(
        {},
        description=(
            "Settings added to this VM's `microvm@NAME` unit (a drop-in `microvm@NAME.service.d/overrides.conf` "
            "written by `host apply`): section (`Unit`, `Service`) -> setting -> value, a list repeating the "
            "setting. E.g. `Unit.RequiresMountsFor`, `Unit.After`, `Service.CacheDirectory`, "
            "`Service.TimeoutStartSec`, `Service.LoadCredential`."
        ),
        examples=[{"Unit": {"After": ["srv.mount"]}, "Service": {"TimeoutStartSec": "5min"}}],
    )


class HostMicroVMOptions(Options):
    stateDir: AbsolutePath = Field(
        "/var/lib/microvms",
        description="Directory holding one directory per VM; `host apply` records it in `/etc/default/microvm`, where the `microvm` command finds it.",
    )
    autostart: list[Name] = Field([], description="VMs started at boot (microvms.target).")
    host: HostOptions = Field(default_factory=HostOptions, description="Host module settings.")
    web: WebOptions = Field(default_factory=WebOptions, description="The web page of the host's VMs.")
    vms: dict[Name, DeclaredVM] = Field({}, description="VMs declared with the host.")


class BasicNetwork(Options):
    enable: bool = Field(False, description="Create the VM bridge with addresses, DHCP and router advertisements.")
    name: IfName = Field("microvm", description="Bridge name.")
    tapMatch: str = Field("vm*", description="Glob of tap names attached to the bridge.")
    ipv4Subnet: Annotated[str, AfterValidator(_ipv4_interface)] | Literal[False] = Field(
        "10.213.0.1/24",
        description=(
            "The bridge's IPv4 address and prefix; VM n of `guest.network.base` gets the n+1-th other address of "
            "it from DHCP. false for no IPv4 address (with `ipv6Prefix = false` too: a pure layer-2 bridge)."
        ),
    )
    ipv6Prefix: Annotated[str, AfterValidator(_ipv6_prefix)] | Literal[False] = Field(
        "fd12:3456:789a::", description="IPv6 /64 prefix of the bridge (it gets `<prefix>1`); false for no IPv6."
    )
    dhcp: bool = Field(True, description="Serve DHCPv4 on the bridge.")
    routerAdvertisements: bool = Field(True, description="Send IPv6 router advertisements (SLAAC).")
    ports: list[IfName] = Field(
        [],
        description=(
            "Host interfaces added to the bridge (a physical NIC or a VLAN interface like eth0.100), putting the "
            "VMs on that network's layer 2. Their addresses stay as they are; give the bridge the host's address "
            "instead if it needs one."
        ),
        examples=[["eth0"]],
    )


class NatOptions(Options):
    enable: bool = Field(False, description="NAT (masquerade) v4 and v6 traffic from the bridge.")
    uplink: IfName | None = Field(None, description="Interface to masquerade out of; null for any.")


class HostBridge(Options):
    """One more bridge on the host, besides ``network.basic``'s: VM taps join it by their ``bridge``."""

    addresses: list[IPInterface] = Field(
        [], description="The bridge's own addresses; none for a pure layer-2 bridge.", examples=[["192.0.2.1/24"]]
    )
    ports: list[IfName] = Field(
        [],
        description="Host interfaces added to the bridge: a NIC, or a VLAN of `network.vlans`.",
        examples=[["eth0.100"]],
    )


class HostVlan(Options):
    """A VLAN interface on a trunk port, to be a bridge's port."""

    link: IfName = Field(description="The trunk interface carrying the VLAN.", examples=["eth0"])
    id: Annotated[int, Field(ge=1, le=4094)] = Field(description="The VLAN id (802.1Q tag).", examples=[100])


class HostNetwork(Options):
    basic: BasicNetwork = Field(default_factory=BasicNetwork, description="The VM bridge.")
    bridges: dict[IfName, HostBridge] = Field(
        {},
        description=(
            "More bridges, by name (addressed or not, without DHCP or NAT); a VM's tap interface names the one it "
            "joins with `microvm.interfaces[].bridge`."
        ),
    )
    vlans: dict[IfName, HostVlan] = Field(
        {}, description="VLAN interfaces created on trunk ports, by name (e.g. `eth0.100`), for bridges' ports."
    )
    nat: NatOptions = Field(default_factory=NatOptions, description="NAT for the bridge and the routed VMs.")
    routed: RoutedNetwork = Field(
        default_factory=RoutedNetwork, description="Routed VMs (`guest.network.base.routed`): forwarding and NAT."
    )


INFINITY = 1_000_000  # Pacemaker's score INFINITY: any higher score counts as it


class ClusterOptions(Options):
    enable: bool = Field(
        False,
        description=(
            "This host is a node of a Pacemaker/Corosync cluster (the same host file on every node): `host apply` "
            "installs the resource agent `ocf:microvm:vm`, `microvm cluster apply` writes the VMs with "
            "`cluster = true` as resources."
        ),
    )
    sharedStorage: AbsolutePath | None = Field(
        None,
        description=(
            "The directory every node mounts at this path (NFS, CephFS, a file system on DRBD or RBD): cluster "
            "VMs' volumes and writable shares must be under it, so another node can take the VM over."
        ),
        examples=["/srv/microvm-shared"],
    )
    requireFencing: bool = Field(
        True,
        description=(
            "Refuse to run cluster VMs in a cluster without fencing (stonith-enabled and a fence device): "
            "without it a VM can run on two nodes at once after a split. false only for tests."
        ),
    )
    stickiness: Annotated[int, Field(ge=0, le=INFINITY)] = Field(
        100,
        description=(
            "The meta attribute `resource-stickiness` of every cluster VM: how much it prefers to stay on the node "
            "it runs on, so a VM does not move back (a live migration or a reboot) when a fenced or drained node "
            f"returns. 0 lets it move back; {INFINITY} (Pacemaker's INFINITY) keeps it until its node leaves."
        ),
    )


class HostConfig(Options):
    """A host file: ``microvm`` (host options), ``network`` and ``cluster``."""

    microvm: HostMicroVMOptions = Field(default_factory=HostMicroVMOptions, description="Host and its VMs.")
    network: HostNetwork = Field(default_factory=HostNetwork, description="Host networking for VMs.")
    cluster: ClusterOptions = Field(
        default_factory=ClusterOptions, description="The Pacemaker cluster this host is a node of."
    )
