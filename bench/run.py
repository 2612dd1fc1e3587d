#!/usr/bin/env python3
"""Benchmark microvm: build times, boot times against plain qemu, image sizes.

    .venv/bin/python bench/run.py [--quick] [--runs N] [--output docs/benchmarks.md]

Everything runs under qemu's TCG (MICROVM_ACCEL=tcg). Measurements of different
methods are interleaved, with the same gap before each one, and reported as
medians. The Debian kernel is not downloaded per "cold" build: its store entry
is hard-linked in from an existing store, so a cold build measures our own work.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "hello" / "vm.toml"
MARKER = "hello: booted in"
CONSOLE_LOG = "hello-console.log"
BOOT_TIMEOUT = 180.0
GAP = 1.0  # seconds of idle before every measurement, the same for every method
PLAIN_APPEND = "console=ttyS0 tsc_early_khz=2600000 panic=-1"

os.environ["MICROVM_ACCEL"] = "tcg"  # before microvm is imported: force TCG everywhere

from microvm.build.store import Store  # noqa: E402
from microvm.build.vm import BuiltVM, build_vm  # noqa: E402
from microvm.config import load_vm  # noqa: E402


# --- helpers -------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]  # drop NaNs
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f} s"


def fmt_ms(x: float) -> str:
    return "n/a" if x != x else f"{x * 1000:.0f} ms"


def fmt_size(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / (1 << 20):.2f} MiB ({n:,} B)"


def spread(xs: list[float], fmt=fmt_s) -> str:
    return f"{fmt(min(xs))} – {fmt(max(xs))}" if len(xs) > 1 else "–"


def source_stores() -> list[Path]:
    """Existing stores that may hold the kernel entry, most specific first."""
    cands = []
    if os.environ.get("MICROVM_TEST_CACHE"):
        cands.append(Path(os.environ["MICROVM_TEST_CACHE"]) / "store")
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cands += [home_cache / "microvm" / "store", Path("/var/lib/microvm/store"), home_cache / "microvm-test" / "store"]
    if os.environ.get("MICROVM_STORE"):
        cands.insert(0, Path(os.environ["MICROVM_STORE"]))
    seen, out = set(), []
    for c in cands:
        if c not in seen and c.is_dir() and any(c.glob("*-kernel-*")):
            seen.add(c)
            out.append(c)
    return out


def _link_tree(src: Path, dst: Path) -> None:
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=link)


def fresh_store(parent: Path, source: Path | None) -> Store:
    """A new empty store, seeded with the kernel entries and .cache/ of ``source``."""
    root = Path(tempfile.mkdtemp(prefix="store-", dir=parent))
    if source is not None:
        for entry in source.glob("*-kernel-*"):
            if entry.is_dir():
                _link_tree(entry, root / entry.name)
        if (source / ".cache").is_dir():
            _link_tree(source / ".cache", root / ".cache")
    return Store(root)


def timed(fn) -> tuple[float, object]:
    time.sleep(GAP)
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def microvm_cmd() -> list[str]:
    exe = REPO / ".venv" / "bin" / "microvm"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "microvm"]


# --- machine -------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[
            0
        ]
    except (OSError, IndexError):
        qemu = "unknown"
    try:
        mem = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        mem_gib = f"{int(mem.split()[1]) / (1 << 20):.1f} GiB"
    except (OSError, StopIteration):
        mem_gib = "unknown"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "CPUs (nproc)": str(os.cpu_count()),
        "CPU model": cpu,
        "Memory": mem_gib,
        "Host kernel": platform.release(),
        "qemu": qemu,
        "Accelerator": "TCG (MICROVM_ACCEL=tcg; KVM is not usable on this host)",
        "Python": platform.python_version(),
        "Load average at start": load,
    }


# --- builds --------------------------------------------------------------------------


@dataclass
class BuildResults:
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    cli_warm: list[float] = field(default_factory=list)
    cli_help: list[float] = field(default_factory=list)
    squashfs_cold: list[float] = field(default_factory=list)


def bench_builds(
    runs: int, work: Path, source: Path | None, squashfs_file: Path
) -> tuple[BuildResults, Store, BuiltVM, BuiltVM]:
    res = BuildResults()
    config = load_vm(EXAMPLE).config
    sq_config = load_vm(squashfs_file).config
    store = built = sq_built = None
    for i in range(runs):
        if store is not None:
            shutil.rmtree(store.root, ignore_errors=True)
        store = fresh_store(work, source)
        env = {**os.environ, "MICROVM_STORE": str(store.root), "MICROVM_ACCEL": "tcg"}
        print(f"[build {i + 1}/{runs}] store {store.root}", file=sys.stderr)

        t, built = timed(lambda: build_vm(store, config))
        res.cold.append(t)
        t, _ = timed(lambda: build_vm(store, config))
        res.warm.append(t)
        t, proc = timed(
            lambda: subprocess.run([*microvm_cmd(), "build", str(EXAMPLE)], env=env, capture_output=True, text=True)
        )
        if proc.returncode != 0:
            raise SystemExit(f"microvm build failed:\n{proc.stdout}\n{proc.stderr}")
        res.cli_warm.append(t)
        t, _ = timed(lambda: subprocess.run([*microvm_cmd(), "--help"], env=env, capture_output=True))
        res.cli_help.append(t)
        # the squashfs variant after the erofs one: kernel, system tree and the rest are cache hits
        t, sq_built = timed(lambda: build_vm(store, sq_config))
        res.squashfs_cold.append(t)
        print(
            f"  cold {res.cold[-1]:.2f}  warm {res.warm[-1]:.3f}  cli-warm {res.cli_warm[-1]:.3f}  "
            f"squashfs {res.squashfs_cold[-1]:.2f}",
            file=sys.stderr,
        )
    assert store is not None and built is not None and sq_built is not None
    return res, store, built, sq_built


# --- boots ---------------------------------------------------------------------------


@dataclass
class Boot:
    marker: float  # seconds from spawn to the marker line
    exit: float  # seconds from spawn to process exit
    guest_uptime: float  # what the guest printed (its /proc/uptime at the marker)
    returncode: int


def _uptime(line: str) -> float:
    m = re.search(re.escape(MARKER) + r"\s+([0-9.]+)", line)
    return float(m.group(1)) if m else float("nan")


def boot_ours(built: BuiltVM, work: Path) -> Boot:
    wd = Path(tempfile.mkdtemp(prefix="ours-", dir=work))
    log = wd / CONSOLE_LOG
    with (wd / "stderr.txt").open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(built.run)], cwd=wd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
        marker = float("nan")
        line = ""
        deadline = t0 + BOOT_TIMEOUT
        while time.perf_counter() < deadline:
            try:
                text = log.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            # the whole line, not just the marker: a read can land mid-line
            if m := re.search(re.escape(MARKER) + r"[^\n]*\n", text):
                marker = time.perf_counter() - t0
                line = m.group(0)
                break
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        end = time.perf_counter() - t0
    if marker != marker and MARKER in log.read_text(errors="replace"):
        marker = end  # the line was only completed as the guest powered off
    if marker != marker:
        raise SystemExit(f"our runner never printed the marker (rc {rc}); see {wd}")
    # the marker may have been written only just before exit: re-read for the uptime
    if not line:
        line = next((l for l in log.read_text(errors="replace").splitlines() if MARKER in l), "")
    shutil.rmtree(wd, ignore_errors=True)
    return Boot(marker, end, _uptime(line), rc)


def plain_command(built: BuiltVM, cpu_max: bool = False) -> list[str]:
    """The command line a user would write by hand; ``cpu_max`` adds ``-cpu max``."""
    assert built.initrd is not None and built.root_image is not None
    return [
        "qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", *(["-cpu", "max"] if cpu_max else []), "-m", "256M",
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
        "-kernel", str(built.kernel.image), "-initrd", str(built.initrd),
        "-append", PLAIN_APPEND,
        "-drive", f"id=root,format=raw,file={built.root_image},if=none,read-only=on",
        "-device", "virtio-blk-device,drive=root,serial=microvm-root",
        "-no-reboot",
    ]  # fmt: skip


class PlainFailed(Exception):
    def __init__(self, rc: int, tail: list[str]) -> None:
        super().__init__(f"plain qemu never printed the marker (rc {rc}):\n{''.join(tail)}")
        self.tail = tail


def boot_plain(built: BuiltVM, work: Path, cpu_max: bool = False) -> Boot:
    wd = Path(tempfile.mkdtemp(prefix="plain-", dir=work))
    found: dict[str, object] = {}
    out: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        plain_command(built, cpu_max),
        cwd=wd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if "marker" not in found and MARKER in line:
                found["marker"] = time.perf_counter() - t0
                found["line"] = line
            out.append(line)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    end = time.perf_counter() - t0
    th.join(timeout=5)
    shutil.rmtree(wd, ignore_errors=True)
    if "marker" not in found:
        raise PlainFailed(rc, out[-30:])
    return Boot(found["marker"], end, _uptime(found["line"]), rc)  # type: ignore[arg-type]


def probe_plain(built: BuiltVM, work: Path) -> tuple[bool, list[str]]:
    """Boot the exact hand-written line once (untimed). If it cannot reach the marker,
    fall back to adding ``-cpu max``; return (cpu_max, the failing run's telling lines)."""
    try:
        boot_plain(built, work)
        return False, []
    except PlainFailed as e:
        tail = [l.rstrip() for l in e.tail if not l.startswith("[") and l.strip()]
        print(f"[boot] the plain line as written fails; retrying with -cpu max:\n" + "\n".join(tail), file=sys.stderr)
        boot_plain(built, work, cpu_max=True)  # raises if this fails too
        return True, tail


def bench_boots(runs: int, built: BuiltVM, work: Path, cpu_max: bool) -> tuple[list[Boot], list[Boot]]:
    ours: list[Boot] = []
    plain: list[Boot] = []

    def plain_fn(b: BuiltVM, w: Path) -> Boot:
        return boot_plain(b, w, cpu_max)

    for i in range(runs):
        # alternate which goes first so that drift in the machine's load hits both alike
        order = [("ours", boot_ours, ours), ("plain", plain_fn, plain)]
        if i % 2:
            order.reverse()
        for name, fn, acc in order:
            time.sleep(GAP)
            b = fn(built, work)
            acc.append(b)
            print(
                f"[boot {i + 1}/{runs}] {name:5} marker {b.marker:.2f} s  exit {b.exit:.2f} s  "
                f"guest uptime {b.guest_uptime:.2f} s  rc {b.returncode}",
                file=sys.stderr,
            )
    return ours, plain


# --- report --------------------------------------------------------------------------


def size(p: Path | None) -> int | None:
    return p.stat().st_size if p is not None and p.exists() else None


def report(
    args,
    argv,
    mach,
    source,
    builds: BuildResults,
    ours,
    plain,
    built: BuiltVM,
    sq_built: BuiltVM,
    store_root: Path,
    cpu_max: bool,
    failure: list[str],
) -> str:
    n = args.runs
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/run.py", *argv])
    L: list[str] = []
    w = L.append
    w("# microvm benchmarks\n")
    w(
        f"Produced by `{cmd}` on {now}. Medians over {n} run{'s' if n != 1 else ''} per method; "
        f"methods interleaved with a {GAP:.0f} s idle gap before every measurement.\n"
    )
    w("## Machine\n")
    w("| | |\n|---|---|")
    for k, v in mach.items():
        w(f"| {k} | {v} |")
    w("")
    w(
        "Every guest here runs under qemu's TCG (software emulation): the host's KVM is a nested PVM "
        "that cannot boot stock Debian kernels. On a host with working KVM, boots are much faster "
        "(well under a second of guest time) and the ratios below will differ. The machine is shared; "
        "expect about ±0.3 s of noise on boot times.\n"
    )

    w("## Build\n")
    if source is not None:
        w(
            f"Each cold build goes into a fresh, empty temporary store (`MICROVM_STORE`), except that the "
            f"Debian kernel entry (`*-kernel-*`) and the store's `.cache/` are hard-linked in from `{source}`: "
            '"cold" measures microvm\'s own work (system tree, root image, initrd, runner), not the apt '
            "download and unpacking of the kernel package.\n"
        )
    else:
        w(
            "No existing store with a kernel was found, so the cold builds **include downloading and "
            "unpacking the Debian kernel package**.\n"
        )
    w(f"| Step (examples/hello/vm.toml) | Median | Range |\n|---|---|---|")
    w(f"| Cold build, library API (`build_vm`) | {fmt_s(median(builds.cold))} | {spread(builds.cold)} |")
    w(f"| Warm build (no change), library API | {fmt_ms(median(builds.warm))} | {spread(builds.warm, fmt_ms)} |")
    w(
        f"| Warm build, `microvm build FILE` command | {fmt_ms(median(builds.cli_warm))} | {spread(builds.cli_warm, fmt_ms)} |"
    )
    w(
        f"| `microvm --help` (command start-up alone) | {fmt_ms(median(builds.cli_help))} | {spread(builds.cli_help, fmt_ms)} |"
    )
    w(
        f"| squashfs variant, built after the erofs one in the same store | {fmt_s(median(builds.squashfs_cold))} | {spread(builds.squashfs_cold)} |"
    )
    w("")
    w(
        "The command's warm time minus the library's warm time is the cost of starting Python, "
        "importing microvm and parsing the command line.\n"
    )

    w("## Boot\n")
    w(
        "Launch of the built runner (`bin/microvm-run`, run in an empty working directory with stdin "
        f"from /dev/null) until the guest's line `{MARKER} …` appears in `{CONSOLE_LOG}` (polled "
        'every 10 ms), and until the process exits after the guest\'s `poweroff` ("to power-off"). '
        "Compared with the qemu command line a user would write by hand for the same kernel (the "
        "bzImage), initrd and root image, reading the marker from its stdout:\n"
    )

    def shown(cmd: list[str]) -> str:
        return " ".join(shlex.quote(a) for a in cmd).replace(str(store_root), "$STORE")

    w("```\n" + shown(plain_command(built)) + "\n```\n")
    if cpu_max:
        w(
            "**That line, exactly as written, does not boot this guest**: with qemu's default `qemu64` CPU "
            "the initrd fails to load a module and powers off:\n"
        )
        w("```\n" + "\n".join(failure[-6:]) + "\n```\n")
        w(
            "(`crc32c-intel` needs SSE4.2, which `qemu64` lacks; the runner passes `-cpu max`.) So the "
            "plain timings below are for the same line with `-cpu max` added:\n"
        )
        w("```\n" + shown(plain_command(built, cpu_max=True)) + "\n```\n")
    mo, mp = median([b.marker for b in ours]), median([b.marker for b in plain])
    eo, ep = median([b.exit for b in ours]), median([b.exit for b in plain])
    uo, up = median([b.guest_uptime for b in ours]), median([b.guest_uptime for b in plain])
    w("| | microvm runner | plain qemu | ratio ours/plain |\n|---|---|---|---|")
    w(f"| Launch to marker (median) | {fmt_s(mo)} | {fmt_s(mp)} | {mo / mp:.2f} |")
    w(f"| Launch to marker (range) | {spread([b.marker for b in ours])} | {spread([b.marker for b in plain])} | |")
    w(f"| Launch to power-off (median) | {fmt_s(eo)} | {fmt_s(ep)} | {eo / ep:.2f} |")
    w(f"| Launch to power-off (range) | {spread([b.exit for b in ours])} | {spread([b.exit for b in plain])} | |")
    w(f"| Guest's own uptime at the marker (median) | {fmt_s(uo)} | {fmt_s(up)} | {uo / up:.2f} |")
    w(f"| Exit codes | {sorted({b.returncode for b in ours})} | {sorted({b.returncode for b in plain})} | |")
    w("")
    w(
        "Differences between the two command lines: the runner boots the uncompressed `vmlinux` through "
        "its PVH entry (no emulated decompression), adds `quiet` to the kernel command line, "
        + ("" if cpu_max else "uses `-cpu max`, ")
        + "trims the microvm machine (`x-option-roms=off,pit=off,pic=off`), writes the console "
        "to a log file through a chardev socket, opens a QMP socket and enables `-sandbox on`; it is "
        "started through a bash script that `exec`s qemu. The plain line boots the LZ4 bzImage and prints "
        "every kernel message to the serial port.\n"
    )

    w("## Image sizes\n")
    k = built.kernel
    w("| Artifact (examples/hello) | Size |\n|---|---|")
    w(f"| Kernel bzImage (`{k.image.name}`) | {fmt_size(size(k.image))} |")
    w(f"| Kernel vmlinux, uncompressed (`{k.vmlinux.name if k.vmlinux else '-'}`) | {fmt_size(size(k.vmlinux))} |")
    w(f"| Initrd | {fmt_size(size(built.initrd))} |")
    w(
        f"| Root image, erofs (default, `{built.root_image.name if built.root_image else '-'}`) | {fmt_size(size(built.root_image))} |"
    )
    w(f'| Root image, squashfs (`microvm.storeDiskType = "squashfs"`) | {fmt_size(size(sq_built.root_image))} |')
    es, ss = size(built.root_image), size(sq_built.root_image)
    if es and ss:
        w(f"\nThe squashfs root image is {ss / es:.2f}× the size of the erofs one.")
    w("")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 run of each measurement, builds only once")
    ap.add_argument("--runs", type=int, default=5, help="runs per method (default 5)")
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs = 1
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    mach = machine()
    sources = source_stores()
    source = sources[0] if sources else None
    with tempfile.TemporaryDirectory(prefix="microvm-bench-") as tmp:
        work = Path(tmp)
        squashfs_file = work / "squashfs.toml"
        squashfs_file.write_text(f'imports = ["{EXAMPLE}"]\n[microvm]\nstoreDiskType = "squashfs"\n')
        builds, store, built, sq_built = bench_builds(args.runs, work, source, squashfs_file)
        cpu_max, failure = probe_plain(built, work)
        ours, plain = bench_boots(args.runs, built, work, cpu_max)
        mach["Load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        text = report(args, argv, mach, source, builds, ours, plain, built, sq_built, store.root, cpu_max, failure)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
