"""The interface every hypervisor module implements.

A hypervisor declares what it can do (:class:`Feature`), the kernel format it
boots, and turns a VM into a :class:`RunnerSpec`: the command line of
``bin/microvm-run`` plus any files it reads. Its control side (graceful
shutdown, balloon) talks to the running hypervisor through its socket.

Config checks ask the features, so an impossible combination is an error at
``microvm check`` time, and ``docs/hypervisors.md`` is generated from them.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from ..control.process import peer_pid, stop_hard, wait_exit
from ..errors import MicrovmError

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


class Hypervisor(ABC):
    """One hypervisor backend."""

    name: ClassVar[str]
    binary: ClassVar[str]
    features: ClassVar[frozenset[Feature]]
    # Which kernel image the hypervisor boots directly.
    kernel_format: ClassVar[Literal["bzImage", "vmlinux"]] = "bzImage"
    # Kernel modules the guest needs to see this hypervisor's devices (transport).
    transport_modules: ClassVar[tuple[str, ...]] = ("virtio_mmio",)
    console: ClassVar[str] = "ttyS0"
    # Seconds between repeated shutdown requests (see shutdown).
    REQUEST_INTERVAL: ClassVar[float] = 5.0
    # Kernel parameters every guest of this hypervisor needs (besides the console).
    guest_kernel_params: ClassVar[tuple[str, ...]] = ()

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

    @abstractmethod
    def runner(self, vm: VMConfig, guest: GuestArtifacts) -> RunnerSpec:
        """The command line (and files) that start ``vm``."""

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

    @abstractmethod
    def request_shutdown(self, socket: Path) -> None:
        """Ask the guest to power off (ACPI power button, ctrl-alt-del), without waiting."""

    def stop_hard(self, socket: Path, pid: int) -> None:
        """Stop the hypervisor now (its API's hard stop; by default SIGTERM, then SIGKILL)."""
        stop_hard(pid)

    def balloon(self, socket: Path, size_mb: int, mem_mb: int) -> int:
        """Inflate the balloon to ``size_mb`` of the guest's ``mem_mb``; return the balloon size reached."""
        raise MicrovmError(f"{self.name} has no balloon control")

    # --- suspend to disk (Feature.SUSPEND) ------------------------------------------

    def suspend(self, socket: Path, state: Path) -> None:
        """Pause the VM and save its whole state (devices and RAM) to ``state``; it stays paused.

        On failure the VM runs on and ``state`` does not exist.
        """
        raise MicrovmError(f"{self.name} cannot suspend a VM to disk")

    def resume_args(self, fd: int) -> list[str]:
        """Hypervisor arguments that load the saved state from the open file descriptor ``fd``."""
        raise MicrovmError(f"{self.name} cannot resume a VM from disk")

    def finish_resume(self, socket: Path, alive: Callable[[], bool], loaded: Callable[[], None]) -> bool:
        """Wait until the hypervisor has loaded the saved state, call ``loaded()``, then let the VM
        run; False if it did not load (it failed, or the hypervisor exited: ``alive()`` turned false)."""
        raise MicrovmError(f"{self.name} cannot resume a VM from disk")

    def suggestion(self, feature: Feature) -> str | None:
        """What to use instead of a feature this hypervisor lacks."""
        from . import available

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
        others = [b.name for b in available() if b.supports(feature)]
        return f"hypervisors that can: {', '.join(others)}" if others else None
