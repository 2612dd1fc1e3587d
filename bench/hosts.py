"""Several hosts: `microvm copy` of the example's closure, and `microvm migrate` of a 256 MB guest
against plain qemu's own live migration over a raw TCP socket between the same two hosts (the floor).

The hosts are the tests' two systemd-nspawn containers with sshd (tests/sshhosts.py), each in
its own network namespace on a bridge; nothing leaves those namespaces. Copy: the closure of
examples/hello's build, from h1 to h2's empty store, then again (nothing to send). Migrate: a
busybox guest (256 MB, ticking every 100 ms, its volume on the shared directory) moves h1 -> h2
with `microvm migrate`, then the same build's qemu command line (bin/microvm-run's) runs by hand
on both hosts and qemu migrates over `tcp:` (same bandwidth and downtime limits). Total time and
downtime are qemu's own figures (query-migrate); ours also has the command's wall time (ssh,
the build check, the shared-storage check, starting the target's unit). Methods alternate.

    .venv/bin/python bench/hosts.py [--rounds N] [--output docs/benchmarks.md]

The report replaces (or appends) the section "## Several hosts" of the output file.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import CACHE  # the tests' helpers (tests/ is on the path only from here)
from helpers import Host, kernel_settings, wait_until
from sshhosts import MIGRATING, SHARED, console, ticks, two_hosts

from microvm.config import load_vm
from microvm.control.process import peer_pid
from microvm.hypervisors import qmp
from microvm.runner.build import build_vm
from microvm.store import Store

HEADING = "## Several hosts (copy, migrate)"
PORT = 4444
MIGRATED = re.compile(r"migrated to \S+ in (\d+) ms \(downtime (\d+) ms, ([\d.]+) MB")
COPIED = re.compile(r"copied (\d+) of (\d+) entries \(([\d.]+) MB\)")


def bench_copy(h1: Host, store: Store) -> list[str]:
    runner = build_vm(store, load_vm(REPO / "examples/hello/vm.toml").config).runner
    rows = []
    for label in ("first", "second"):
        t0 = time.perf_counter()
        out = h1.microvm("copy", "--to", "h2", str(runner)).stdout
        elapsed = time.perf_counter() - t0
        sent, total, mb = COPIED.search(out).groups()
        rows.append(f"| {label} | {elapsed:.2f} s | {sent} of {total} | {mb} MB |")
    return ["| copy | time | entries sent | bytes sent |", "|---|---|---|---|", *rows]


def _qemu_argv(runner: Path) -> list[str]:
    """bin/microvm-run's qemu command line (after `exec -a NAME`)."""
    script = (runner / "bin/microvm-run").read_text()
    line = script[script.index("\nexec -a ") + 1 :].replace("\\\n", " ")
    return [arg for arg in shlex.split(line.splitlines()[0])[3:] if arg != "${resume[@]}"]


def _sock(host: Host) -> Path:
    return host.rootfs / "var/lib/microvms/mig/mig.sock"


def floor_round(h1: Host, h2: Host, runner: Path) -> tuple[int, int, int]:
    """Plain qemu on both hosts, migrating over tcp; (total ms, downtime ms, bytes)."""
    argv = _qemu_argv(runner)
    cwd = "/var/lib/microvms/mig"
    _clean(h1, h2)  # what the units left: a new log, no stale sockets to mistake for live ones
    source = h1.box.popen("sh", "-c", f"cd {cwd} && exec {shlex.join(argv)}")
    target = h2.box.popen("sh", "-c", f"cd {cwd} && exec {shlex.join([*argv, '-incoming', f'tcp:0.0.0.0:{PORT}'])}")
    try:
        wait_until("the plain source ticking", lambda: len(ticks(h1, "mig")) > 5)
        wait_until("the plain target listening", lambda: _sock(h2).exists())
        qmp.execute(_sock(h1), "migrate-set-parameters", {"max-bandwidth": 1 << 40, "downtime-limit": 300})
        qmp.execute(_sock(h1), "migrate", {"uri": f"tcp:10.77.0.2:{PORT}"})
        while (info := qmp.execute(_sock(h1), "query-migrate")).get("status") not in ("completed", "failed"):
            time.sleep(0.02)
        assert info["status"] == "completed", info
        return info["total-time"], info["downtime"], info["ram"]["transferred"]
    finally:
        for host, process in ((h1, source), (h2, target)):  # nsenter forks: end qemu itself (its socket's peer)
            if process.poll() is None and (pid := peer_pid(_sock(host))):
                os.kill(pid, signal.SIGTERM)
            _, errors = process.communicate(timeout=30)
            if process.returncode:
                print(f"plain qemu on {host.box.run('hostname').stdout.strip()}: {errors}", file=sys.stderr)
        _clean(h1, h2)  # root's files, which the units (as user microvm) could not write


def _clean(*hosts: Host) -> None:
    for host in hosts:
        for left in ("mig-console.log", "mig.sock", "mig-console.sock"):
            (host.rootfs / "var/lib/microvms/mig" / left).unlink(missing_ok=True)


def bench_migrate(h1: Host, h2: Host, tmp: Path, store: Store, rounds: int) -> list[str]:
    src = tmp / "work" / "src"
    mig = MIGRATING.format(name="mig", image=f"{SHARED.name}/mig.img") + kernel_settings(store, tmp / "work")
    (src).mkdir(parents=True)
    (src / "mig.toml").write_text(mig)
    h1.microvm("create", "mig", "-f", str(src))
    runner = Path(h1.box.run("readlink", "-f", "/var/lib/microvms/mig/current").stdout.strip())
    ours: list[tuple[float, int, int, float]] = []
    floor: list[tuple[int, int, int]] = []
    for _ in range(rounds):
        h1.microvm("start", "mig")
        wait_until("mig ticking on h1", lambda: len(ticks(h1, "mig")) > 5)
        t0 = time.perf_counter()
        out = h1.microvm("migrate", "mig", "h2").stdout
        wall = time.perf_counter() - t0
        total, down, mb = MIGRATED.search(out).groups()
        ours.append((wall, int(total), int(down), float(mb)))
        wait_until("mig ticking on h2", lambda: "tick" in console(h2, "mig"))
        h2.microvm("stop", "mig")
        floor.append(floor_round(h1, h2, runner))
    med = statistics.median
    o_total, f_total = med(r[1] for r in ours), med(r[0] for r in floor)
    return [
        f"| method ({rounds} rounds, medians) | total (qemu) | downtime (qemu) | RAM sent | wall time |",
        "|---|---|---|---|---|",
        (
            f"| `microvm migrate` (through ssh, into the target's unit) | {o_total:.0f} ms | "
            f"{med(r[2] for r in ours):.0f} ms | {med(r[3] for r in ours):.1f} MB | {med(r[0] for r in ours):.2f} s |"
        ),
        (
            f"| plain qemu, `migrate tcp:` (the floor) | {f_total:.0f} ms | {med(r[1] for r in floor):.0f} ms | "
            f"{med(r[2] for r in floor) / 1e6:.1f} MB | - |"
        ),
        "",
        f"Total time, ours / floor: {o_total / f_total:.2f}x (aim: 1.3x or less; downtime under 300 ms).",
    ]


def report(copy_rows: list[str], migrate_rows: list[str]) -> str:
    return "\n".join(
        [
            HEADING,
            "",
            "Measured by `bench/hosts.py` between two systemd-nspawn hosts on this machine (TCG guests,",
            "ssh over a veth bridge). Copy: the closure of examples/hello's build to an empty store.",
            "",
            *copy_rows,
            "",
            "Migrate: a 256 MB busybox guest ticking every 100 ms, its volume on the shared directory.",
            "",
            *migrate_rows,
            "",
        ]
    )


def write_section(output: Path, section: str) -> None:
    """Replace the section with ``section``'s heading (its first line) in ``output``, or append it."""
    heading = section.split("\n", 1)[0]
    text = output.read_text() if output.exists() else ""
    if heading in text:
        before, rest = text.split(heading, 1)
        after = rest.split("\n## ", 1)
        text = before + section + ("\n## " + after[1] if len(after) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    output.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "docs/benchmarks.md")
    args = parser.parse_args()
    store = Store(CACHE / "store")
    with tempfile.TemporaryDirectory(prefix="microvm-bench-hosts-") as tmp, two_hosts(Path(tmp)) as (h1, h2):
        copy_rows = bench_copy(h1, store)
        migrate_rows = bench_migrate(h1, h2, Path(tmp), store, args.rounds)
    section = report(copy_rows, migrate_rows)
    print(section)
    write_section(args.output, section)


if __name__ == "__main__":
    main()
