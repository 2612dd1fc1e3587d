"""Suspend to disk and resume: `microvm suspend` and the next start, next to libvirt's managedsave.

A busybox guest that keeps running (it prints a numbered tick every 0.2 s) is booted,
saved a second after its first tick, and started again. Boot is launch to the first
tick; resume is launch to the first tick of the resumed guest. Ours is an installed VM
run with `microvm run NAME` (its console log is what qemu writes); libvirt's is a
direct-kernel-boot domain of the same kernel, initrd and root image, saved with
`virsh managedsave` and resumed by `virsh start`. The methods alternate every round.
Run by bench/run.py (inside its libvirt session); it imports run.py's helpers.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
from run import BOOT_TIMEOUT, GAP, PLAIN_APPEND, fmt_s, median, microvm_cmd, run_checked, spread, timed

from microvm.config import load_vm
from microvm.runner.build import build_vm
from microvm.store import Store

NAME = "bench-tick"
TICKING = f"""
[guest]
hostName = "{NAME}"
shell = false
commands = ['i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done']
[microvm]
vcpu = 1
mem = 256
"""
TICK = re.compile(r"^tick \d+", re.MULTILINE)


@dataclass
class Figures:
    """One method's rounds."""

    boot_s: list[float] = field(default_factory=list)
    save_s: list[float] = field(default_factory=list)
    size_mib: list[float] = field(default_factory=list)
    resume_s: list[float] = field(default_factory=list)


@dataclass
class SuspendResults:
    rounds: int
    methods: dict[str, Figures]  # label -> figures, in report order
    failed: dict[str, str] = field(default_factory=dict)  # label -> why it stopped


def _until_tick(log: Path, t0: float, alive: Callable[[], bool]) -> float:
    """Seconds from ``t0`` until ``log`` holds a tick (the caller starts from an empty or new log)."""
    while not (log.exists() and TICK.search(log.read_text(errors="replace"))):
        if not alive() or time.perf_counter() - t0 > BOOT_TIMEOUT:
            raise RuntimeError(f"no tick in {log}")
        time.sleep(0.005)
    return time.perf_counter() - t0


class Ours:
    label = "microvm (`microvm suspend`, then `microvm run NAME`)"

    def __init__(self, work: Path) -> None:
        source, state = work / "suspend-source", work / "suspend-state"
        source.mkdir()
        (source / f"{NAME}.toml").write_text(TICKING)
        self.env = {**os.environ, "MICROVM_STATE_DIR": str(state)}
        run_checked([*microvm_cmd(), "create", NAME, "-f", str(source)], self.env)
        self.dir = state / NAME
        self.log = self.dir / f"{NAME}-console.log"
        self.run: subprocess.Popen[bytes] | None = None

    def _start(self) -> float:
        self.log.unlink(missing_ok=True)  # `microvm run` does too, but only once its Python has started
        t0 = time.perf_counter()
        self.run = subprocess.Popen([*microvm_cmd(), "run", NAME], env=self.env, stdout=subprocess.DEVNULL)
        return _until_tick(self.log, t0, lambda: self.run is not None and self.run.poll() is None)

    def round(self, figures: Figures) -> None:
        time.sleep(GAP)
        figures.boot_s.append(self._start())
        seconds, _ = timed(run_checked, [*microvm_cmd(), "suspend", NAME], self.env)
        figures.save_s.append(seconds)
        figures.size_mib.append((self.dir / f"{NAME}.vmstate").stat().st_size / (1 << 20))
        assert self.run is not None and self.run.wait(timeout=60) == 0
        time.sleep(GAP)
        figures.resume_s.append(self._start())
        self.stop()

    def stop(self) -> None:
        if self.run is not None and self.run.poll() is None:
            subprocess.run([self.dir / "current/bin/microvm-shutdown"], cwd=self.dir, check=False, timeout=120)
            self.run.wait(timeout=60)


class Libvirt:
    label = "libvirt `microvm` (`virsh managedsave`, then `virsh start`)"

    def __init__(self, lv: libvirt.Libvirt, store: Store, work: Path) -> None:
        (work / "ticking.toml").write_text(TICKING)
        built = build_vm(store, load_vm(work / "ticking.toml").config)
        assert built.initrd is not None and built.root_image is not None
        self.domain = lv.define(
            "microvm", built.kernel.image, built.initrd, built.root_image, PLAIN_APPEND, 256, guest="tick"
        )

    def _start(self) -> float:
        t0 = time.perf_counter()
        self.domain.start()  # deletes the log first; libvirt opens it anew
        return _until_tick(self.domain.log, t0, lambda: True)

    def round(self, figures: Figures) -> None:
        time.sleep(GAP)
        figures.boot_s.append(self._start())
        seconds, _ = timed(self.domain.managedsave)
        figures.save_s.append(seconds)
        saved = self.domain.saved
        figures.size_mib.append(saved.stat().st_size / (1 << 20) if saved.exists() else math.nan)
        time.sleep(GAP)
        figures.resume_s.append(self._start())
        self.stop()

    def stop(self) -> None:
        self.domain.destroy()


def bench_suspend(rounds: int, work: Path, store: Store, lv: libvirt.Libvirt | None) -> SuspendResults:
    methods = [Ours(work), *([Libvirt(lv, store, work)] if lv is not None else [])]
    results = SuspendResults(rounds, {m.label: Figures() for m in methods})
    for i in range(rounds):
        for method in methods[i % len(methods) :] + methods[: i % len(methods)]:
            if method.label in results.failed:
                continue
            try:
                method.round(results.methods[method.label])
            except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as exc:
                results.failed[method.label] = str(exc)
                method.stop()
        print(f"[suspend {i + 1}/{rounds}]", file=sys.stderr)
    return results


def report_section(r: SuspendResults) -> list[str]:
    out = [
        "## Suspend to disk and resume\n",
        (
            "A 256 MB busybox guest that prints a numbered tick every 0.2 s: booted, saved a second after its "
            "first tick, started again. Boot and resume run from the launch to the first tick; save is the "
            f"command's own time. Medians over {r.rounds} round{'s' if r.rounds != 1 else ''}, methods "
            "alternating.\n"
        ),
        "| Method | Boot to first tick | Save | Saved size | Resume to next tick |",
        "|---|---|---|---|---|",
    ]
    for label, f in r.methods.items():
        if not f.resume_s:
            continue
        size = median(f.size_mib)
        out.append(
            f"| {label} | {fmt_s(median(f.boot_s))} | {fmt_s(median(f.save_s))} "
            f"| {'n/a' if math.isnan(size) else f'{size:.0f} MiB'} "
            f"| {fmt_s(median(f.resume_s))} ({spread(f.resume_s)}) |"
        )
    out += [f"\n{label} stopped: {why}" for label, why in r.failed.items()]
    return [*out, ""]
