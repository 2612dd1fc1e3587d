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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BOOT_TIMEOUT, fresh_store, machine, median, source_stores, spread, timed

from microvm.build.store import Store
from microvm.build.vm import BuiltVM, build_vm
from microvm.config import load_vm

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


def build(store: Store, directory: Path, motd: str) -> BuiltVM:
    (directory / "vm.toml").write_text(VM.format(motd=motd))
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


def bench_debian(runs: int, parent: Path) -> dict[str, list[float]]:
    """Times in seconds: cold build, warm (unchanged) build, rebuild after one file changed, boot to login."""
    sources = source_stores()
    times: dict[str, list[float]] = {"cold build": [], "warm build": [], "one-file rebuild": [], "boot to login": []}
    directory = Path(tempfile.mkdtemp(dir=parent))
    built = None
    for run in range(runs):
        store = fresh_store(parent, sources[0] if sources else None)
        seconds, built = timed(lambda s=store: build(s, directory, "cold"))
        times["cold build"].append(seconds)
        times["warm build"].append(timed(lambda s=store: build(s, directory, "cold"))[0])
        seconds, built = timed(lambda s=store, motd=f"changed {run}": build(s, directory, motd))
        times["one-file rebuild"].append(seconds)
    for _ in range(runs):
        time.sleep(1.0)
        times["boot to login"].append(boot_to_login(built, directory / "state"))
    return times


def report(times: dict[str, list[float]]) -> str:
    lines = ["## Debian guest (TCG)", "", "| step | median | runs |", "|---|---|---|"]
    lines += [f"| {name} | {median(xs):.1f} s | {spread(xs)} |" for name, xs in times.items()]
    info = machine()
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="cold builds and boots to measure")
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="microvm-bench-debian-") as parent:
        text = report(bench_debian(args.runs, Path(parent)))
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
