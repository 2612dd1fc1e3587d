#!/usr/bin/env python3
"""Benchmark microvm next to what users would use instead: plain qemu and libvirt.

    .venv/bin/python bench/run.py [--quick] [--runs N] [--debian-runs N] [--output docs/benchmarks.md]

Measures builds, `microvm eval`/`check` of a host file with 50 VMs, boot time through our
runner, `microvm run`, hand-written qemu command lines and libvirt domains (interleaved, the
same idle gap before each), the hypervisor's memory beyond the guest's RAM, a density curve
(N 64 MB guests started together), image sizes, suspend to disk and resume against libvirt's
managedsave (bench/suspend.py), and a Debian guest's builds, boot to login and images
(bench/debian.py); writes a markdown report with plots.
Everything runs under qemu's TCG when KVM cannot boot guests (MICROVM_ACCEL=tcg is set unless
you set it). The Debian kernel's store entry is hard-linked in from an existing store, so a
"cold" build measures our own work, not an apt download.

``--quick`` (what tests/test_bench.py runs) does one of each of the cheap parts and skips
libvirt, the q35 lines, most of the density curve and the Debian guest, saying so in the report.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
EXAMPLE = REPO / "examples" / "hello" / "vm.toml"
MARKER = "hello: booted in"
BOOT_TIMEOUT = 180.0
GAP = 1.0  # seconds of idle before every measurement, the same for every method
PLAIN_APPEND = "console=ttyS0 tsc_early_khz=2600000 panic=-1"  # what a user copies from a TCG how-to
DENSITY_MEM = 64  # the size: small guests boot trimmed (microvm.runner.build.SMALL_GUEST_MB)
DENSITY_COUNTS = (1, 5, 10, 20)
DENSITY_TIMEOUT = 600.0
HOST_VMS = 50
CLI_VMS, CLI_VMS_QUICK = 100, 3  # installed VMs `microvm list` goes through

os.environ.setdefault("MICROVM_ACCEL", "tcg")  # before microvm is imported
# the store is under root's home, which the unprivileged hypervisor user cannot reach (docs/guide.md)
os.environ.setdefault("MICROVM_RUN_AS_ROOT", "1")

import libvirt

from microvm.config import load_vm
from microvm.host.statedir import installed_stamp
from microvm.runner import fastpath
from microvm.runner.build import BuiltVM, build_vm
from microvm.store import Store

NAN = float("nan")


# --- helpers -------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else NAN


def fmt_s(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f} s"


def fmt_ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1000:.0f} ms"


def fmt_mib(kib: float) -> str:
    return "n/a" if math.isnan(kib) else f"{kib / 1024:.1f} MiB"


def fmt_size(n: int | None) -> str:
    return "n/a" if n is None else f"{n / (1 << 20):.2f} MiB"


def spread(xs: list[float], fmt: Callable[[float], str] = fmt_s) -> str:
    xs = [x for x in xs if not math.isnan(x)]
    return f"{fmt(min(xs))} – {fmt(max(xs))}" if len(xs) > 1 else "–"


def ratio(a: float, b: float) -> str:
    return "n/a" if math.isnan(a) or math.isnan(b) or not b else f"{a / b:.2f}"


def ratio_interval(xs: list[float], refs: list[float], resamples: int = 2000) -> tuple[float, float]:
    """The middle 90 % of the ratio of medians over bootstrap resamples of both samples.

    Single boots vary by about ±20 % on a shared machine; this says how far
    the ratio of a handful of runs can be trusted. Seeded: the same runs give the same interval.
    """
    rng = random.Random(0)
    ratios = sorted(
        statistics.median(rng.choices(xs, k=len(xs))) / statistics.median(rng.choices(refs, k=len(refs)))
        for _ in range(resamples)
    )
    return ratios[int(0.05 * resamples)], ratios[int(0.95 * resamples) - 1]


def source_stores() -> list[Path]:
    """Existing stores that may hold the kernel entry, most specific first."""
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cands = [home_cache / "microvm" / "store", Path("/var/lib/microvm/store"), home_cache / "microvm-test" / "store"]
    if os.environ.get("MICROVM_TEST_CACHE"):
        cands.insert(0, Path(os.environ["MICROVM_TEST_CACHE"]) / "store")
    if os.environ.get("MICROVM_STORE"):
        cands.insert(0, Path(os.environ["MICROVM_STORE"]))
    return [c for c in dict.fromkeys(cands) if c.is_dir() and any(c.glob("*-kernel-*"))]


def _link_tree(src: Path, dst: Path) -> None:
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=link)


def fresh_store(parent: Path, source: Path | None) -> Store:
    """A new empty store, seeded with the kernel entries and the caches of ``source``."""
    root = Path(tempfile.mkdtemp(prefix="store-", dir=parent))
    if source is not None:
        for entry in source.glob("*-kernel-*"):
            if entry.is_dir():
                _link_tree(entry, root / entry.name)
        if (source / ".cache").is_dir():
            _link_tree(source / ".cache", root / ".cache")
            shutil.rmtree(root / ".cache" / "run", ignore_errors=True)  # `microvm run` records: made here
    return Store(root)


def timed(fn: Callable[..., object], *args: object) -> tuple[float, object]:
    """Seconds ``fn(*args)`` took (after a pause so one measurement does not slow the next), and its result."""
    time.sleep(GAP)
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def microvm_cmd() -> list[str]:
    exe = REPO / ".venv" / "bin" / "microvm"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "microvm"]


def run_checked(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=cwd, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def shown(argv: list[str], store_root: Path) -> str:
    return shlex.join(argv).replace(str(store_root), "$STORE")


# --- machine -------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    mem = meminfo_kib("MemTotal")
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    libvirt_version = "not installed"
    if shutil.which("libvirtd"):
        libvirt_version = subprocess.run(
            ["libvirtd", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return {
        "CPUs (nproc)": str(os.cpu_count()),
        "CPU model": cpu,
        "Memory": f"{mem / (1 << 20):.1f} GiB",
        "Host kernel": platform.release(),
        "qemu": qemu,
        "libvirt": libvirt_version,
        "Accelerator": f"{os.environ['MICROVM_ACCEL']} (MICROVM_ACCEL)",
        "Python": platform.python_version(),
        "Load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# --- builds and evaluation -----------------------------------------------------------


@dataclass
class Builds:
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    cli_warm: list[float] = field(default_factory=list)
    cli_help: list[float] = field(default_factory=list)
    squashfs: list[float] = field(default_factory=list)
    host_eval: list[float] = field(default_factory=list)
    host_check: list[float] = field(default_factory=list)


def host_file(work: Path) -> Path:
    """A host file declaring HOST_VMS VMs, half in files of their own, half inline."""
    lines = []
    for i in range(HOST_VMS):
        name = f"vm{i:02d}"
        if i % 2:
            (work / f"{name}.toml").write_text(
                f'imports = ["{EXAMPLE}"]\n[guest]\nhostName = "{name}"\n[microvm]\nmem = {128 + i}\n'
            )
            lines += [f"[microvm.vms.{name}]", f'config = "{name}.toml"']
        else:
            lines += [
                f"[microvm.vms.{name}.config.guest]",
                f'commands = ["echo {name} up"]',
                f"[microvm.vms.{name}.config.microvm]",
                f"mem = {128 + i}",
                f"[[microvm.vms.{name}.config.microvm.volumes]]",
                f'image = "{name}-var.img"',
                'mountPoint = "/var"',
                "size = 64",
            ]
    path = work / "host.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def bench_builds(runs: int, work: Path, source: Path | None, variants: dict[str, Path]) -> tuple[Builds, Store, dict]:
    """Cold and warm builds of the example; the variants (squashfs, q35) built once per store after it."""
    res = Builds()
    config = load_vm(EXAMPLE).config
    host = host_file(work)
    store: Store | None = None
    built: dict[str, BuiltVM] = {}
    for i in range(runs):
        if store is not None:
            shutil.rmtree(store.root, ignore_errors=True)
        store = fresh_store(work, source)
        env = {**os.environ, "MICROVM_STORE": str(store.root)}
        print(f"[build {i + 1}/{runs}] store {store.root}", file=sys.stderr)
        t, built["hello"] = timed(build_vm, store, config)
        res.cold.append(t)
        t, _ = timed(build_vm, store, config)
        res.warm.append(t)
        t, _ = timed(run_checked, [*microvm_cmd(), "build", str(EXAMPLE)], env)
        res.cli_warm.append(t)
        t, _ = timed(run_checked, [*microvm_cmd(), "--help"], env)
        res.cli_help.append(t)
        t, _ = timed(run_checked, [*microvm_cmd(), "eval", "--host", str(host)], env)
        res.host_eval.append(t)
        t, _ = timed(run_checked, [*microvm_cmd(), "check", "--host", str(host)], env)
        res.host_check.append(t)
        for name, file in variants.items():
            t, built[name] = timed(build_vm, store, load_vm(file).config)
            if name == "squashfs":
                res.squashfs.append(t)
        print(
            f"  cold {res.cold[-1]:.2f}  warm {res.warm[-1]:.3f}  cli-warm {res.cli_warm[-1]:.3f}  "
            f"help {res.cli_help[-1]:.3f}  eval {res.host_eval[-1]:.2f}  check {res.host_check[-1]:.2f}",
            file=sys.stderr,
        )
    assert store is not None
    return res, store, built


# --- boots ---------------------------------------------------------------------------


def memory_kib(pid: int, guest_mb: int) -> tuple[float, float]:
    """(resident KiB in all, proportional KiB outside the guest's RAM) of a hypervisor process.

    The guest's RAM is the anonymous mapping of the guest's memory size (up to 2 MiB more for
    alignment). Outside it, proportional set size: pages shared with other processes (the
    kernel file qemu maps, libraries) count divided by how many processes map them.
    """
    total = beyond = 0.0
    in_ram = False
    low, high = guest_mb << 20, (guest_mb + 2) << 20
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                fields = line.split()
                if "-" in fields[0] and not fields[0].endswith(":"):
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    in_ram = low <= hi - lo <= high and len(fields) < 6  # anonymous, guest-sized
                elif fields[0] == "Rss:":
                    total += float(fields[1])
                elif fields[0] == "Pss:" and not in_ram:
                    beyond += float(fields[1])
    except OSError:
        return NAN, NAN
    return total, beyond


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return NAN
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _exited(pid: int) -> bool:
    """Gone or a zombie (PID 1 here reaps orphans late)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@dataclass
class Boot:
    marker: float  # launch to the marker line
    exit: float  # launch to the hypervisor's exit
    rss_kib: float = NAN  # hypervisor's resident memory at the marker
    overhead_kib: float = NAN  # ... outside the guest's RAM
    start_cmd: float = NAN  # libvirt: how long `virsh start` took
    cpu: float = NAN  # the hypervisor's CPU time (user + system) at the marker
    started: float = NAN  # launch to the hypervisor's console log existing (qemu has started)


class Launch:
    """One running boot: where its console text is, and which process is the hypervisor."""

    def __init__(
        self, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None, started: Path | None = None
    ) -> None:
        self.proc, self.log = proc, log
        # a file the hypervisor creates as it starts (its console log), to time the launcher's own cost
        self.started = started if started is not None else log
        self.chunks: list[str] = []
        self.pid: int | None = proc.pid if proc else None
        if proc is not None and proc.stdout is not None:
            threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.chunks.append(raw.decode(errors="replace"))

    def text(self) -> str:
        if self.log is not None:
            try:
                return self.log.read_text(errors="replace")
            except FileNotFoundError:
                return ""
        return "".join(self.chunks)

    def exited(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        return self.pid is None or _exited(self.pid)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        elif self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)


def measure(start: Callable[[], Launch], guest_mb: int, memory: bool = True) -> Boot:
    """Launch, wait for the marker line (polled every 10 ms), note the memory, wait for the exit."""
    t0 = time.perf_counter()
    launch = start()
    start_cmd = time.perf_counter() - t0 if launch.proc is None else NAN
    marker, rss, overhead, cpu, started = NAN, NAN, NAN, NAN, NAN
    deadline = t0 + BOOT_TIMEOUT
    while time.perf_counter() < deadline:
        if math.isnan(started) and launch.started is not None and launch.started.exists():
            started = time.perf_counter() - t0
        if re.search(re.escape(MARKER) + r"[^\n]*\n", launch.text()):
            marker = time.perf_counter() - t0
            if memory and launch.pid is not None:
                rss, overhead = memory_kib(launch.pid, guest_mb)
                cpu = cpu_seconds(launch.pid)
            break
        if launch.exited():
            break
        time.sleep(0.001 if math.isnan(started) else 0.01)
    while not launch.exited():
        if time.perf_counter() > deadline:
            launch.kill()
        time.sleep(0.01)
    end = time.perf_counter() - t0
    if launch.proc is not None:
        launch.proc.wait()
    if math.isnan(marker):
        raise SystemExit(f"no marker within {BOOT_TIMEOUT:.0f} s; console:\n{launch.text()[-3000:]}")
    return Boot(marker, end, rss, overhead, start_cmd, cpu, started)


def plain_command(machine: str, kernel: Path, initrd: Path, disk: Path) -> list[str]:
    """The qemu command line a user would write by hand for this kernel, initrd and disk."""
    blk = "virtio-blk-device" if machine == "microvm" else "virtio-blk-pci"
    return [
        "qemu-system-x86_64", "-M", machine, "-accel", os.environ["MICROVM_ACCEL"], "-m", "256M",
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", PLAIN_APPEND,
        "-drive", f"id=root,format=raw,file={disk},if=none,read-only=on",
        "-device", f"{blk},drive=root,serial=microvm-root",
        "-no-reboot",
    ]  # fmt: skip


@dataclass
class Method:
    key: str
    label: str
    start: Callable[[], Launch]
    memory: bool = True  # whether the launched process is the hypervisor worth measuring


def methods(built: dict[str, BuiltVM], work: Path, lv: libvirt.Libvirt | None, quick: bool) -> list[Method]:
    """Every way to boot the example, in report order."""
    hello = built["hello"]

    def in_dir(prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=work))

    def ours() -> Launch:
        wd = in_dir("ours-")
        proc = subprocess.Popen([str(hello.run)], cwd=wd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        return Launch(proc, wd / "hello-console.log")

    def command() -> Launch:
        state = in_dir("cmd-")
        argv = [*microvm_cmd(), "run", "--state-dir", str(state), str(EXAMPLE)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return Launch(proc, started=state / "hello" / "hello-console.log")

    def plain(machine: str, b: BuiltVM) -> Callable[[], Launch]:
        def start() -> Launch:
            argv = plain_command(machine, b.kernel.image, b.initrd, b.root_image)
            proc = subprocess.Popen(
                argv, cwd=in_dir("plain-"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            return Launch(proc)

        return start

    def virsh(domain: libvirt.Domain) -> Callable[[], Launch]:
        def start() -> Launch:
            domain.start()
            launch = Launch(log=domain.log)
            launch.pid = domain.qemu_pid()
            return launch

        return start

    found = [
        Method("ours", "microvm runner (`bin/microvm-run`)", ours),
        Method("command", "`microvm run FILE` (built before)", command, memory=False),
        Method("plain-microvm", "plain qemu `-M microvm`", plain("microvm", hello)),
    ]
    if not quick:
        found.append(Method("plain-q35", "plain qemu `-M q35`", plain("q35", built["q35"])))
    if lv is not None:
        for machine in libvirt.MACHINES:
            b = hello if machine == "microvm" else built["q35"]
            domain = lv.define(machine, b.kernel.image, b.initrd, b.root_image, PLAIN_APPEND, 256)
            default = " (libvirt's default machine)" if machine == "pc" else ""
            found.append(Method(f"libvirt-{machine}", f"libvirt `{machine}`{default}", virsh(domain)))
    return found


def bench_boots(runs: int, boot_methods: list[Method], warm_up: bool, failed: dict[str, str]) -> dict[str, list[Boot]]:
    """An untimed warm-up boot per method (page cache, libvirt's first start), then ``runs`` rounds,
    rotating which method goes first. A method whose command fails (libvirt) is dropped and noted in ``failed``."""
    results: dict[str, list[Boot]] = {m.key: [] for m in boot_methods}
    for m in boot_methods if warm_up else []:
        print(f"[boot] warm-up {m.key}", file=sys.stderr)
        try:
            measure(m.start, 256, memory=False)
        except subprocess.SubprocessError as exc:
            failed[m.key] = f"warm-up: {exc}"
    for i in range(runs):
        order = boot_methods[i % len(boot_methods) :] + boot_methods[: i % len(boot_methods)]
        for m in order:
            if m.key in failed:
                continue
            time.sleep(GAP)
            try:
                b = measure(m.start, 256, m.memory)
            except subprocess.SubprocessError as exc:  # libvirt: the benchmark goes on without it
                failed[m.key] = f"round {i + 1}: {exc}"
                print(f"[boot] {m.key} failed, dropped: {exc}", file=sys.stderr)
                continue
            results[m.key].append(b)
            print(
                f"[boot {i + 1}/{runs}] {m.key:14} marker {b.marker:.2f} s  exit {b.exit:.2f} s  "
                f"overhead {fmt_mib(b.overhead_kib)}",
                file=sys.stderr,
            )
    return results


# --- density -------------------------------------------------------------------------


DENSITY_VM = f"""
[guest]
hostName = "dense"
shell = false
commands = ['echo "{MARKER} $(cut -d" " -f1 /proc/uptime) s"']
[microvm]
mem = {DENSITY_MEM}
"""


@dataclass
class Density:
    count: int
    all_booted: float  # launch of all to the last marker
    rss_kib: float  # sum of the hypervisors' resident memory then
    overhead_kib: float  # ... outside the guests' RAM
    available_drop_kib: float  # the host's MemAvailable before minus then (other load on the host shows here)


def meminfo_kib(key: str) -> float:
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith(key + ":"))
    return float(line.split()[1])


def bench_density(counts: tuple[int, ...], built: BuiltVM, work: Path) -> list[Density]:
    """Start ``count`` guests of DENSITY_MEM MB at once; time until every one printed its marker."""
    results = []
    for count in counts:
        time.sleep(GAP * 3)
        before = meminfo_kib("MemAvailable")
        dirs = [Path(tempfile.mkdtemp(prefix=f"dense{count}-", dir=work)) for _ in range(count)]
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen([str(built.run)], cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL) for d in dirs
        ]
        pending = set(range(count))
        try:
            while pending and time.perf_counter() - t0 < DENSITY_TIMEOUT:
                for i in list(pending):
                    log = dirs[i] / "dense-console.log"
                    if log.exists() and MARKER in log.read_text(errors="replace"):
                        pending.discard(i)
                    elif procs[i].poll() is not None:
                        raise SystemExit(f"density guest {i} of {count} exited early; see {dirs[i]}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            mems = [memory_kib(p.pid, DENSITY_MEM) for p in procs]
            drop = before - meminfo_kib("MemAvailable")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
        if pending:
            elapsed = NAN
        results.append(Density(count, elapsed, sum(m[0] for m in mems), sum(m[1] for m in mems), drop))
        print(f"[density] {count:2} VMs: all booted after {elapsed:.2f} s", file=sys.stderr)
    return results


# --- plots ---------------------------------------------------------------------------


def plots(output: Path, boot_methods: list[Method], boots: dict[str, list[Boot]], density: list[Density]) -> list[str]:
    """Write the PNGs next to ``output``; return their names (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []

    def save(fig, what: str) -> str:
        name = f"{output.with_suffix('').name}-{what}.png"
        fig.tight_layout()
        fig.savefig(output.parent / name, dpi=100)
        plt.close(fig)
        return name

    names = []
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(boot_methods) + 1.5))
    labels = [m.label.replace("`", "") for m in boot_methods]
    for offset, what, colour in ((-0.2, "marker", "tab:blue"), (0.2, "exit", "tab:grey")):
        values = [[getattr(b, what) for b in boots[m.key]] for m in boot_methods]
        meds = [median(v) for v in values]
        lo = [m - min(v) for m, v in zip(meds, values)]
        hi = [max(v) - m for m, v in zip(meds, values)]
        ax.barh([i + offset for i in range(len(labels))], meds, height=0.4, xerr=[lo, hi], color=colour,
                label={"marker": "launch to booted (marker)", "exit": "launch to power-off"}[what])  # fmt: skip
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median, whiskers: min-max)")
    ax.legend(loc="lower right")
    ax.set_title("Boot of the busybox example")
    names.append(save(fig, "boot"))
    if density:
        fig, ax1 = plt.subplots(figsize=(7, 4))
        counts = [d.count for d in density]
        ax1.plot(counts, [d.all_booted for d in density], "o-", color="tab:blue", label="time until all booted")
        ax1.set_xlabel(f"{DENSITY_MEM} MB guests started together")
        ax1.set_ylabel("seconds", color="tab:blue")
        ax2 = ax1.twinx()
        ax2.plot(counts, [d.rss_kib / 1024 for d in density], "s--", color="tab:red", label="hypervisors' RSS")
        ax2.set_ylabel("MiB resident", color="tab:red")
        ax1.set_title("Density: guests started at once")
        names.append(save(fig, "density"))
    return names


# --- report --------------------------------------------------------------------------


def size(p: Path | None) -> int | None:
    return p.stat().st_size if p is not None and p.exists() else None


@dataclass
class Results:
    argv: list[str]
    runs: int
    machine: dict[str, str]
    source: Path | None
    builds: Builds
    built: dict[str, BuiltVM]
    store_root: Path
    boot_methods: list[Method]
    boots: dict[str, list[Boot]]
    density: list[Density]
    cli: Cli
    skipped: dict[str, str]  # part -> why it was skipped
    domain_xml: dict[str, str]
    debian: Any = None  # debian.DebianResults, unless skipped
    suspend: Any = None  # suspend.SuspendResults, unless skipped
    startup: Any = None  # cli.CliResults
    pictures: list[str] = field(default_factory=list)
    startup_picture: str | None = None


def report(r: Results) -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    cmd = shlex.join([".venv/bin/python", "bench/run.py", *r.argv])
    out: list[str] = []
    w = out.append
    w("# microvm benchmarks\n")
    w(
        f"Produced by `{cmd}` on {now}. Medians over {r.runs} run{'s' if r.runs != 1 else ''}; "
        f"methods interleaved (the first method rotates every round) with a {GAP:.0f} s idle gap "
        "before every measurement. Regenerate with `make bench`.\n"
    )
    if r.skipped:
        w("Skipped in this run:\n")
        for part, why in r.skipped.items():
            w(f"- {part}: {why}")
        w("")
    w("## Machine\n")
    w("| | |\n|---|---|")
    for k, v in r.machine.items():
        w(f"| {k} | {v} |")
    w("")
    w(
        "The guests here run under qemu's TCG (software emulation): the host's KVM is a nested PVM "
        "that cannot boot stock Debian kernels. On a host with working KVM the benchmark uses KVM when "
        "run with `MICROVM_ACCEL=kvm`, and boots are much faster; ratios measured here are what "
        "compares. The machine is shared with other jobs: expect ±0.3 s of noise on single boots.\n"
    )

    b = r.builds
    w("## Build and evaluation\n")
    if r.source is not None:
        w(
            "Each cold build goes into a fresh, empty store, except that the Debian kernel's entry "
            f"and the store's caches are hard-linked in from `{r.source}`: cold measures microvm's own work "
            "(system tree, root image, initrd, runner), not downloading the kernel package.\n"
        )
    else:
        w("No store with a kernel was found: the cold builds **include downloading the kernel package**.\n")
    w("| Step | Median | Range |\n|---|---|---|")
    rows = [
        ("Cold build of examples/hello, library (`build_vm`)", b.cold, fmt_s),
        ("Warm build (no change), library", b.warm, fmt_ms),
        ("Warm build, `microvm build FILE` command", b.cli_warm, fmt_ms),
        ("`microvm --help` (command start-up)", b.cli_help, fmt_ms),
        (f"`microvm eval --host` of a host file with {HOST_VMS} VMs", b.host_eval, fmt_ms),
        ("`microvm check --host` of the same file", b.host_check, fmt_ms),
        ("squashfs variant, after the erofs one in the same store", b.squashfs, fmt_s),
    ]
    for label, xs, fmt in rows:
        if xs:
            w(f"| {label} | {fmt(median(xs))} | {spread(xs, fmt)} |")
    w("")

    w("## Boot\n")
    w(
        f"From launch until the guest's line `{MARKER} …` (printed by the example's first command, after "
        "the kernel, the initrd, the root mount and busybox init's sysinit) and until the hypervisor "
        "exits after the guest's `poweroff`. The same kernel, initrd and root image for every method; "
        "the hand-written lines and libvirt boot the kernel package's bzImage (what a user has), our "
        "runner boots the uncompressed vmlinux through its PVH entry. Consoles are read from a log file "
        "(runner, libvirt) or stdout (plain qemu, `microvm run`), polled every 10 ms.\n"
    )
    for name in r.pictures[:1]:
        w(f"![Boot time by method]({name})\n")
    ref_plain = median([x.marker for x in r.boots.get("plain-microvm", [])])
    ref_libvirt = median([x.marker for x in r.boots.get("libvirt-pc", [])])
    w("| Method | To booted (median) | Range | To power-off (median) | ÷ plain qemu microvm | ÷ libvirt pc |")
    w("|---|---|---|---|---|---|")
    for m in r.boot_methods:
        xs = r.boots[m.key]
        mk = median([x.marker for x in xs])
        w(
            f"| {m.label} | {fmt_s(mk)} | {spread([x.marker for x in xs])} | {fmt_s(median([x.exit for x in xs]))} | "
            f"{ratio(mk, ref_plain)} | {ratio(mk, ref_libvirt)} |"
        )
    w("")
    ours = [x.marker for x in r.boots.get("ours", [])]
    for key, name in (("plain-microvm", "plain qemu `-M microvm`"), ("libvirt-pc", "libvirt `pc`")):
        refs = [x.marker for x in r.boots.get(key, [])]
        if len(refs) > 1 and len(ours) > 1:
            low, high = ratio_interval(ours, refs)
            w(
                f"Our runner ÷ {name}: {ratio(median(ours), median(refs))}; the middle 90 % of 2000 "
                f"bootstrap resamples of these runs lies between {low:.2f} and {high:.2f}.\n"
            )
    w(
        "The machine is shared with other jobs, so wall times carry their load. The hypervisor's CPU time "
        "(user + system) until the marker is much less disturbed by it; under TCG it is the emulation work "
        "each method needs to boot the guest:\n"
    )
    cpu_plain = median([x.cpu for x in r.boots.get("plain-microvm", [])])
    cpu_libvirt = median([x.cpu for x in r.boots.get("libvirt-pc", [])])
    w("| Method | qemu CPU to booted (median) | Range | ÷ plain qemu microvm | ÷ libvirt pc |\n|---|---|---|---|---|")
    for m in r.boot_methods:
        if m.memory:
            cpus = [x.cpu for x in r.boots[m.key]]
            mc = median(cpus)
            w(f"| {m.label} | {fmt_s(mc)} | {spread(cpus)} | {ratio(mc, cpu_plain)} | {ratio(mc, cpu_libvirt)} |")
    w("")
    ours, command = r.boots.get("ours", []), r.boots.get("command", [])
    if ours and command:
        extra_marker = median([x.marker for x in command]) - median([x.marker for x in ours])
        start_ours, start_cmd = median([x.started for x in ours]), median([x.started for x in command])
        w(
            "`microvm run` of the built VM: from launch until the runner is about to start qemu (it empties "
            f"the console log then) took {fmt_ms(start_cmd)} ({spread([x.started for x in command], fmt_ms)}) against "
            f"{fmt_ms(start_ours)} for the runner alone: the command's start-up and its check that nothing "
            f"changed cost **{(start_cmd - start_ours) * 1000:+.0f} ms**. That difference is measured before the "
            f"guest runs, so the machine's noise barely touches it; the difference to booted in the table "
            f"above ({extra_marker:+.2f} s) carries the noise of two separate boots.\n"
        )
    lv_starts = [x.start_cmd for k, xs in r.boots.items() if k.startswith("libvirt") for x in xs]
    if lv_starts:
        after = [x.marker - x.start_cmd for k, xs in r.boots.items() if k.startswith("libvirt") for x in xs]
        w(
            f"`virsh start` itself returned after {fmt_s(median(lv_starts))} (median over every libvirt boot; "
            "libvirtd starts qemu paused, sets it up over QMP, then lets it run); from its return to the "
            f"marker took {fmt_s(median(after))}.\n"
        )
    hello = r.built["hello"]
    w("Our runner's command line:\n")
    w("```\n" + shown(runner_argv(hello), r.store_root) + "\n```\n")
    w("The hand-written qemu line (q35: `-M q35` and `virtio-blk-pci`, with the initrd built for q35):\n")
    w("```\n" + shown(plain_command("microvm", hello.kernel.image, hello.initrd, hello.root_image), r.store_root))
    w("```\n")
    for machine, xml in r.domain_xml.items():
        w(f"<details><summary>libvirt domain ({machine})</summary>\n\n```xml\n{xml}```\n</details>\n")

    w("## Host cost per VM\n")
    w(
        "Memory of the hypervisor process when the guest printed its marker (256 MB guest): resident "
        "in all, and outside the guest's RAM as proportional set size (PSS: pages shared with other "
        "processes, such as the kernel file our runner's qemu maps, count divided among them), which "
        "is what each VM costs the host beyond what its guest uses. qemu's TCG translation cache is "
        "part of that cost; with KVM it is not there.\n"
    )
    w("| Method | RSS (median) | PSS beyond guest RAM (median) |\n|---|---|---|")
    for m in r.boot_methods:
        if m.memory:
            rss, beyond = (median([getattr(x, a) for x in r.boots[m.key]]) for a in ("rss_kib", "overhead_kib"))
            w(f"| {m.label} | {fmt_mib(rss)} | {fmt_mib(beyond)} |")
    w("")

    w("## Density\n")
    if r.density:
        w(
            f"N busybox guests of {DENSITY_MEM} MB (our runner, one built VM) started at the same moment on "
            f"this {os.cpu_count()}-core machine; time until every one printed its marker, and memory then. "
            "PSS counts pages shared between the VMs (the kernel file qemu maps, qemu's own code) once, "
            "divided among them.\n"
        )
        for name in r.pictures[1:]:
            w(f"![Density curve]({name})\n")
        columns = ["Guests", "All booted after", "Per guest", "Hypervisors' RSS", "PSS beyond guest RAM, per VM"]
        w("| " + " | ".join([*columns, "Host MemAvailable drop"]) + " |")
        w("|---|---|---|---|---|---|")
        for d in r.density:
            w(
                f"| {d.count} | {fmt_s(d.all_booted)} | {fmt_s(d.all_booted / d.count)} | {fmt_mib(d.rss_kib)} | "
                f"{fmt_mib(d.overhead_kib / d.count)} | {fmt_mib(d.available_drop_kib)} |"
            )
        w("")

    w("## Image sizes\n")
    k = hello.kernel
    sq = r.built["squashfs"]
    w("| Artifact (examples/hello) | Size |\n|---|---|")
    w(f"| Kernel bzImage (`{k.image.name}`) | {fmt_size(size(k.image))} |")
    w(f"| Kernel vmlinux, uncompressed, what the runner boots | {fmt_size(size(k.vmlinux))} |")
    w(f"| Initrd (uncompressed cpio: busybox + the modules this VM needs) | {fmt_size(size(hello.initrd))} |")
    w(f"| Root image, erofs (default, lz4hc) | {fmt_size(size(hello.root_image))} |")
    w(f'| Root image, squashfs (`storeDiskType = "squashfs"`) | {fmt_size(size(sq.root_image))} |')
    total = sum(size(p) or 0 for p in (k.vmlinux or k.image, hello.initrd, hello.root_image))
    w(f"| **Total booted by the runner** (vmlinux + initrd + erofs) | {fmt_size(total)} |")
    w("")

    w("## CLI on installed VMs\n")
    c = r.cli
    w(
        f"{c.installed} VMs created from a source directory with `microvm create` (each a real build; "
        f"{fmt_s(c.install_s)} for all) into a private state directory. `list` decides each VM's state "
        "(current / outdated / stale / not booted) from what the build recorded, without building.\n"
    )
    w("| Command | Median | Spread |\n|---|---|---|")
    for what, xs in (
        (f"`microvm list` ({c.installed} VMs)", c.list_s),
        ("`microvm status NAME`", c.status_s),
        ("`microvm create NAME` of an already-built VM", c.create_s),
    ):
        w(f"| {what} | {fmt_ms(median(xs))} | {spread(xs, fmt_ms)} |")
    w("")
    if r.startup is not None:
        from cli import report_section as startup_section  # bench/cli.py, which imports this module's helpers

        out += startup_section(r.startup, r.startup_picture)
    if r.suspend is not None:
        from suspend import report_section as suspend_section

        out += suspend_section(r.suspend)
    if r.debian is not None:
        from debian import report_section

        out += report_section(r.debian)
    notes = REPO / "bench" / "notes.md"
    if notes.exists():
        w(notes.read_text())
    return "\n".join(out)


def runner_argv(built: BuiltVM) -> list[str]:
    """The hypervisor command line in the runner script (its last, exec'ed command)."""
    script = built.run.read_text()
    words = shlex.split(script[script.rindex("\nexec ") + 1 :].replace("\\\n", " "))[1:]
    return words[2:] if words[0] == "-a" else words


@dataclass
class Cli:
    installed: int = 0
    install_s: float = 0.0  # creating all of them (each a real build into the benchmark's store)
    list_s: list[float] = field(default_factory=list)
    status_s: list[float] = field(default_factory=list)
    create_s: list[float] = field(default_factory=list)  # a VM whose build is already in the store


def bench_cli(runs: int, count: int, work: Path) -> Cli:
    """`microvm list` over ``count`` installed VMs, `status` of one, `create` of an already-built VM.

    The VMs are created from a source directory into a private state directory
    with the real command, so `list` reads what it reads on a host.
    """
    res = Cli(installed=count)
    source, state = work / "cli-source", work / "cli-state"
    source.mkdir()
    for i in range(count):
        (source / f"cli{i:03d}.toml").write_text(
            f'imports = ["{EXAMPLE}"]\n[guest]\nhostName = "cli{i:03d}"\n[microvm]\nmem = {128 + i}\n'
        )
    env = {**os.environ, "MICROVM_STATE_DIR": str(state), "MICROVM_NO_FAST_RUN": "1"}
    cmd = microvm_cmd()
    t0 = time.perf_counter()
    for i in range(count):
        run_checked([*cmd, "create", f"cli{i:03d}", "-f", str(source)], env)
    res.install_s = time.perf_counter() - t0
    for _ in range(runs):
        t, listed = timed(run_checked, [*cmd, "list"], env)
        assert len(listed.stdout.splitlines()) == count + 1, listed.stdout  # a header, a line per VM
        res.list_s.append(t)
        t, _ = timed(run_checked, [*cmd, "status", "cli000"], env)
        res.status_s.append(t)
        run_checked([*cmd, "remove", "cli000"], env)
        t, _ = timed(run_checked, [*cmd, "create", "cli000", "-f", str(source)], env)
        res.create_s.append(t)
    print(f"  cli: list {median(res.list_s):.3f}  status {median(res.status_s):.3f}", file=sys.stderr)
    return res


# --- main ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one of each cheap part; no libvirt, q35, big density")
    ap.add_argument("--runs", type=int, default=7, help="runs per method (default 7: single boots vary by ±20%% here)")
    ap.add_argument("--debian-runs", type=int, default=2, help="Debian guest builds and boots (0: skip; slow)")
    ap.add_argument("--suspend-runs", type=int, default=3, help="suspend and resume rounds (0: skip; quick: 1)")
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs = 1
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    mach = machine()
    sources = source_stores()
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="microvm-bench-") as tmp:
        work = Path(tmp)
        variants = {"squashfs": work / "squashfs.toml"}
        variants["squashfs"].write_text(f'imports = ["{EXAMPLE}"]\n[microvm]\nstoreDiskType = "squashfs"\n')
        if args.quick:
            skipped["q35 (plain qemu and libvirt)"] = "quick mode"
        else:
            variants["q35"] = work / "q35.toml"
            variants["q35"].write_text(f'imports = ["{EXAMPLE}"]\n[microvm.qemu]\nmachine = "q35"\n')
        builds, store, built = bench_builds(args.runs, work, sources[0] if sources else None, variants)
        os.environ["MICROVM_STORE"] = str(store.root)  # `microvm run` uses the benchmark's store
        if fastpath.lookup(EXAMPLE, None, installed_stamp()) is None:
            skipped["`microvm run`'s fast path"] = "the build's record did not match: the full path was measured"
        density_file = work / "dense.toml"
        density_file.write_text(DENSITY_VM)
        dense = build_vm(store, load_vm(density_file).config)

        why_not = "quick mode" if args.quick else libvirt.unavailable()
        if why_not:
            skipped["libvirt"] = why_not
        with libvirt.Libvirt() if why_not is None else contextlib.nullcontext() as lv:
            boot_methods = methods(built, work, lv, args.quick)
            failed: dict[str, str] = {}
            boots = bench_boots(args.runs, boot_methods, warm_up=not args.quick, failed=failed)
            skipped.update({f"{key} (after it failed)": why for key, why in failed.items()})
            boot_methods = [m for m in boot_methods if boots[m.key]]
            suspend_results = None
            if args.suspend_runs < 1:
                skipped["suspend and resume"] = "--suspend-runs 0"
            else:
                from suspend import bench_suspend  # bench/suspend.py, which imports this module's helpers

                suspend_results = bench_suspend(1 if args.quick else args.suspend_runs, work, store, lv)
            domain_xml = (
                {d.removeprefix("microvm-bench-"): (lv.files / f"{d}.xml").read_text() for d in lv.domains}
                if lv
                else {}
            )
            from cli import bench_cli_startup  # bench/cli.py, imports this module's helpers
            from cli import plot as plot_startup

            startup = bench_cli_startup(
                1 if args.quick else max(args.runs, 10), args.quick, work, built, host_file(work)
            )
        counts = DENSITY_COUNTS[:1] if args.quick else DENSITY_COUNTS
        if args.quick:
            skipped["density beyond 1 VM"] = "quick mode"
        density = bench_density(counts, dense, work)
        cli = bench_cli(args.runs, CLI_VMS_QUICK if args.quick else CLI_VMS, work)
        debian_results = None
        if args.quick or args.debian_runs < 1:
            skipped["Debian guest"] = "quick mode" if args.quick else "--debian-runs 0"
        else:
            from debian import bench_debian  # bench/debian.py, which imports this module's helpers

            debian_results = bench_debian(args.debian_runs, work)
        mach["Load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        results = Results(
            argv, args.runs, mach, sources[0] if sources else None, builds, built, store.root,
            boot_methods, boots, density, cli, skipped, domain_xml, debian_results, suspend_results, startup,
        )  # fmt: skip
        args.output.parent.mkdir(parents=True, exist_ok=True)
        results.pictures = plots(args.output, boot_methods, boots, density)
        results.startup_picture = plot_startup(args.output, startup)
        if not results.pictures:
            skipped["plots"] = "matplotlib is not installed (`make bench` installs it)"
        text = report(results)
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
