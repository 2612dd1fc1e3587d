"""Building a whole VM: kernel, system, root image, initrd, runner.

Each step is a store entry keyed by its inputs, so an unchanged VM is a chain
of cache hits, and a failed step leaves the entries before it (all complete)
and nothing of itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import MicrovmError
from ..guest.debarch import Apt
from ..guest.image import build_root_image
from ..guest.initrd import build_initrd, use_local_initrd
from ..guest.kernel import KernelEntry, fetch_kernel, resolve_kernel_package, use_local_kernel
from ..guest.system import build_system
from ..hypervisors import GuestArtifacts, Hypervisor, get
from ..model.names import host_arch
from ..model.options import STORE_SHARE_TAG, VMConfig
from ..model.problems import format_path
from ..store import Store
from . import accel
from .script import build_runner

Progress = Callable[[str], None]


@dataclass
class BuiltVM:
    runner: Path
    kernel: KernelEntry
    initrd: Path | None
    root_image: Path | None
    system: Path | None  # None with microvm.guest.enable = false: the user brings the guest
    accel: accel.Verdict

    @property
    def run(self) -> Path:
        return self.runner / "bin" / "microvm-run"


def get_kernel(store: Store, vm: VMConfig) -> KernelEntry:
    options = vm.guest.kernel
    if options.image is not None:
        return use_local_kernel(store, Path(options.image), Path(options.modulesDir) if options.modulesDir else None)
    apt = Apt.for_arch(store, vm.guest.arch or host_arch())
    return fetch_kernel(store, resolve_kernel_package(options.package or options.flavor, store, apt), apt)


SMALL_GUEST_MB = 128  # below this, kernel_cmdline trims what the guest kernel sets up at boot


def kernel_cmdline(vm: VMConfig, backend: Hypervisor, verdict: accel.Accel) -> list[str]:
    """The guest's kernel command line: what microvm needs, then microvm.kernelParams."""
    mv = vm.microvm
    params = [f"console={backend.console_device(vm)}", "panic=-1"]  # a panicking guest exits (-no-reboot), not hangs
    params += backend.kernel_params(vm, verdict)
    if mv.mem < SMALL_GUEST_MB and vm.guest.arch == "x86_64":
        # Debian's kernel runs out of memory in its own init below ~80 MB: its image takes 33 MB, tracefs
        # makes an inode and a dentry for each of its ~1400 trace events' files (8 MB of slab), and the
        # per-CPU areas are set up in 2 MB units for 0.25 MB. Without tracefs's files (ftrace's and perf's
        # tracepoint interface in /sys/kernel/tracing) and with page-sized per-CPU chunks a 64 MB guest boots.
        # No option turns them off: 128 MB or more does (docs/guide.md).
        params += ["initcall_blacklist=tracer_init_tracefs", "percpu_alloc=page"]
    if mv.optimize.enable:
        # a quiet console, and no self-tests of every crypto algorithm: both measurably faster (docs/benchmarks.md)
        params += ["quiet", "cryptomgr.notests"]
        if mv.vcpu == 1 and vm.guest.arch == "x86_64":
            # An x86 kernel on one CPU rewrites each of its ~9000 `lock` prefixes, one page-table
            # switch apiece: 0.25 s of every boot under TCG. Left in place, they cost a uniprocessor nothing.
            params.append("noreplace-smp")
    return [*params, *mv.kernelParams]


def emulation_reason(vm: VMConfig) -> str | None:
    """Why the guest's CPU must be emulated (TCG) whatever the host offers; None if it need not be."""
    if vm.microvm.cpu is not None:
        return "microvm.cpu is set: the CPU is emulated"
    if vm.guest.arch != host_arch():
        return f"guest.arch is {vm.guest.arch} on a {host_arch()} host: the CPU is emulated"
    return None


def with_system_share(vm: VMConfig, system: Path) -> VMConfig:
    """``vm`` with the store share (storeOnDisk = false) serving ``system`` read-only."""
    shares = [
        share.model_copy(update={"source": str(system), "readOnly": True}) if share.tag == STORE_SHARE_TAG else share
        for share in vm.microvm.shares
    ]
    return vm.model_copy(update={"microvm": vm.microvm.model_copy(update={"shares": shares})})


def check_for(backend: Hypervisor, vm: VMConfig) -> None:
    """Refuse what ``backend`` cannot do in a VM declared for another hypervisor (``--hypervisor``).

    The VM was checked for the hypervisor it declares; a control socket that one has and this one
    lacks is simply not used.
    """
    errors = [p for p in backend.check(vm) if p.severity == "error" and p.path != ("microvm", "socket")]
    if errors:
        raise MicrovmError(
            f"{backend.name} cannot run this VM (declared for {vm.microvm.hypervisor}): "
            + "; ".join(f"{format_path(p.path)}: {p.message}" for p in errors),
            hint=f"build it for {vm.microvm.hypervisor}, or change the options for {backend.name}",
        )


def build_vm(store: Store, vm: VMConfig, hypervisor: str | None = None, progress: Progress | None = None) -> BuiltVM:
    """Build every part of ``vm`` for ``hypervisor`` (default: the one it declares)."""
    say = progress or (lambda _: None)
    backend = get(hypervisor or vm.microvm.hypervisor)
    if backend.name != vm.microvm.hypervisor:
        check_for(backend, vm)
    say("kernel")
    kernel = get_kernel(store, vm)
    system = None
    if vm.microvm.guest.enable:
        say("guest system")
        system = build_system(store, vm, backend, kernel)
        if not vm.microvm.storeOnDisk:
            vm = with_system_share(vm, system)
    root_image = None
    if system is not None and vm.microvm.storeOnDisk:
        say(f"{vm.microvm.storeDiskType} root image")
        flags = (
            vm.microvm.storeDiskErofsFlags if vm.microvm.storeDiskType == "erofs" else vm.microvm.storeDiskSquashfsFlags
        )
        root_image = build_root_image(
            store, system, vm.microvm.storeDiskType, flags, vm.guest.hostName, keep_owners=vm.guest.base == "debian"
        )
    initrd = None
    if vm.microvm.initrdPath:
        initrd = use_local_initrd(store, Path(vm.microvm.initrdPath))
    elif system is not None:
        say("initrd")
        initrd = build_initrd(store, vm, backend, kernel)
    boot_image = kernel.vmlinux if backend.kernel_format == "vmlinux" else kernel.boot_image
    if boot_image is None:
        raise MicrovmError(f"{backend.name} needs an uncompressed vmlinux, and none could be made from {kernel.image}")
    say("accelerator")
    verdict = accel.resolve(vm.microvm.accel, store, kernel.boot_image, emulated=emulation_reason(vm))
    guest = GuestArtifacts(
        kernel=boot_image,
        initrd=initrd,
        root_image=root_image,
        cmdline=kernel_cmdline(vm, backend, verdict.accel),
        accel=verdict.accel,
    )
    say("runner")
    runner = build_runner(store, vm, backend, guest, system)
    return BuiltVM(runner, kernel, initrd, root_image, system, verdict)
