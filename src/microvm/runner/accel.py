"""Choosing the accelerator: KVM where it can really boot a guest, else TCG.

/dev/kvm can exist and still be unable to boot a stock kernel (nested PVM
KVM hangs or dies in emulation). ``auto`` therefore boots a tiny probe guest
under KVM once, with a time limit, and caches the verdict per host kernel,
qemu and guest kernel. ``MICROVM_ACCEL=kvm|tcg`` overrides everything.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .. import proc
from ..guest.cpio import CpioArchive
from ..guest.debarch import busybox_path
from ..store import Store

Accel = Literal["kvm", "tcg"]
PROBE_MARKER = "MICROVM-KVM-PROBE-OK"
PROBE_TIMEOUT = 10.0
CACHE = ".cache/kvm-probe.json"


@dataclass
class Verdict:
    accel: Accel
    reason: str
    seconds: float = 0.0


def kvm_usable_device() -> str | None:
    """Why /dev/kvm cannot be used at all, or None if it can be opened."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist (no KVM on this host)"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open /dev/kvm: {exc.strerror} (add the user to group kvm)"
    os.close(fd)
    return None


def _probe_initrd(store: Store) -> Path:

    busybox = busybox_path()

    def build(out: Path) -> None:
        archive = CpioArchive()
        archive.add_dir("dev")
        archive.add_char_device("dev/console", 5, 1)
        archive.add_host_file("bin/busybox", busybox, mode=0o755)
        archive.add_file(
            "init",
            f"#!/bin/busybox sh\n/bin/busybox echo {PROBE_MARKER}\n/bin/busybox poweroff -f\n".encode(),
            mode=0o755,
        )
        with (out / "initrd").open("wb") as f:
            archive.write(f)

    entry, _ = store.add("kvm-probe-initrd", {"busybox": str(busybox), "marker": PROBE_MARKER}, build)
    return entry / "initrd"


def probe(store: Store, kernel: Path) -> Verdict:
    """Boot a probe guest under KVM with a time limit."""
    if (why := kvm_usable_device()) is not None:
        return Verdict("tcg", why)
    qemu = proc.which("qemu-system-x86_64", purpose="to probe KVM")
    argv = [
        qemu,
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=on",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "128M",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-kernel",
        kernel,
        "-initrd",
        _probe_initrd(store),
        "-append",
        "console=ttyS0 quiet panic=-1",
    ]
    start = time.monotonic()
    child = proc.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = child.communicate(timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return Verdict(
            "tcg",
            f"a guest did not boot under KVM within {PROBE_TIMEOUT:.0f} s "
            "(KVM is present but cannot run this kernel, e.g. nested PVM)",
            time.monotonic() - start,
        )
    elapsed = time.monotonic() - start
    text = output.decode(errors="replace")
    if PROBE_MARKER in text:
        return Verdict("kvm", f"a guest booted under KVM in {elapsed:.1f} s", elapsed)
    last = text.strip().splitlines()[-1] if text.strip() else f"exit code {child.returncode}"
    return Verdict("tcg", f"a guest failed under KVM: {last}", elapsed)


def _cache_key(kernel: Path) -> str:
    qemu = proc.which("qemu-system-x86_64")
    return f"{platform.release()}|{qemu}:{os.stat(qemu).st_mtime_ns}|{kernel}"


def auto(store: Store, kernel: Path, *, refresh: bool = False) -> Verdict:
    """The cached verdict for this host and kernel, probing if there is none."""
    if (why := kvm_usable_device()) is not None:
        return Verdict("tcg", why)
    cache_file = store.root / CACHE
    key = _cache_key(kernel)
    try:
        cached = json.loads(cache_file.read_text())
    except (FileNotFoundError, ValueError):
        cached = {}
    if not refresh and key in cached:
        return Verdict(**cached[key])
    verdict = probe(store, kernel)
    cached[key] = asdict(verdict)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}")
    tmp.write_text(json.dumps(cached, indent=1))
    tmp.replace(cache_file)
    return verdict


def resolve(setting: str, store: Store, kernel: Path, *, emulated: str | None = None) -> Verdict:
    """The accelerator to use for a VM whose ``microvm.accel`` is ``setting``."""
    forced = os.environ.get("MICROVM_ACCEL")
    if forced in ("kvm", "tcg"):
        return Verdict(forced, "set by MICROVM_ACCEL")  # type: ignore[arg-type]
    if emulated:
        return Verdict("tcg", emulated)
    if setting in ("kvm", "tcg"):
        return Verdict(setting, "set by microvm.accel")  # type: ignore[arg-type]
    return auto(store, kernel)
