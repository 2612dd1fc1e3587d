#!/usr/bin/env python3
"""Benchmark a Debian guest: cold and warm build, a one-file rebuild, and the boot to a login prompt.

    .venv/bin/python bench/debian.py [--runs N] [--output FILE]

"Cold" starts from an empty store (the kernel entry is hard-linked in, as in
run.py, so only our own work and mmdebstrap's downloads are measured). The
guest has no network interface, so nothing leaves the machine's namespace.
Everything runs under TCG.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BOOT_TIMEOUT, fmt_s, fmt_size, fresh_store, machine, median, source_stores, spread, timed

from microvm.config import load_vm
from microvm.runner.build import BuiltVM, build_vm
from microvm.store import Store

VM = """
[guest]
hostName = "bench-debian"
base = "debian"
packages = ["openssh-server"]
[guest.files."/etc/motd"]
text = "{motd}"
[microvm]
mem = 512
"""


def build(store: Store, directory: Path, motd: str, extra: str = "") -> BuiltVM:
    (directory / "vm.toml").write_text(VM.format(motd=motd) + extra + "\n")
    return build_vm(store, load_vm(directory / "vm.toml").config)


def boot_to_login(built: BuiltVM, work: Path) -> float:
    """Seconds from launching the runner to the serial console's login prompt."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench-debian-console.log"
    log.unlink(missing_ok=True)
    start = time.perf_counter()
    child = subprocess.Popen([built.run], cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        while "login:" not in (log.read_text(errors="replace") if log.exists() else ""):
            if child.poll() is not None or time.perf_counter() - start > BOOT_TIMEOUT:
                raise RuntimeError(f"no login prompt (exit {child.poll()})")
            time.sleep(0.05)
        return time.perf_counter() - start
    finally:
        child.kill()
        child.wait()


@dataclass
class DebianResults:
    times: dict[str, list[float]]  # seconds per step, one entry per run
    built: BuiltVM  # the erofs build
    squashfs_image: Path | None  # the same guest's root image as squashfs


def bench_debian(runs: int, parent: Path) -> DebianResults:
    """Cold, warm (unchanged) and one-file builds, boots to login; then the squashfs variant's image."""
    sources = source_stores()
    times: dict[str, list[float]] = {"cold build": [], "warm build": [], "one-file rebuild": [], "boot to login": []}
    directory = Path(tempfile.mkdtemp(dir=parent))
    built = store = None
    for run in range(runs):
        store = fresh_store(parent, sources[0] if sources else None)
        print(f"[debian {run + 1}/{runs}] store {store.root}", file=sys.stderr)
        seconds, built = timed(build, store, directory, "cold")
        times["cold build"].append(seconds)
        times["warm build"].append(timed(build, store, directory, "cold")[0])
        seconds, built = timed(build, store, directory, f"changed {run}")
        times["one-file rebuild"].append(seconds)
    assert built is not None and store is not None
    for _ in range(runs):
        time.sleep(1.0)
        times["boot to login"].append(boot_to_login(built, directory / "state"))
    squashfs = build(store, directory, f"changed {runs - 1}", 'storeDiskType = "squashfs"').root_image
    return DebianResults(times, built, squashfs)


def report_section(res: DebianResults) -> list[str]:
    """The Debian part of docs/benchmarks.md (also printed by this script alone)."""

    def size(path: Path | None) -> str:
        return fmt_size(path.stat().st_size if path is not None and path.exists() else None)

    lines = [
        "## Debian guest\n",
        (
            'A Debian bookworm guest with `openssh-server` (mmdebstrap, `guest.base = "debian"`, 512 MB, no network '
            "interface). Cold: an empty store (the kernel entry hard-linked in, as above); warm: the same build "
            "again; one-file: `/etc/motd` changed. Boot: launch to the serial console's `login:` prompt.\n"
        ),
        "| Step | Median | Range |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {fmt_s(median(xs))} | {spread(xs)} |" for name, xs in res.times.items()]
    built = res.built
    lines += [
        "",
        "| Artifact (Debian guest) | Size |",
        "|---|---|",
        f"| Kernel vmlinux, what the runner boots | {size(built.kernel.vmlinux)} |",
        f"| Initrd | {size(built.initrd)} |",
        f"| Root image, erofs (default, lz4hc) | {size(built.root_image)} |",
        f'| Root image, squashfs (`storeDiskType = "squashfs"`) | {size(res.squashfs_image)} |',
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="cold builds and boots to measure")
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="microvm-bench-debian-") as parent:
        text = "\n".join(report_section(bench_debian(args.runs, Path(parent))))
        text += "\nMachine: " + ", ".join(f"{k} {v}" for k, v in machine().items()) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
