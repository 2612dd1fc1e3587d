"""The interface every hypervisor module implements.

A hypervisor declares what it can do (:class:`Feature`), the kernel format it
boots, and turns a VM into a :class:`RunnerSpec`: the command line of
``bin/microvm-run`` plus any files it reads. Its :meth:`Hypervisor.check`
finds everything a VM asks that it cannot do, so ``microvm check`` reports it
rather than the build; ``docs/hypervisors.md`` is generated from the features.

The control side is a capability only backends with a control socket have:
:class:`Control` (graceful shutdown), :class:`Balloon`, :class:`Suspend` and :class:`Migrate`.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from ..control.process import peer_pid, stop_hard, wait_exit
from ..errors import MicrovmError
from ..model.names import host_arch
from ..model.problems import OptionPath, Problem, format_path
from . import registry

if TYPE_CHECKING:
    from ..model.options import VMConfig


class Feature(enum.Enum):
    """Something a VM may ask for that not every hypervisor can do."""

    SHARE_9P = "9p shares"
    SHARE_VIRTIOFS = "virtiofs shares"
    CONTROL_SOCKET = "control socket"
    USER_NETWORK = "user networking"
    FORWARD_PORTS = "forwarded ports (user networking)"
    TAP = "tap interfaces"
    MACVTAP = "macvtap interfaces"
    BRIDGE = "bridge interfaces (qemu-bridge-helper)"
    BALLOON = "memory balloon"
    INITIAL_BALLOON = "balloon size at start"
    VIRTIO_MEM = "memory hotplug (virtio-mem)"
    HUGEPAGES = "huge page backed memory"
    VSOCK = "vsock"
    PCI_DEVICES = "PCI pass-through (vfio)"
    USB_DEVICES = "USB pass-through"
    GRAPHICS = "graphics"
    CPU_EMULATION = "CPU emulation (TCG)"
    NOTIFY_READINESS = "readiness notification (microvm.readiness)"
    MULTI_QUEUE_TAP = "multi-queue taps"
    READ_ONLY_VOLUMES = "read-only volumes"
    VOLUME_SERIAL = "volume serial numbers"
    DIRECT_IO = "direct I/O volumes"
    SUSPEND = "suspend to disk, resume on start (microvm suspend)"
    MIGRATE = "live migration to another host (microvm.migratable, microvm migrate)"
    IMAGE_QCOW2 = "qcow2 volumes"
    IMAGE_VHD = "vhd volumes"
    IMAGE_VHDX = "vhdx volumes"
    BACKING_FILE = "qcow2 volumes with a backing file"
    VHOST_NET = "vhost-net taps (tap.vhost)"


@dataclass(frozen=True)
class GuestArtifacts:
    """What the guest builder produced, as the runner sees it."""

    kernel: Path  # bzImage, or uncompressed vmlinux for hypervisors that need it
    initrd: Path | None
    root_image: Path | None  # read-only system disk (None when shared from the store)
    cmdline: list[str]  # the complete kernel command line (console, init, microvm.kernelParams)
    accel: Literal["kvm", "tcg"]


@dataclass
class RunnerSpec:
    """How to start one VM: the hypervisor's argv and the files it reads.

    ``files`` maps a path inside the runner directory to its content; argv
    may refer to them through :attr:`RunnerSpec.RUNNER` placeholders, which
    the runner builder replaces with the runner's store path.
    """

    RUNNER: ClassVar[str] = "@RUNNER@"

    argv: list[str]
    files: dict[str, str] = field(default_factory=dict)
    # Shell lines run before exec'ing the hypervisor (e.g. open macvtap fds).
    pre_exec: list[str] = field(default_factory=list)
    # File descriptors the runner opens, as (fd, shell redirection target); argv refers to them.
    fds: list[tuple[int, str]] = field(default_factory=list)
    # The unix socket the hypervisor serves for the guest's readiness port (microvm.readiness),
    # relative to the state directory; the runner passes what arrives there on to systemd.
    ready_socket: str | None = None


IMAGE_FEATURES = {"qcow2": Feature.IMAGE_QCOW2, "vhd": Feature.IMAGE_VHD, "vhdx": Feature.IMAGE_VHDX}


def required_features(vm: VMConfig) -> Iterator[tuple[Feature, OptionPath]]:
    """Every feature ``vm`` asks of its hypervisor, with the option asking for it."""
    mv = vm.microvm
    for i, share in enumerate(mv.shares):
        yield (Feature.SHARE_9P if share.proto == "9p" else Feature.SHARE_VIRTIOFS), ("microvm", "shares", i, "proto")
    interface_features = {
        "user": Feature.USER_NETWORK,
        "tap": Feature.TAP,
        "macvtap": Feature.MACVTAP,
        "bridge": Feature.BRIDGE,
    }
    for i, iface in enumerate(mv.interfaces):
        yield interface_features[iface.type], ("microvm", "interfaces", i, "type")
        if iface.tap.vhost:
            yield Feature.VHOST_NET, ("microvm", "interfaces", i, "tap", "vhost")
    if mv.forwardPorts:
        yield Feature.FORWARD_PORTS, ("microvm", "forwardPorts")
    if mv.balloon:
        yield Feature.BALLOON, ("microvm", "balloon")
    if mv.initialBalloonMem:
        yield Feature.INITIAL_BALLOON, ("microvm", "initialBalloonMem")
    if mv.hotplugMem:
        yield Feature.VIRTIO_MEM, ("microvm", "hotplugMem")
    if mv.hugepageMem:
        yield Feature.HUGEPAGES, ("microvm", "hugepageMem")
    if mv.vsock.cid is not None:
        yield Feature.VSOCK, ("microvm", "vsock", "cid")
    for i, device in enumerate(mv.devices):
        yield (Feature.PCI_DEVICES if device.bus == "pci" else Feature.USB_DEVICES), ("microvm", "devices", i, "bus")
    if mv.graphics.enable:
        yield Feature.GRAPHICS, ("microvm", "graphics", "enable")
    if mv.readiness:
        yield Feature.NOTIFY_READINESS, ("microvm", "readiness")
    if mv.migratable:
        yield Feature.MIGRATE, ("microvm", "migratable")
    if mv.cpu is not None:
        yield Feature.CPU_EMULATION, ("microvm", "cpu")
    if vm.guest.arch != host_arch():
        yield Feature.CPU_EMULATION, ("guest", "arch")
    for i, volume in enumerate(mv.volumes):
        if volume.readOnly:
            yield Feature.READ_ONLY_VOLUMES, ("microvm", "volumes", i, "readOnly")
        if volume.serial is not None:
            yield Feature.VOLUME_SERIAL, ("microvm", "volumes", i, "serial")
        if volume.direct:
            yield Feature.DIRECT_IO, ("microvm", "volumes", i, "direct")
        if volume.imageType != "raw":
            yield IMAGE_FEATURES[volume.imageType], ("microvm", "volumes", i, "imageType")
        if volume.backingFile is not None:
            yield Feature.BACKING_FILE, ("microvm", "volumes", i, "backingFile")


def _option_values(vm: VMConfig, what: str) -> Iterator[tuple[OptionPath, str]]:
    """The options a backend passes as ``what`` (the names :func:`.common.plain` is given), with their paths."""
    mv = vm.microvm
    if what == "socket" and mv.socket is not None:
        yield ("microvm", "socket"), mv.socket
    for i, volume in enumerate(mv.volumes):
        if what == "disk image":
            yield ("microvm", "volumes", i, "image"), volume.image
        if what == "volume serial" and volume.serial is not None:
            yield ("microvm", "volumes", i, "serial"), volume.serial
    for i, share in enumerate(mv.shares):
        if what == "virtiofs socket" and share.socket is not None:
            yield ("microvm", "shares", i, "socket"), share.socket
        if what == "share source":
            yield ("microvm", "shares", i, "source"), share.source
    for i, device in enumerate(mv.devices):
        if what == "PCI address" and device.bus == "pci":
            yield ("microvm", "devices", i, "path"), device.path


def separators(value: str, forbidden: str = ",") -> list[str]:
    """The characters of ``value`` that would split a ``key=value,key=value`` argument."""
    return sorted({c for c in value if c in forbidden})


class Hypervisor(ABC):
    """One hypervisor backend: what it can do, how to start a VM, and what it refuses."""

    name: ClassVar[str]
    binary: ClassVar[str]
    features: ClassVar[frozenset[Feature]]
    # Which kernel image the hypervisor boots directly.
    kernel_format: ClassVar[Literal["bzImage", "vmlinux"]] = "bzImage"
    # Kernel modules the guest needs to see this hypervisor's devices (transport).
    transport_modules: ClassVar[tuple[str, ...]] = ("virtio_mmio",)
    console: ClassVar[str] = "ttyS0"
    # Kernel parameters every guest of this hypervisor needs (besides the console).
    guest_kernel_params: ClassVar[tuple[str, ...]] = ()
    # The least memory (MB) it starts a VM with.
    min_mem: ClassVar[int | None] = None
    # Features it has, but not together: (one, other, where its documentation says so).
    incompatible: ClassVar[tuple[tuple[Feature, Feature, str], ...]] = ()
    # Options it passes inside ``key=value,...`` arguments, which cannot hold a comma (see common.plain).
    plain_options: ClassVar[tuple[str, ...]] = ()
    # How its control socket is driven, for docs/hypervisors.md.
    control_api: ClassVar[str] = "none (stopped with SIGTERM)"
    # What its own API offers towards moving a VM between hosts, where microvm does not drive it yet.
    migration_api: ClassVar[str | None] = None
    # Where the host reaches the guest's vsock ports when they are a unix socket of the hypervisor
    # (relative to the state directory; connect, send "CONNECT <port>\n", read "OK ..."); None when
    # vsock is the host kernel's (vhost-vsock: AF_VSOCK to the guest's context id).
    vsock_socket: ClassVar[str | None] = None

    def kernel_params(self, vm: VMConfig, accel: str) -> list[str]:
        """Kernel parameters this hypervisor's guests need (besides the console)."""
        return list(self.guest_kernel_params)

    def console_device(self, vm: VMConfig) -> str:
        """The guest's console device (``console=`` on the kernel command line)."""
        return self.console

    def console_socket(self, vm: VMConfig) -> tuple[str, str] | None:
        """(socket, log file) when the console is a unix socket with a log; None when it is stdio."""
        return None

    def guest_modules(self, vm: VMConfig) -> list[str]:
        """Kernel modules the guest needs to find this hypervisor's devices."""
        return list(self.transport_modules)

    def supports(self, feature: Feature) -> bool:
        return feature in self.features

    def check(self, vm: VMConfig) -> Iterator[Problem]:
        """What in ``vm`` this hypervisor cannot do, found by ``microvm check`` (as Lima's ``Driver.Validate``).

        This default refuses the features it lacks, the pairs in :attr:`incompatible`, less memory
        than :attr:`min_mem` and the :attr:`plain_options` it cannot pass; a backend adds its own limits.
        """
        asked: dict[Feature, OptionPath] = {}
        for feature, path in required_features(vm):
            asked.setdefault(feature, path)
            if not self.supports(feature):
                yield Problem(path, f"{self.name} does not support {feature.value}", hint=self.suggestion(feature))
        for one, other, source in self.incompatible:
            if one in asked and other in asked:
                yield Problem(
                    asked[other],
                    f"{self.name} cannot combine {one.value} with {other.value} ({source})",
                    hint=f"set {format_path(asked[one])} = false or {format_path(asked[other])} = false",
                )
        if self.min_mem and vm.microvm.mem < self.min_mem:
            yield Problem(
                ("microvm", "mem"),
                f"{self.name} needs at least {self.min_mem} MB of memory ({vm.microvm.mem} MB here)",
                hint=f"set microvm.mem = {self.min_mem} or more",
            )
        if vm.microvm.socket is not None and not self.supports(Feature.CONTROL_SOCKET):
            yield Problem(
                ("microvm", "socket"),
                f"{self.name} has no control socket",
                hint="remove microvm.socket; the VM is stopped with a signal instead",
            )
        for what in self.plain_options:
            for path, value in _option_values(vm, what):
                if bad := separators(value):
                    yield Problem(
                        path,
                        f"{self.name} cannot take {what} {value!r}: it contains {' '.join(map(repr, bad))}, "
                        "which separates its options",
                        hint=f"choose a {what} without {' or '.join(map(repr, bad))}",
                    )

    @abstractmethod
    def runner(self, vm: VMConfig, guest: GuestArtifacts) -> RunnerSpec:
        """The command line (and files) that start ``vm``."""

    def suggestion(self, feature: Feature) -> str | None:
        """What to use instead of a feature this hypervisor lacks."""
        alternatives = {
            Feature.SHARE_9P: (Feature.SHARE_VIRTIOFS, 'use proto = "virtiofs"'),
            Feature.SHARE_VIRTIOFS: (Feature.SHARE_9P, 'use proto = "9p"'),
            Feature.USER_NETWORK: (Feature.TAP, 'use an interface of type "tap"'),
            Feature.BRIDGE: (Feature.TAP, 'use an interface of type "tap" attached to the bridge by the host'),
        }
        if feature in alternatives and self.supports(alternatives[feature][0]):
            return alternatives[feature][1]
        if feature in (Feature.SHARE_9P, Feature.SHARE_VIRTIOFS):
            return "use a volume instead of a share"
        if feature is Feature.MIGRATE and self.migration_api:
            return f"{self.migration_api}; microvm migrates qemu VMs only"
        others = [b.name for b in registry.available() if b.supports(feature)]
        return f"hypervisors that can: {', '.join(others)}" if others else None


class Control(ABC):
    """The control side of a backend with a control socket (:attr:`Feature.CONTROL_SOCKET`)."""

    name: ClassVar[str]
    what: ClassVar[str] = "control socket"
    # Seconds between repeated shutdown requests (see shutdown).
    REQUEST_INTERVAL: ClassVar[float] = 5.0

    def shutdown(self, socket: Path, timeout: float) -> None:
        """Shut the VM down gracefully through its socket; stop it hard after ``timeout``.

        Returns once the hypervisor process has exited.
        """
        pid = peer_pid(socket)
        if pid is None:
            raise MicrovmError(f"nothing is listening on {socket}", hint="is the VM running?")
        deadline = time.monotonic() + timeout
        # A request that arrives before the guest listens (early boot, acpid not yet
        # running) is lost, so it is repeated until the guest reacts or time is up.
        self.request_shutdown(socket)
        while True:
            left = deadline - time.monotonic()
            if wait_exit(pid, min(self.REQUEST_INTERVAL, max(left, 0))):
                return
            if left <= self.REQUEST_INTERVAL:
                break
            try:
                self.request_shutdown(socket)
            except MicrovmError:
                pass  # the hypervisor may be closing its socket on the way out; the wait tells
        self.stop_hard(socket, pid)
        if not wait_exit(pid, 5):
            stop_hard(pid)

    def fault(self, socket: Path) -> str | None:
        """Why the VM behind ``socket`` does not run as it should, in the hypervisor's own words; None
        when it runs. Raises MicrovmError when the hypervisor does not answer (which may pass: the caller
        decides). By default only whether the hypervisor listens on its socket."""
        if not peer_pid(socket):
            raise MicrovmError(f"nothing is listening on {socket}")
        return None

    @abstractmethod
    def request_shutdown(self, socket: Path) -> None:
        """Ask the guest to power off (ACPI power button, ctrl-alt-del), without waiting."""

    def stop_hard(self, socket: Path, pid: int) -> None:
        """Stop the hypervisor now (its API's hard stop; by default SIGTERM, then SIGKILL)."""
        stop_hard(pid)


class Balloon(Control):
    """A backend whose balloon can be set and read back through its control socket."""

    what: ClassVar[str] = "balloon control"

    @abstractmethod
    def balloon(self, socket: Path, size_mb: int, mem_mb: int) -> int:
        """Inflate the balloon to ``size_mb`` of the guest's ``mem_mb``; return the balloon size reached."""


class Suspend(Control):
    """A backend that saves a VM to disk and resumes it on start (:attr:`Feature.SUSPEND`)."""

    what: ClassVar[str] = "suspend to disk"

    @abstractmethod
    def suspend(self, socket: Path, state: Path) -> None:
        """Pause the VM and save its whole state (devices and RAM) to ``state``; it stays paused.

        On failure the VM runs on and ``state`` does not exist.
        """

    @abstractmethod
    def resume_args(self, fd: int) -> list[str]:
        """Hypervisor arguments that load the saved state from the open file descriptor ``fd``."""

    @abstractmethod
    def finish_resume(self, socket: Path, alive: Callable[[], bool], loaded: Callable[[], None]) -> bool:
        """Wait until the hypervisor has loaded the saved state, call ``loaded()``, then let the VM
        run; False if it did not load (it failed, or the hypervisor exited: ``alive()`` turned false)."""


@dataclass(frozen=True)
class Migration:
    """What a finished live migration cost, as the hypervisor reports it."""

    total_ms: int  # from the start to the VM running on the target
    downtime_ms: int  # the guest stood still
    transferred: int  # bytes of RAM sent


class Migrate(Suspend):
    """A backend that moves a running VM to another host live (:attr:`Feature.MIGRATE`).

    The target starts the same build loading the incoming state the way a resume
    does (:meth:`Suspend.resume_args`), from a pipe instead of a file.
    """

    what: ClassVar[str] = "live migration"

    @abstractmethod
    def migrate(self, socket: Path, fd: int) -> Migration:
        """Send the running VM's state into the open file descriptor ``fd`` while it runs; it ends
        paused here once the target has it all. On failure it runs on here."""

    @abstractmethod
    def continue_here(self, socket: Path) -> None:
        """Let the VM run here again after a migration the target did not take over."""
