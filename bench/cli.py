"""Start-up of the commands people and scripts type most, as ratios to Python's own start-up.

Every figure is a whole process, launched from this script and waited for, several rounds
after an untimed warm-up round, the commands interleaved (their order rotates each round);
the floor is ``python -c pass`` of the same venv, measured in the same rounds: a Python
program cannot start faster. `microvm list` runs over 10, 100 and 1000 installed VMs (state
directories whose ``current`` links point at the benchmark's real runners, with a build
record and a source as `microvm create` leaves them); its cost per extra VM is the slope of
a least-squares line through those points. ``virsh list --all`` over as many defined libvirt
domains is measured in the same run when libvirt is there: the per-user daemon (``qemu:///session``)
of an unprivileged user, in a directory of its own, so that nothing system-wide starts (see
:class:`SessionLibvirt`). Our own modules are compiled to byte code first, as an installed package's
are (a development shell's ``PYTHONDONTWRITEBYTECODE`` would otherwise make every run compile them).
Run by bench/run.py, or alone (``make bench-cli``).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import json
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import libvirt
from run import EXAMPLE, HOST_VMS, fmt_ms, fresh_store, host_file, median, microvm_cmd, source_stores, spread

from microvm.config import load_vm
from microvm.control.process import stop_hard
from microvm.host.sources import files_fingerprint
from microvm.host.statedir import VMState
from microvm.runner import fastpath
from microvm.runner.build import build_vm

COUNTS, QUICK_COUNTS = (10, 100, 1000), (3, 10)
CROWDED = 100  # installed VMs for the warm build and run timed also with them (their fast path reads each)
FLOOR = "`python -c pass` (the floor)"


def listing(count: int) -> str:
    return f"`microvm list` ({count} VMs)"


def virsh_listing(count: int) -> str:
    return f"`virsh list --all` ({count} domains)"


# label -> (its target as a multiple of the floor, or None: no target; seconds otherwise)
TARGETS: dict[str, tuple[float | None, float | None]] = {
    FLOOR: (None, None),
    "`microvm --help`": (5, None),
    listing(100): (5, None),
    "`microvm status NAME`": (5, None),
    "`microvm start NAME` (up to the systemd call)": (5, None),
    "`microvm stop NAME` (up to the systemd call)": (5, None),
    "`microvm build FILE` (warm: nothing changed)": (5, None),
    f"`microvm build FILE` (warm, {CROWDED} VMs installed)": (5, None),
    "`microvm run FILE` (up to the runner: a stub runner)": (5, None),
    f"`microvm run FILE` (up to the runner, {CROWDED} VMs installed)": (5, None),
    "`microvm check FILE` (one VM)": (10, None),
    f"`microvm eval --host` ({HOST_VMS} VMs)": (None, 0.4),
    f"`microvm check --host` ({HOST_VMS} VMs)": (None, 0.4),
}
PER_VM_TARGET_MS = 0.5
LISTED = "microvm-bench-list-"  # the domains `virsh list` goes through


@dataclass
class CliResults:
    rounds: int
    times: dict[str, list[float]] = field(default_factory=dict)  # label -> seconds, one per round
    cpu: dict[str, list[float]] = field(default_factory=dict)  # label -> CPU seconds (user + system), one per round
    listing: dict[int, list[float]] = field(default_factory=dict)  # installed VMs -> `microvm list` seconds
    virsh: dict[int, list[float]] = field(default_factory=dict)  # defined domains -> `virsh list --all` seconds
    notes: list[str] = field(default_factory=list)

    def slope_ms(self, series: dict[int, list[float]]) -> float:
        """Milliseconds per extra VM: the least-squares slope through the medians."""
        xs = list(series)
        if len(xs) < 2:
            return float("nan")
        return statistics.linear_regression(xs, [median(series[x]) for x in xs]).slope * 1000


def install_fakes(state: Path, count: int, runners: list[Path], source: Path) -> None:
    """``count`` installed VMs as `microvm create` leaves them, sharing the given real runners.

    Every third one is booted (its ``booted`` link is the current runner), so `list` goes
    through each of its states' reads.
    """
    fingerprint = files_fingerprint([source / "vm.toml"])
    for i in range(count):
        vm = VMState(f"vm{i:04d}", state / f"vm{i:04d}")
        vm.path.mkdir(parents=True)
        runner = runners[i % len(runners)]
        vm.record(
            runner, source=str(source), declared_by=None, build={"runner": str(runner), "fingerprint": fingerprint}
        )
        (vm.path / "current").symlink_to(runner)
        if i % 3 == 0:
            (vm.path / "booted").symlink_to(runner)


def example_copy(work: Path, name: str) -> Path:
    """A copy of the example: a build record of its own (a record is per file; each is built for one state
    directory)."""
    file = work / name / "vm.toml"
    file.parent.mkdir()
    file.write_text(EXAMPLE.read_text())
    return file


def stub_run(work: Path, mv: list[str], env: dict[str, str], state: Path) -> tuple[Path, dict[str, str]]:
    """A VM file whose `microvm run` takes the fast path to a runner that exits at once, and the environment
    to run it in (state directory ``state``): the command's own work up to starting the runner, without the boot.

    The file is a copy of the example, built once; the record then names a copy of the runner whose
    ``microvm-run`` is ``/bin/true``.
    """
    file = example_copy(work, f"cli-run-{state.name}")
    run_env = {**env, "MICROVM_STATE_DIR": str(state)}
    built = Path(subprocess.run([*mv, "build", str(file)], env=run_env, capture_output=True, text=True,
                                check=True).stdout.strip())  # fmt: skip
    stub = work / f"cli-stub-{state.name}" / built.name
    shutil.copytree(built / "share", stub / "share")
    (stub / "bin").mkdir()
    (stub / "bin" / "microvm-run").write_text("#!/bin/true\n")
    (stub / "bin" / "microvm-run").chmod(0o755)
    record = fastpath.stamp_file(file, None)
    stamp = json.loads(record.read_text())
    stamp["runner"] = stamp["plan"]["runner"] = str(stub)
    record.write_text(json.dumps(stamp))
    return file, run_env


SESSION_USER = "nobody"  # unprivileged, on every Debian system
DEFINE_BATCH = 100  # `virsh "define a; define b; ..."`: one client process per batch


class SessionLibvirt:
    """``qemu:///session`` of :data:`SESSION_USER`, with its home, configuration and runtime directory in a
    temporary directory: virsh starts that user's libvirtd on first use, which can start no network and add
    no bridge (unprivileged), and the ``with`` block's end stops it and removes everything it wrote.

    Needs libvirt's client, daemon and qemu driver without libvirt-daemon-system (whose scripts set up a
    system daemon and its default network): ``make bench-cli`` installs them.
    """

    URI = "qemu:///session"

    def __init__(self, built) -> None:
        self.user = pwd.getpwnam(SESSION_USER)
        self.dir = Path(tempfile.mkdtemp(prefix="microvm-bench-virsh-"))
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.env = {"HOME": str(self.dir), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"}
        for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache"), ("XDG_RUNTIME_DIR", "run")):
            self.env[var] = str(self.dir / sub)
        self.as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": [], "cwd": self.dir}
        self.paths = [built.kernel.vmlinux or built.kernel.image, built.initrd, built.root_image]  # never booted
        self.defined = 0

    @staticmethod
    def unavailable() -> str | None:
        """Why it cannot be measured here, or None."""
        for tool in ("virsh", "libvirtd"):
            if shutil.which(tool, path="/usr/bin:/usr/sbin") is None:
                return f"`{tool}` is not installed (`make bench-cli` installs libvirt's client and daemon)"
        return None

    def virsh(self, *args: str) -> list[str]:
        return ["virsh", "-q", "-c", self.URI, *args]

    def run(self, *args: str) -> str:
        result = subprocess.run(self.virsh(*args), env=self.env, capture_output=True, text=True, check=False,
                                timeout=600, **self.as_user)  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"virsh {' '.join(args)[:200]} failed: {result.stderr}")
        return result.stdout

    def define(self, count: int) -> None:
        """Up to ``count`` domains (direct kernel boot of the example; never started)."""
        kernel, initrd, disk = self.paths
        names = [f"{LISTED}{i:04d}" for i in range(self.defined, count)]
        for start in range(0, len(names), DEFINE_BATCH):
            commands = []
            for name in names[start : start + DEFINE_BATCH]:
                xml = self.dir / f"{name}.xml"
                log = self.dir / f"{name}.log"
                xml.write_text(libvirt.domain_xml(name, "pc", kernel, initrd, disk, "console=ttyS0", 128, log))
                commands.append(f"define {xml}")
            self.run(" ; ".join(commands))
        self.defined = max(self.defined, count)
        assert len(self.run("list", "--all", "--name").split()) == self.defined

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pid_file = self.dir / "run" / "libvirt" / "libvirtd.pid"
        if pid_file.exists():  # the session daemon virsh started for us: ours to stop
            stop_hard(int(pid_file.read_text()))  # SIGKILL after 5 s: removing its directory under it is no stop
        shutil.rmtree(self.dir, ignore_errors=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,), **popen) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run: on a loaded machine the CPU time shows the work, the wall
    time also the wait for a core."""
    cpu, t0 = _cpu(), time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, **popen)
    elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu
    if result.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed, cpu


def bench_cli_startup(rounds: int, quick: bool, work: Path, built: dict, host: Path) -> CliResults:
    """Interleaved rounds of every command; the first round is a warm-up and is not kept."""
    res = CliResults(rounds)
    compileall.compile_dir(Path(sys.modules["microvm"].__file__).parent, quiet=1)  # as an installed package's
    counts = QUICK_COUNTS if quick else COUNTS
    runners = [b.runner for b in built.values()]
    source = work / "cli-fake-source"
    source.mkdir()
    (source / "vm.toml").write_text(EXAMPLE.read_text())
    env = dict(os.environ)  # the warm build takes its fast path after the (untimed) warm-up round's full build
    mv = microvm_cmd()
    states = {n: work / f"cli-fake-{n}" for n in counts}
    for n, state in states.items():
        install_fakes(state, n, runners, source)
    middle = work / f"cli-fake-{100 if 100 in states else counts[-1]}"
    listed = subprocess.run([*mv, "list", "--json"], env={**env, "MICROVM_STATE_DIR": str(middle)},
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert len(json.loads(listed)) == (100 if 100 in states else counts[-1]), listed[:500]
    on = {**env, "MICROVM_STATE_DIR": str(middle)}
    run_file, run_env = stub_run(work, mv, env, work / "cli-run-state")
    # the fast paths read every installed VM's current link: timed also with as many installed as `list (100)`
    crowded = work / "cli-fast-crowded"  # not `list`'s: `run` adds the VM's state directory
    install_fakes(crowded, CROWDED, runners, source)
    crowded_env = {**env, "MICROVM_STATE_DIR": str(crowded)}
    crowded_build = example_copy(work, "cli-build-crowded")
    crowded_run, crowded_run_env = stub_run(work, mv, env, crowded)
    # label -> (argv, environment, exit codes that are success, how to start it)
    commands: dict[str, tuple[list[str], dict[str, str], tuple[int, ...], dict]] = {
        FLOOR: ([sys.executable, "-c", "pass"], env, (0,), {}),
        "`microvm --help`": ([*mv, "--help"], env, (0,), {}),
        "`microvm status NAME`": ([*mv, "status", "vm0003"], on, (0,), {}),
        "`microvm build FILE` (warm: nothing changed)": ([*mv, "build", str(EXAMPLE)], env, (0,), {}),
        "`microvm run FILE` (up to the runner: a stub runner)": ([*mv, "run", str(run_file)], run_env, (0,), {}),
        f"`microvm build FILE` (warm, {CROWDED} VMs installed)": (
            [*mv, "build", str(crowded_build)],
            crowded_env,
            (0,),
            {},
        ),
        f"`microvm run FILE` (up to the runner, {CROWDED} VMs installed)": (
            [*mv, "run", str(crowded_run)],
            crowded_run_env,
            (0,),
            {},
        ),
        "`microvm check FILE` (one VM)": ([*mv, "check", str(EXAMPLE)], env, (0,), {}),
        f"`microvm eval --host` ({HOST_VMS} VMs)": ([*mv, "eval", "--host", str(host)], env, (0,), {}),
        f"`microvm check --host` ({HOST_VMS} VMs)": ([*mv, "check", "--host", str(host)], env, (0,), {}),
    }
    if Path("/run/systemd/system").is_dir():
        res.notes.append("`start`/`stop` not measured: systemd runs here and would really start the fake VMs")
    else:
        # without systemd the command stops, with its error, exactly where it would call systemctl
        for action in ("start", "stop"):
            commands[f"`microvm {action} NAME` (up to the systemd call)"] = ([*mv, action, "vm0001"], on, (1,), {})
    for n, state in states.items():
        commands[listing(n)] = ([*mv, "list"], {**env, "MICROVM_STATE_DIR": str(state)}, (0,), {})
    with contextlib.ExitStack() as sessions:
        if quick:
            res.notes.append("`virsh list` not measured: quick mode")
        elif (why := SessionLibvirt.unavailable()) is not None:
            res.notes.append(f"`virsh list` not measured: {why}")
        else:
            res.notes.append(
                f"`virsh list --all` goes to `{SessionLibvirt.URI}` of user `{SESSION_USER}`: one libvirtd per "
                "count of defined domains, each started by virsh before the rounds and left running through them."
            )
            for n in counts:
                lv = sessions.enter_context(SessionLibvirt(built["hello"]))
                lv.define(n)
                commands[virsh_listing(n)] = (lv.virsh("list", "--all", "--name"), lv.env, (0,), lv.as_user)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        labels = list(commands)
        for i in range(rounds + 1):
            order = labels[i % len(labels) :] + labels[: i % len(labels)]
            for label in order:
                argv, e, ok, popen = commands[label]
                t, cpu = _time(argv, e, ok, **popen)
                if i:
                    res.times.setdefault(label, []).append(t)
                    res.cpu.setdefault(label, []).append(cpu)
            print(f"[cli {i}/{rounds}]" + (" (warm-up)" if not i else ""), file=sys.stderr)
    res.listing = {n: res.times[listing(n)] for n in counts}
    res.virsh = {n: res.times.pop(virsh_listing(n)) for n in counts if virsh_listing(n) in res.times}
    res.notes.append(
        f"Load average (1, 5, 15 min) before these rounds: {load}; after: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + f" ({os.cpu_count()} CPUs)."
    )
    return res


def plot(output: Path, r: CliResults) -> str | None:
    """`list` time against installed VMs (and `virsh list` against defined domains); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for series, label, style in ((r.listing, "microvm list", "o-"), (r.virsh, "virsh list --all", "s--")):
        if series:
            xs = list(series)
            ax.plot(xs, [median(series[x]) * 1000 for x in xs], style, label=label)
    ax.axhline(median(r.times[FLOOR]) * 1000, color="grey", linestyle=":", label="python -c pass (floor)")
    ax.set_xscale("log")
    ax.set_xlabel("installed VMs (libvirt: defined domains)")
    ax.set_ylabel("ms (median)")
    ax.set_title("Listing VMs")
    ax.legend()
    name = f"{output.with_suffix('').name}-cli.png"
    fig.tight_layout()
    fig.savefig(output.parent / name, dpi=100)
    plt.close(fig)
    return name


def report_section(r: CliResults, picture: str | None) -> list[str]:
    floor = median(r.times[FLOOR])
    out = [
        "## Command start-up\n",
        (
            f"Whole processes, {r.rounds} interleaved rounds after a warm-up round, medians; the ratio is to "
            f"`python -c pass` of the same venv in the same rounds ({fmt_ms(floor)}). `list`, `status`, "
            "`start`/`stop` and `--help` take a dispatch that loads neither typer, rich nor the option model "
            "(src/microvm/cli/fast.py), `check FILE` one that loads no typer or rich; `list` reads each VM's recorded "
            "vm.json as plain JSON. `microvm run FILE` up to the runner: the fast path of a built VM to a runner "
            "that exits at once (`/bin/true` in a copy of the runner; the boot itself: see the Boot section).\n"
        ),
        "| Command | Median | Spread | Ratio to floor | Target | Met | CPU time (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    cpu_floor = median(r.cpu[FLOOR])
    for label, (times_floor, seconds) in TARGETS.items():
        if not (xs := r.times.get(label)):
            continue
        m = median(xs)
        target, met = "–", "–"
        if times_floor is not None:
            target, met = f"≤ {times_floor:g}×", "yes" if m <= times_floor * floor else "**no**"
        elif seconds is not None:
            target, met = f"≤ {seconds * 1000:.0f} ms", "yes" if m <= seconds else "**no**"
        cpu = median(r.cpu.get(label, []))
        out.append(
            f"| {label} | {fmt_ms(m)} | {spread(xs, fmt_ms)} | {m / floor:.1f}× | {target} | {met} "
            f"| {fmt_ms(cpu)} ({cpu / cpu_floor:.1f}×) |"
        )
    out.append("")
    if picture:
        out.append(f"![Listing VMs]({picture})\n")
    out += ["| Installed VMs | `microvm list` | Ratio to floor | `virsh list --all` (as many domains) |",
            "|---|---|---|---|"]  # fmt: skip
    for n, xs in r.listing.items():
        virsh = fmt_ms(median(r.virsh[n])) if n in r.virsh else "n/a"
        out.append(f"| {n} | {fmt_ms(median(xs))} | {median(xs) / floor:.1f}× | {virsh} |")
    slope = r.slope_ms(r.listing)
    met = "met" if slope <= PER_VM_TARGET_MS else "**missed**"
    out.append(
        f"\n`microvm list` costs **{slope:.2f} ms per extra installed VM** (target ≤ {PER_VM_TARGET_MS} ms: {met})"
    )
    if r.virsh:
        out[-1] += f"; `virsh list --all` {r.slope_ms(r.virsh):.2f} ms per extra defined domain."
    else:
        out[-1] += "; `virsh list` not measured (libvirt is not in this run)."
    out += [f"\n{note}" for note in r.notes]
    return [*out, ""]


def splice(text: str, section: str, before: str = "## Suspend to disk and resume") -> str:
    """``text`` with its start-up section replaced by ``section`` (inserted before ``before`` when absent)."""
    heading = section.split("\n", 1)[0]
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start + 1)
        return text[:start] + section + ("\n" + text[end + 1 :] if end != -1 else "")
    at = text.find(before)
    return text[:at] + section + "\n" + text[at:] if at != -1 else text + "\n" + section


def main(argv: list[str] | None = None) -> int:
    """This part alone: build the example (and its squashfs variant) into a fresh store, measure, and replace
    the section in the report (the rest of the report stays as the last full run wrote it)."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="10 installed VMs at most in `list`, no libvirt")
    ap.add_argument("--output", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="microvm-bench-cli-") as tmp:
        work = Path(tmp)
        sources = source_stores()
        store = fresh_store(work, sources[0] if sources else None)
        os.environ["MICROVM_STORE"] = str(store.root)
        squashfs = work / "squashfs.toml"
        squashfs.write_text(f'imports = ["{EXAMPLE}"]\n[microvm]\nstoreDiskType = "squashfs"\n')
        built = {name: build_vm(store, load_vm(file).config) for name, file in (("hello", EXAMPLE), ("sq", squashfs))}
        res = bench_cli_startup(args.runs, args.quick, work, built, host_file(work))
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    how = f"bench/cli.py --runs {args.runs}{' --quick' if args.quick else ''}"
    res.notes.append(f"Measured on {when} by `.venv/bin/python {how}` (this section alone).")
    section = "\n".join(report_section(res, plot(args.output, res)))
    args.output.write_text(splice(args.output.read_text(), section))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
