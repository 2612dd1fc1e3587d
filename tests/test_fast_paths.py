"""The fast paths: `microvm build` and `microvm run` of an unchanged built VM, the busybox guest's quick power-off, the TSC rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BOOT_TIMEOUT, microvm, write_vm

from microvm.cli import fast_build_or_run
from microvm.cli.fast import command
from microvm.config import load_vm
from microvm.host.statedir import installed_stamp
from microvm.hypervisors.qemu import host_tsc_khz
from microvm.runner import fastpath
from microvm.store import Store

VM = """
imports = ["base.toml"]
[guest]
hostName = "{name}"
shell = false
commands = ['echo "fast: up"', "{stop}"]
"""
BASE = """
[microvm]
mem = 128
"""


def _name(tmp_path: Path) -> str:
    """A VM name of this test's own (pytest's directory name, at most 30 characters), so that tests running in
    parallel do not build or root the same VM."""
    return tmp_path.name.replace("_", "-").strip("-")


def _vm(tmp_path: Path, stop: str = "poweroff", name: str | None = None) -> Path:
    """The VM file (default name: :func:`_name`)."""
    write_vm(tmp_path, BASE, "base.toml")
    return write_vm(tmp_path, VM.format(stop=stop, name=name or _name(tmp_path)))


def _fast_in_child(*argv: str) -> subprocess.CompletedProcess[str]:
    """``fast_build_or_run`` in a fresh interpreter: prints its result and whether typer/pydantic got imported."""
    probe = (
        "import sys; from microvm.cli import fast_build_or_run; code = fast_build_or_run(sys.argv[1:]); "
        "print(code, 'pydantic' in sys.modules, 'typer' in sys.modules)"
    )
    argv = (sys.executable, "-c", probe, *argv)
    return subprocess.run(
        argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=BOOT_TIMEOUT, check=False
    )


def test_a_recorded_build_is_found_until_something_it_read_changes(tmp_path: Path, monkeypatch) -> None:
    file = _vm(tmp_path)

    def lookup(hypervisor: str | None = None, state_dir: Path | None = None) -> dict | None:
        return fastpath.lookup(file, hypervisor, installed_stamp(state_dir))

    assert lookup() is None  # never built with this file
    assert microvm("build", str(file)).returncode == 0
    found = lookup()
    assert found is not None and found["name"] == _name(tmp_path) and found["plan"]["hypervisor"] == "qemu"
    assert found["plan"]["console"] == [f"{_name(tmp_path)}-console.sock", f"{_name(tmp_path)}-console.log"]
    assert "TCG" in found["note"] and found["accelerator"].startswith("accelerator: tcg")  # as the full path prints
    assert lookup("firecracker") is None  # another hypervisor is another build
    assert lookup(state_dir=tmp_path / "other") is None  # checked against another state directory's VMs

    os.utime(file)  # touched, same content: still the same build
    assert lookup() is not None
    (tmp_path / "base.toml").write_text(BASE.replace("128", "160"))  # an imported file changed
    assert lookup() is None
    assert microvm("build", str(file)).returncode == 0
    assert lookup() is not None
    # a VM installed since: the config is checked against it (its n, MACs), so the build is evaluated again
    write_vm(tmp_path / "sources", BASE, "other.toml")
    assert microvm("create", "other", "-f", str(tmp_path / "sources")).returncode == 0
    assert lookup() is None
    assert microvm("build", str(file)).returncode == 0
    assert lookup() is not None
    monkeypatch.setenv("MICROVM_ACCEL", "kvm")  # the environment the build saw changed
    assert lookup() is None


def test_a_recorded_build_is_not_found_after_a_file_the_guest_is_built_from_changed(tmp_path: Path) -> None:
    """guest.files sources and the Debian lock count by content; a deleted source fails as the full build does.

    Recorded as `microvm build` records (a Debian build needs the network): onto a runner that exits 3."""
    (tmp_path / "motd").write_text("hello\n")
    (tmp_path / "debian.lock").write_text("{}\n")
    files = '[guest.files."/etc/motd"]\nsource = "motd"\n[guest.debian]\nlock = "debian.lock"\n'
    file = write_vm(tmp_path, f'[guest]\nhostName = "{_name(tmp_path)}"\nbase = "debian"\n{files}')
    stub = tmp_path / "stub"
    (stub / "bin").mkdir(parents=True)
    (stub / "bin" / "microvm-run").write_text("#!/bin/sh\nexit 3\n")

    def recorded() -> bool:
        return fastpath.lookup(file, None, installed_stamp()) is not None

    def record() -> None:
        loaded = load_vm(file)
        fastpath.record(file, None, loaded.inputs, loaded.config, installed_stamp(), {"runner": str(stub)})
        assert recorded()

    record()
    (tmp_path / "motd").write_text("changed\n")
    assert not recorded()
    record()
    (tmp_path / "debian.lock").write_text('{"packages": {}}\n')
    assert not recorded()
    record()
    (tmp_path / "motd").unlink()
    assert not recorded()
    failed = microvm("build", str(file))
    assert failed.returncode == 1 and f"{tmp_path / 'motd'} does not exist" in failed.stderr, failed.stderr


def test_a_recorded_build_is_not_found_after_a_module_deep_in_the_modules_directory_changed(tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    (modules / "kernel" / "fs").mkdir(parents=True)
    (modules / "kernel" / "fs" / "erofs.ko").write_bytes(b"old")
    (tmp_path / "vmlinux").write_bytes(b"kernel")
    write_vm(tmp_path, BASE, "base.toml")
    kernel = f'[guest.kernel]\nimage = "{tmp_path}/vmlinux"\nmodulesDir = "{modules}"\n'
    vm = load_vm(write_vm(tmp_path, VM.format(stop="poweroff", name="fast") + kernel)).config
    paths = fastpath.host_paths(vm, Store().root)
    before = fastpath.fingerprint([], paths, {})
    (modules / "kernel" / "fs" / "erofs.ko").write_bytes(b"new")
    assert fastpath.fingerprint([], paths, {}) != before


def test_gc_drops_records_whose_runner_is_gone_and_temporaries_of_dead_writers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MICROVM_STORE", str(tmp_path / "store"))  # gc must not touch the shared store
    file = _vm(tmp_path)
    stubs = []
    for hypervisor in (None, "firecracker"):  # two records, onto two stub runners
        stub = tmp_path / f"stub-{hypervisor}"
        (stub / "bin").mkdir(parents=True)
        (stub / "bin" / "microvm-run").write_text("#!/bin/sh\nexit 3\n")
        loaded = load_vm(file)
        fastpath.record(file, hypervisor, loaded.inputs, loaded.config, installed_stamp(), {"runner": str(stub)})
        stubs.append(stub)
    kept = fastpath.stamp_file(file, None)
    gone = fastpath.stamp_file(file, "firecracker")
    (stubs[1] / "bin" / "microvm-run").unlink()  # that runner left the store
    dead = kept.with_name(f".{kept.name}.999999999")  # a writer killed before its rename
    writing = kept.with_name(f".{kept.name}.{os.getpid()}")  # a writer still at it
    dead.write_text("{")
    writing.write_text("{")
    result = microvm("gc")
    assert result.returncode == 0 and "2 stale build records removed" in result.stdout, result.stdout + result.stderr
    assert sorted(p.name for p in kept.parent.iterdir()) == sorted([kept.name, writing.name])
    assert not gone.exists() and fastpath.lookup(file, None, installed_stamp()) is not None


def test_a_warm_build_prints_what_the_full_build_printed_without_the_option_model(tmp_path: Path) -> None:
    file = _vm(tmp_path)
    full = microvm("build", str(file))
    assert full.returncode == 0, full.stderr
    fast = microvm("build", str(file))
    assert fast.returncode == 0 and fast.stdout == full.stdout, fast.stderr  # the runner's path
    assert fast.stderr.splitlines() == [line for line in full.stderr.splitlines() if line.startswith("accelerator:")]
    result = _fast_in_child("build", str(file))
    assert result.stdout.split()[-3:] == ["0", "False", "False"], result.stderr
    assert result.stdout.split()[0] == full.stdout.strip()
    # the fast path keeps the build's root, as the full build does (gc would take the runner otherwise)
    root = Store().roots_dir / f"build-{_name(tmp_path)}"
    root.unlink()
    assert microvm("build", str(file)).returncode == 0 and os.readlink(root) == full.stdout.strip()


def test_only_a_plain_build_or_run_command_takes_the_fast_path(tmp_path: Path) -> None:
    file = _vm(tmp_path)
    assert microvm("build", str(file)).returncode == 0
    shapes = (["run", str(file), "--help"], ["run"], ["build", str(file), "--state-dir", "x"], ["run", str(file), "-x"])
    for argv in shapes:
        assert fast_build_or_run(argv) is None, argv


@pytest.mark.boot
@pytest.mark.xdist_group("boot")
@pytest.mark.parametrize("stop", ["poweroff", "reboot"])
def test_fast_run_boots_and_the_guest_stops_without_inits_pauses(tmp_path: Path, stop: str) -> None:
    file = _vm(tmp_path, stop)
    state = tmp_path / "state2"
    first = microvm("run", str(file), "--state-dir", str(state))  # evaluates, builds, records
    assert first.returncode == 0, first.stderr
    assert "fast: up" in first.stdout
    # the fast path, which says so by returning the exit code instead of None
    result = _fast_in_child("run", str(file), "--state-dir", str(state))
    assert result.stdout.splitlines()[-1].split()[:1] == ["0"], result.stderr  # after the console
    name = _name(tmp_path)
    console = (state / name / f"{name}-console.log").read_text()
    assert "fast: up" in console and f"{name} stopped cleanly" in console
    # rc.shutdown finished the job itself: busybox init's own (slow) way never started
    assert "The system is going down NOW!" not in console


def test_fast_run_does_not_import_the_option_model(tmp_path: Path) -> None:
    """What makes it fast; checked without booting: the runner of this build is a stub that exits 3."""
    file = _vm(tmp_path)
    assert microvm("build", str(file)).returncode == 0
    runner = fastpath.lookup(file, None, installed_stamp())["runner"]
    # a stamp whose runner is a stub: copy the record onto a runner that exits 3 at once
    stub = tmp_path / "stub"
    (stub / "bin").mkdir(parents=True)
    (stub / "bin" / "microvm-run").write_text("#!/bin/sh\nexit 3\n")
    (stub / "bin" / "microvm-run").chmod(0o755)
    stamp_file = fastpath.stamp_file(file, None)
    original = stamp_file.read_text()
    try:
        stamp_file.write_text(original.replace(runner, str(stub)))
        result = _fast_in_child("run", str(file))
    finally:
        stamp_file.write_text(original)
    assert result.stdout.split() == ["3", "False", "False"], result.stderr


@pytest.mark.parametrize(
    "cpuinfo, khz",
    [
        (
            "model name\t: Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz\ncpu MHz\t\t: 1200.000\nflags\t\t: fpu tsc\n",
            2600000,
        ),
        (
            "model name\t: Intel(R) Xeon(R) Processor\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu tsc tsc_known_freq\n",
            2000000,
        ),
        # frequency scaling without a known TSC rate: the default, not a rate that changes between builds
        ("model name\t: AMD EPYC 7B13\ncpu MHz\t\t: 1796.123\nflags\t\t: fpu tsc constant_tsc\n", 2600000),
    ],
)
def test_host_tsc_rate(tmp_path: Path, cpuinfo: str, khz: int) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert host_tsc_khz(tmp_path / "cpuinfo") == khz


def test_module_signatures_are_cut_off_exactly(shared_store) -> None:
    from microvm.guest.kmod import SIGNATURE_MAGIC, without_signature

    modules = sorted(shared_store.root.glob("*-kernel-*/lib/modules/*/kernel/fs/erofs/erofs.ko"))
    if not modules:
        pytest.skip("no kernel in the shared store yet (the boot tests download it)")
    signed = modules[0].read_bytes()
    assert signed.endswith(SIGNATURE_MAGIC)
    unsigned = without_signature(signed)
    assert signed.startswith(unsigned) and len(signed) - len(unsigned) > 512  # an RSA signature went
    assert unsigned.startswith(b"\x7fELF") and without_signature(unsigned) == unsigned


LIGHT = ("typer", "click", "rich", "pydantic", "microvm.config", "microvm.runner.build", "microvm.cluster")
LIGHT += ("dataclasses", "logging", "tempfile")


def _command_in_child(*argv: str, heavy: tuple[str, ...] = LIGHT) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`microvm ARGV` in a fresh interpreter, and which of the ``heavy`` modules it imported (by default the
    standard library's dataclasses, logging and tempfile too: each costs these commands several milliseconds of
    start-up)."""
    probe = (
        "import atexit, sys; "
        f"atexit.register(lambda: print('loaded', *[m for m in {heavy!r} if m in sys.modules], file=sys.stderr)); "
        "sys.argv[0] = 'microvm'; from microvm.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    loaded = next(line for line in result.stderr.splitlines() if line.startswith("loaded")).split()[1:]
    return result, loaded


def _installed(tmp_path: Path) -> Path:
    """VM ``fast`` installed from a directory source into the test's state directory (the real command)."""
    _vm(tmp_path / "src", name="fast")
    (tmp_path / "src" / "vm.toml").rename(tmp_path / "src" / "fast.toml")
    created = microvm("create", "fast", "-f", str(tmp_path / "src"))
    assert created.returncode == 0, created.stderr
    return Path(os.environ["MICROVM_STATE_DIR"])


STATUS_KEYS = {
    "name", "state", "running", "hypervisor", "vcpu", "mem", "addresses", "uptime",
    "advice", "command", "source", "current", "booted", "node",
}  # fmt: skip


def test_list_and_status_run_without_typer_or_the_option_model(tmp_path: Path) -> None:
    """The frequent commands' fast dispatch; `list --json` and `status --json` have the documented shape,
    and `list` neither evaluates nor builds (not even imports what would)."""
    state = _installed(tmp_path)
    entries = set(Path(os.environ["MICROVM_STORE"]).iterdir())

    listed, loaded = _command_in_child("list", "--json")
    assert listed.returncode == 0 and loaded == [], (listed.stderr, loaded)
    (vm,) = json.loads(listed.stdout)
    assert set(vm) == STATUS_KEYS
    runner = os.readlink(state / "fast" / "current")
    assert vm | {"source": None} == {
        "name": "fast", "state": "not booted", "running": False, "hypervisor": "qemu", "vcpu": 1, "mem": 128,
        "addresses": [], "uptime": None, "advice": "start with", "command": "microvm start fast", "source": None,
        "current": runner, "booted": None, "node": None,
    }  # fmt: skip
    assert vm["source"] == str(tmp_path / "src")

    status, loaded = _command_in_child("status", "fast", "--json")
    assert status.returncode == 0 and loaded == [] and json.loads(status.stdout) == vm, status.stderr
    table, loaded = _command_in_child("list")
    assert loaded == [] and table.stdout.splitlines()[1].split()[:3] == ["fast", "not", "booted"]
    # nothing built for this VM (the store is shared: other tests' workers add their own entries meanwhile)
    assert [
        p.name for p in set(Path(os.environ["MICROVM_STORE"]).iterdir()) - entries if p.name.endswith("-fast")
    ] == []

    # the systemd commands check the name and say systemd is missing, without typer
    started, loaded = _command_in_child("start", "fast")
    assert started.returncode == 1 and loaded == [] and "systemd is not running" in started.stderr
    bad, loaded = _command_in_child("stop", "../x")
    assert bad.returncode == 1 and loaded == [] and "'../x' is not a valid name" in bad.stderr
    missing, _ = _command_in_child("status", "nope")
    assert missing.returncode == 1 and "error: VM 'nope' is not installed" in missing.stderr


def test_help_is_typers_text_kept_for_next_time(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MICROVM_STORE", str(tmp_path / "store"))  # nothing kept yet
    first, loaded = _command_in_child("--help")
    assert first.returncode == 0 and "typer" in loaded and "Commands:" in first.stdout
    again, loaded = _command_in_child("--help")
    assert again.returncode == 0 and loaded == [] and again.stdout == first.stdout


def test_check_runs_without_typer_or_rich_and_prints_what_typers_check_prints(tmp_path: Path) -> None:
    """`check FILE` (and `--json`, `--host`) takes the fast dispatch: no typer, click, rich, nor asyncio (the
    qemu and stratovirt backends' QMP); its output and exit code are those of the typer command, for a clean file, a file
    with a warning, a bad file and a host file."""
    clean = _vm(tmp_path, name="fast")
    warned = write_vm(tmp_path, VM.format(stop="poweroff", name="fast") + "[microvm]\nmem = 2048\n", "warned.toml")
    bad = write_vm(tmp_path, VM.format(stop="poweroff", name="fast") + "[microvm]\nvcpu = 0\nnope = 1\n", "bad.toml")
    host = write_vm(tmp_path, '[microvm.vms.fast]\nconfig = "vm.toml"\n', "host.toml")
    other = write_vm(tmp_path, '[guest]\nhostName = "sv"\n[microvm]\nhypervisor = "stratovirt"\n', "sv.toml")  # QMP too
    # the same `main`, its fast dispatch turned off: typer's command, errors shown as main shows them
    typer_check = "from microvm.cli import fast, main; fast.command = lambda argv: None; main()"
    for argv in (
        ["check", str(clean)],
        ["check", str(warned)],
        ["check", str(bad)],
        ["check", "--json", str(bad)],
        ["check", str(warned), "--json"],
        ["check", "--host", str(host)],
        ["check", str(other)],
        ["check", f"{tmp_path}/./vm.toml"],  # named as typer's Path argument names it
    ):
        fast, loaded = _command_in_child(*argv, heavy=("typer", "click", "rich", "asyncio", "qemu.qmp"))
        assert loaded == [], (argv, loaded)
        probe = f"import sys; sys.argv[0] = 'microvm'; {typer_check}"
        typed = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=False)
        assert (fast.returncode, fast.stdout) == (typed.returncode, typed.stdout), argv
        assert fast.stderr.replace("loaded\n", "") == typed.stderr, argv
    assert fast.stdout == f"{clean}: ok (fast, qemu)\n"
    warning = _command_in_child("check", str(warned))[0]
    assert warning.returncode == 0 and warning.stderr.startswith("warning: ") and "2048" in warning.stderr
    failed = _command_in_child("check", str(bad))[0]
    assert failed.returncode == 1 and failed.stdout == "" and "microvm.vcpu" in failed.stderr


@pytest.mark.parametrize(
    "argv, fast",
    [
        (["list"], True),
        (["list", "--json"], True),
        (["status", "vm1"], True),
        (["--json", "status", "vm1"], True),
        (["start", "vm1"], True),
        (["list", "--help"], False),  # a subcommand's help, an unknown option, a typo: typer answers
        (["list", "--bogus"], False),
        (["status"], False),
        (["status", "--help"], False),
        (["start", "vm1", "vm2"], False),
        (["start", "vm1", "--json"], False),
        (["lsit"], False),
        (["check", "vm.toml"], True),
        (["check", "--host", "--json", "host.toml"], True),
        (["check", "--help"], False),
        (["check", "vm.toml", "--bogus"], False),
        (["check", "a.toml", "b.toml"], False),
        ([], False),
    ],
)
def test_only_exact_command_shapes_take_the_fast_dispatch(argv: list[str], fast: bool) -> None:
    assert (command(argv) is not None) == fast


def test_shell_completion_offers_installed_vm_names(tmp_path: Path) -> None:
    _installed(tmp_path)
    for words, names in (("microvm status f", ["fast"]), ("microvm start ", ["fast"]), ("microvm update fa", ["fast"]),
                         ("microvm stop x", [])):  # fmt: skip
        env = {**os.environ, "_MICROVM_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "2"}
        result = subprocess.run([sys.executable, "-m", "microvm"], env=env, capture_output=True, text=True, check=False)
        assert result.stdout.split() == names, (words, result.stdout, result.stderr)
