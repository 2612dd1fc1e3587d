"""Installed VMs without systemd: create/update/list/diff/remove on a private state dir, sources, locks,
the generated units (systemd-analyze verify) and `host apply --dry-run`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CACHE, POWEROFF_VM, entries_built_for, kernel_settings, microvm, write_vm

from microvm.cli import translate_legacy
from microvm.config import load_host
from microvm.host import lifecycle, statedir, unitfile, units
from microvm.host.statedir import VMState, gc_roots, locked
from microvm.store import Store


def state_dir() -> Path:
    return Path(os.environ["MICROVM_STATE_DIR"])


def vm_state(name: str) -> VMState:
    return VMState.of(name, state_dir())


def ok(*args: str, **kwargs) -> str:
    result = microvm(*args, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def failing(*args: str) -> str:
    result = microvm(*args)
    assert result.returncode != 0, result.stdout
    return result.stdout + result.stderr


def define(source: Path, name: str, mem: int = 256, extra: str = "", layout: str = "flat") -> Path:
    """Write VM ``name`` into a source directory, as <name>.toml (flat) or <name>/vm.toml (nested)."""
    if layout == "flat":
        return write_vm(source, POWEROFF_VM.format(name=name, mem=mem, extra=extra), f"{name}.toml")
    return write_vm(source / name, POWEROFF_VM.format(name=name, mem=mem, extra=extra))


def list_states() -> dict[str, tuple[str, str | None]]:
    """`microvm list --json` as {name: (state, the command to run next)}."""
    return {vm["name"]: (vm["state"], vm["command"]) for vm in json.loads(ok("list", "--json"))}


def test_create_list_update_diff_remove(tmp_path: Path) -> None:
    src = tmp_path / "src"
    define(src, "web", layout="nested")
    assert "created web" in ok("-c", "web", "-f", str(src))
    state = vm_state("web")
    first = state.current
    assert first is not None and (first / "bin/microvm-run").exists()
    assert state.source == str(src)
    assert list_states() == {"web": ("not booted", "microvm start web")}
    assert "already exists" in failing("create", "web", "-f", str(src))

    # the source changes: list says outdated without building anything
    define(src, "web", mem=320, layout="nested")
    entries = entries_built_for(CACHE / "store", "web")
    assert list_states()["web"] == ("outdated", "microvm -Ru web")
    assert entries_built_for(CACHE / "store", "web") == entries

    # booted = what runs; an update makes it stale, diff shows what the restart would change
    state.mark_booted()
    assert list_states()["web"] == ("outdated", "microvm -Ru web")
    out = ok("-u", "web")
    assert "microvm.mem: 256 -> 320" in out
    assert state.current != first and state.booted == first
    assert list_states()["web"] == ("stale", "microvm restart web")
    assert "microvm.mem: 256 -> 320" in ok("diff", "web")
    assert "no change" in ok("update", "web")
    assert set(gc_roots(state_dir())) == {first, state.current}

    state.clear_booted()
    assert "removed web" in ok("remove", "web")
    assert not state.path.exists()
    assert "not installed" in failing("update", "web")


def test_git_source_by_ref(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    define(repo, "gitvm")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    subprocess.run([*git, "branch", "stable"], check=True)
    define(repo, "gitvm", mem=300)  # uncommitted: not part of any ref
    url = f"git+file://{repo}?ref=stable"
    ok("create", "gitvm", "-f", url)
    assert vm_state("gitvm").config()["microvm"]["mem"] == 256
    assert list_states()["gitvm"][0] == "not booted"

    subprocess.run([*git, "commit", "-qam", "two"], check=True)  # on main: stable is unchanged
    assert list_states()["gitvm"][0] == "not booted"
    subprocess.run([*git, "branch", "-f", "stable", "main"], check=True)
    assert list_states()["gitvm"][0] == "outdated"
    assert "microvm.mem: 256 -> 300" in ok("update", "gitvm")
    assert list_states()["gitvm"][0] == "not booted"


def test_update_source_is_recorded_for_updates(tmp_path: Path) -> None:
    """microvm.nix's updateFlake: deployed from one source, updated from another."""
    define(tmp_path / "deploy", "upd")
    define(tmp_path / "later", "upd", mem=300)
    lifecycle.create(
        "upd", str(tmp_path / "deploy"), Store(CACHE / "store"), state_dir(), update_source=str(tmp_path / "later")
    )
    assert vm_state("upd").source == str(tmp_path / "later")
    assert list_states()["upd"][0] == "outdated"
    assert "microvm.mem: 256 -> 300" in ok("update", "upd")
    assert list_states()["upd"][0] == "not booted"


def test_bad_source_and_missing_vm_are_clear(tmp_path: Path) -> None:
    assert "defines no VM 'nope'" in failing("create", "nope", "-f", str(tmp_path))
    assert "nope/vm.toml or nope.toml" in failing("create", "nope", "-f", str(tmp_path))
    assert "unsupported source" in failing("create", "x", "-f", "https://example.org/repo")
    assert "'../x' is not a valid name" in failing("create", "../x", "-f", str(tmp_path))
    assert not any(state_dir().glob("*/current"))


def test_failed_update_keeps_the_old_vm(tmp_path: Path) -> None:
    src = tmp_path / "src"
    define(src, "keep")
    ok("create", "keep", "-f", str(src))
    state = vm_state("keep")
    before = (state.current, state.build_record_of(state.current))
    (src / "keep.toml").write_text(POWEROFF_VM.format(name="keep", mem=256, extra="vcpu = 0"))
    message = failing("update", "keep")
    assert "keep.toml" in message and "microvm.vcpu" in message
    (src / "keep.toml").write_text(
        POWEROFF_VM.format(name="keep", mem=512, extra='[guest.kernel]\nimage = "/nonexistent/vmlinuz"')
    )
    assert "/nonexistent/vmlinuz" in failing("update", "keep")  # a valid config whose build fails
    assert (state.current, state.build_record_of(state.current)) == before


def test_remove_keeps_volumes_unless_asked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    extra = '[[microvm.volumes]]\nimage = "data.img"\nmountPoint = "/data"\nsize = 8'
    extra += '\n[microvm.credentialFiles]\ntoken = "/etc/hostname"'
    define(src, "vols", extra=extra)
    ok("create", "vols", "-f", str(src))
    state = vm_state("vols")
    (state.path / "data.img").write_text("user data")  # as microvm-run would have made it
    (state.path / "credentials.img").write_text("a copy of the secrets: not data to keep")
    ok("remove", "vols")
    assert (state.path / "data.img").read_text() == "user data"
    assert sorted(p.name for p in state.path.iterdir()) == ["data.img"]
    ok("create", "vols", "-f", str(src))  # the kept volume is used again
    assert (state.path / "data.img").read_text() == "user data"
    ok("remove", "vols", "--data")
    assert not state.path.exists()


def test_lock_serialises_commands_on_one_vm(tmp_path: Path) -> None:
    src = tmp_path / "src"
    define(src, "locked")
    ok("create", "locked", "-f", str(src))
    with locked("locked", state_dir()):
        # remove does not wait: it says why; update waits for the lock and then runs
        assert "another microvm command is changing VM 'locked'" in failing("remove", "locked")
        define(src, "locked", mem=300)
        waiting = subprocess.Popen(
            [sys.executable, "-m", "microvm", "update", "locked"], stdout=subprocess.PIPE, text=True
        )
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=3)
        assert vm_state("locked").config()["microvm"]["mem"] == 256
    assert waiting.wait(timeout=120) == 0
    assert vm_state("locked").config()["microvm"]["mem"] == 300


def test_concurrent_creates_install_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    define(src, "race")
    racers = [
        subprocess.Popen([sys.executable, "-m", "microvm", "create", "race", "-f", str(src)], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    codes = [r.wait(timeout=120) for r in racers]
    assert sorted(codes) == [0, 1, 1]
    state = vm_state("race")
    assert state.build_record_of(state.current)["runner"] == str(state.current)
    assert [p.name for p in state.path.iterdir() if p.name.startswith(".")] == []


def test_systemd_commands_without_systemd_point_to_run(tmp_path: Path) -> None:
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs here")
    message = failing("start", "web")
    assert "systemd is not running" in message and "microvm run web" in message


def test_legacy_flags() -> None:
    assert translate_legacy(["-Ru", "a", "b"]) == ["update", "--restart", "a", "b"]
    assert translate_legacy(["-c", "web", "-f", "/src"]) == ["create", "web", "--source", "/src"]
    assert translate_legacy(["-l"]) == ["list"]
    assert translate_legacy(["-r", "web"]) == ["run", "web"]
    assert translate_legacy(["run", "-r"]) == ["run", "-r"]
    assert translate_legacy(["-s", "web", "-l", "alice", "uptime"]) == ["ssh", "web", "-l", "alice", "uptime"]


def test_diff_reads_kernel_options_and_packages(tmp_path: Path) -> None:
    def runner(name: str, mem: int, packages: dict[str, str], kernel: str) -> Path:
        path = tmp_path / name
        (path / "share/microvm").mkdir(parents=True)
        (path / "share/microvm/vm.json").write_text(json.dumps({"microvm": {"mem": mem, "vcpu": 1}}))
        (path / "share/microvm/packages.json").write_text(json.dumps(packages))
        (path / ".references").write_text(f"/store/0123-{kernel}\n/store/4567-system-x\n")
        return path

    old = runner("old", 256, {"curl": "7.88.1-10", "gone": "1"}, "kernel-6.1.0-55-cloud-amd64")
    new = runner("new", 512, {"curl": "7.88.1-11", "added": "2"}, "kernel-6.1.0-56-cloud-amd64")
    assert lifecycle.diff_runners(old, new) == [
        "kernel: kernel-6.1.0-55-cloud-amd64 -> kernel-6.1.0-56-cloud-amd64",
        "package added: (none) -> 2",
        "package curl: 7.88.1-10 -> 7.88.1-11",
        "package gone: 1 -> (removed)",
        "microvm.mem: 256 -> 512",
    ]


# --- units ----------------------------------------------------------------------

NEEDS_EVERYTHING = """
devices = [{bus = "pci", path = "0000:00:1f.0"}]
interfaces = [
  {type = "tap", id = "vm-tap1", mac = "02:00:00:00:00:01"},
  {type = "macvtap", id = "vm-mvt1", mac = "02:00:00:00:00:02", macvtap = {link = "eth0", mode = "bridge"}},
]
shares = [{tag = "data", source = "data", mountPoint = "/data", proto = "virtiofs"}]
# the network part provides the real tap-up & co.; their presence is what verify checks
binScripts = {tap-up = "true", tap-down = "true", macvtap-up = "true", macvtap-down = "true", pci-setup = "true"}
"""


@pytest.mark.parametrize("notify", [False, True], ids=["simple", "notify"])
def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path, notify: bool) -> None:
    src = tmp_path / "src"
    define(src, "full", extra=NEEDS_EVERYTHING)
    ok("create", "full", "-f", str(src))
    unit_dir = tmp_path / "units"
    installs = {"full": ["--source", str(src)]}
    for rel, content in units.all_units(state_dir(), CACHE / "store", ["full"], installs, notify).items():
        (unit_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (unit_dir / rel).write_text(content)
    checked = [
        "microvm@full.service",
        "microvm-tap-interfaces@full.service",
        "microvm-macvtap-interfaces@full.service",
        "microvm-pci-devices@full.service",
        "microvm-virtiofsd@full.service",
        "install-microvm-full.service",
        "microvms.target",
    ]
    for unit in checked:
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit_dir / unit)], capture_output=True, text=True, check=False
        )
        assert (unit, result.returncode, result.stderr) == (unit, 0, "")
    service = (unit_dir / "microvm@.service").read_text()
    assert ("Type=notify\nNotifyAccess=all\n" in service) == notify


@pytest.mark.skipif(os.geteuid() != 0, reason="the record is for root's commands")
def test_commands_find_the_state_dir_host_apply_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "default-microvm"
    monkeypatch.setattr(statedir, "HOST_DEFAULTS", record)
    monkeypatch.delenv("MICROVM_STATE_DIR")
    assert statedir.default_state_dir() == statedir.SYSTEM_STATE_DIR  # nothing recorded
    record.write_text(statedir.host_defaults(Path("/srv/vms"), Path("/etc/host.toml")))
    assert statedir.default_state_dir() == Path("/srv/vms")
    monkeypatch.setenv("MICROVM_STATE_DIR", str(tmp_path / "mine"))
    assert statedir.default_state_dir() == tmp_path / "mine"  # the environment wins


def test_host_apply_dry_run_plans_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    define(src, "deployed")
    host_state = tmp_path / "host-state"
    host = write_vm(
        tmp_path,
        f"""
        [microvm]
        stateDir = "{host_state}"
        [microvm.vms.inline]
        config = {{ guest = {{ shell = false, commands = ["poweroff"] }}, microvm = {{ mem = 256 }} }}
        [microvm.vms.deployed]
        source = "{src}"
        autostart = false
        """,
        "host.toml",
    )
    monkeypatch.setenv("MICROVM_UNIT_DIR", str(tmp_path / "units"))
    undeclared = write_vm(tmp_path / "units", unitfile.HEADER + "[Unit]\n", "install-microvm-old.service")
    out = ok("host", "apply", "--dry-run", str(host))
    assert f"would remove {undeclared}" in out
    assert f"would create {host_state} (owner microvm:kvm)" in out
    assert "would install VM inline" in out
    assert f"would create VM deployed from {src}" in out
    assert f"would write {tmp_path}/units/microvm@.service" in out
    assert f"would write {tmp_path}/units/install-microvm-deployed.service" in out
    assert f"would link {tmp_path}/units/multi-user.target.wants/microvms.target" in out
    target = tmp_path / "units/microvms.target"
    assert not target.exists() and not host_state.exists()


def test_unit_overrides_and_credentials_become_drop_ins_systemd_accepts(tmp_path: Path) -> None:
    define(tmp_path / "src", "web")
    ok("create", "web", "-f", str(tmp_path / "src"))  # verify checks the programs the unit runs
    host_file = write_vm(
        tmp_path,
        f"""
        [microvm]
        stateDir = "{state_dir()}"
        [microvm.vms.web]
        config = {{ guest = {{ shell = false }}, microvm = {{ credentialFiles = {{ db = "/etc/secrets/db", tls = "tls.pem" }} }} }}
        [microvm.vms.web.unitOverrides.Unit]
        RequiresMountsFor = "/srv"
        After = ["srv-data.mount", "network-online.target"]
        [microvm.vms.web.unitOverrides.Service]
        CacheDirectory = "microvm-web"
        TimeoutStartSec = "5min"
        """,
        "host.toml",
    )
    host = load_host(host_file)
    dropins = units.vm_dropins("web", host.config.microvm.vms["web"], host.vms["web"].config, state_dir())
    overrides = dropins["microvm@web.service.d/overrides.conf"]
    assert "After=srv-data.mount\nAfter=network-online.target\n" in overrides and "TimeoutStartSec=5min" in overrides
    credentials = dropins["microvm@web.service.d/credentials.conf"]
    assert f"LoadCredential=db:/etc/secrets/db\nLoadCredential=tls:{state_dir()}/web/tls.pem\n" in credentials
    unit_dir = tmp_path / "units"
    for rel, content in (units.all_units(state_dir(), CACHE / "store", [], {}) | dropins).items():
        (unit_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (unit_dir / rel).write_text(content)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_dir / "microvm@web.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    bad = write_vm(tmp_path / "bad", '[microvm.vms.x]\nsource = "/s"\n[microvm.vms.x.unitOverrides.Install]\nA = "b"\n')
    assert "microvm.vms.x.unitOverrides.Install" in failing("host", "apply", "--dry-run", str(bad))


def test_virtiofsd_unit_program_notifies_ready_and_stops_its_daemons(tmp_path: Path) -> None:
    """What microvm-virtiofsd@ runs: one virtiofsd per share, READY=1 once all sockets exist, SIGTERM ends all."""
    import socket

    src = tmp_path / "src"
    shares = 'shares = [{tag = "a", source = "a", mountPoint = "/a", proto = "virtiofs"},\n'
    shares += '  {tag = "b", source = "b", mountPoint = "/b", proto = "virtiofs"}]'
    define(src, "fs", extra=shares)
    ok("create", "fs", "-f", str(src))
    state = vm_state("fs")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    serve = subprocess.Popen(
        [sys.executable, "-m", "microvm.helpers", "virtiofsd", str(state.path)],
        cwd=state.path,
        env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
    )
    try:
        assert notify.recv(100) == b"READY=1"
        assert (state.path / "fs-virtiofs-a.sock").is_socket() and (state.path / "fs-virtiofs-b.sock").is_socket()
        daemons = subprocess.run(
            ["pgrep", "-P", str(serve.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(daemons) == 2
        serve.terminate()
        assert serve.wait(timeout=30) == 0
        assert notify.recv(100) == b"STOPPING=1"
        assert all(not Path(f"/proc/{pid}").exists() for pid in daemons)
    finally:
        serve.kill()
        notify.close()


def test_gc_keeps_what_current_and_booted_use(shared_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local_kernel = kernel_settings(shared_store, tmp_path)
    store = Store(tmp_path / "store")  # private: gc on the shared store would delete other tests' builds
    monkeypatch.setenv("MICROVM_STORE", str(store.root))
    src = tmp_path / "src"
    define(src, "gcvm", extra=local_kernel)
    ok("create", "gcvm", "-f", str(src))
    state = vm_state("gcvm")
    first = state.current
    state.mark_booted()
    define(src, "gcvm", mem=300, extra=local_kernel)
    ok("update", "gcvm")
    second = state.current

    def closure(runner: Path) -> set[Path]:
        return {runner, *store.references(runner)}

    ok("gc")
    assert all(p.exists() for p in closure(first) | closure(second))
    state.clear_booted()
    assert str(first) in ok("gc")
    assert not first.exists()
    assert all(p.exists() for p in closure(second))


@pytest.mark.boot
@pytest.mark.xdist_group("boot")
def test_run_an_installed_vm_in_the_foreground(tmp_path: Path) -> None:
    src = tmp_path / "src"
    define(src, "fg")
    ok("create", "fg", "-f", str(src))
    state = vm_state("fg")
    run = subprocess.Popen(
        [sys.executable, "-m", "microvm", "-r", "fg"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )
    booted_while_running = None
    while run.poll() is None and booted_while_running is None:
        booted_while_running = state.booted
        time.sleep(0.02)
    stdout, _ = run.communicate(timeout=180)
    assert run.returncode == 0
    assert "microvm: fg stopped cleanly" in stdout
    assert booted_while_running == state.current
    assert state.booted is None


TICKING = """
[guest]
hostName = "{name}"
shell = false
commands = ['i=0; while true; do i=$((i+1)); echo "tick $i $(cat /proc/sys/kernel/random/boot_id)"; sleep 0.2; done']
[microvm]
mem = 256
"""


def _ticks(log: Path) -> list[tuple[int, str]]:
    """The guest's numbered ticks with its boot id, from the console log (what this boot of qemu wrote)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [(int(n), boot) for n, boot in re.findall(r"^tick (\d+) (\S+)\r?$", text, re.MULTILINE)]


def _run_until_ticks(name: str, out: Path, count: int) -> tuple[subprocess.Popen, list[tuple[int, str]]]:
    """`microvm run NAME` in the background until the guest has ticked ``count`` times in this run."""
    log = vm_state(name).console_files()[1]
    log.unlink(missing_ok=True)  # the last run's (qemu starts it afresh)
    run = subprocess.Popen(
        [sys.executable, "-m", "microvm", "run", name],
        stdin=subprocess.DEVNULL,
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while len(ticks := _ticks(log)) < count:
        assert run.poll() is None and time.monotonic() < deadline, out.read_text()
        time.sleep(0.1)
    return run, ticks


@pytest.mark.boot
@pytest.mark.xdist_group("boot")
def test_suspend_saves_a_running_vm_and_start_resumes_it(tmp_path: Path) -> None:
    write_vm(tmp_path / "src", TICKING.format(name="susp"), "susp.toml")
    ok("create", "susp", "-f", str(tmp_path / "src"))
    state = vm_state("susp")
    saved, saver = state.saved_state
    assert "is not running" in failing("suspend", "susp")

    first, _ = _run_until_ticks("susp", tmp_path / "run1.out", 3)
    assert "suspended to" in ok("suspend", "susp")
    assert first.wait(timeout=60) == 0
    last, boot = _ticks(state.console_files()[1])[-1]
    assert saved.stat().st_size > 1 << 20 and saver.read_text() == f"{state.current}\n"
    assert list_states()["susp"] == ("suspended", "microvm start susp")

    # the same guest goes on counting: same boot, no reboot; the state is gone once loaded
    second, ticks = _run_until_ticks("susp", tmp_path / "run2.out", 2)
    assert last < ticks[0][0] <= last + 2 and {b for _, b in ticks} == {boot}, (last, ticks)
    assert not saved.exists() and not saver.exists()
    assert list_states()["susp"] == ("current", None)

    # an update would boot it afresh: refused until it was resumed and shut down
    assert "suspended to" in ok("suspend", "susp")
    assert second.wait(timeout=60) == 0
    assert "resuming susp" in (tmp_path / "run2.out").read_text()
    write_vm(tmp_path / "src", TICKING.format(name="susp").replace("mem = 256", "mem = 300"), "susp.toml")
    assert "is suspended" in failing("update", "susp")
    third, ticks = _run_until_ticks("susp", tmp_path / "run3.out", 1)
    assert {b for _, b in ticks} == {boot}  # resumed, not booted
    shutdown = subprocess.run([state.path / "current/bin/microvm-shutdown"], cwd=state.path, check=False, timeout=120)
    assert shutdown.returncode == 0 and third.wait(timeout=30) == 0
    assert not saved.exists() and "susp: updated" in ok("update", "susp")


def test_update_and_host_apply_refuse_to_boot_a_suspended_vm_afresh(tmp_path: Path, monkeypatch) -> None:
    """Its saved state resumes only on the build that saved it: switching builds would lose the guest's RAM."""
    define(tmp_path / "src", "sleepy")
    ok("create", "sleepy", "-f", str(tmp_path / "src"))
    state = vm_state("sleepy")
    runner, (saved, saver) = state.current, state.saved_state
    saved.write_bytes(b"QEVM")  # as `microvm suspend` leaves them: the state, and the runner that saved it
    saver.write_text(f"{runner}\n")
    define(tmp_path / "src", "sleepy", mem=300)
    refused = failing("update", "sleepy")
    assert "'sleepy' is suspended" in refused and "microvm start sleepy" in refused, refused
    assert state.current == runner and saved.read_bytes() == b"QEVM"
    assert list_states()["sleepy"] == ("suspended", "microvm start sleepy")
    host = write_vm(
        tmp_path, f'[microvm]\nstateDir = "{state_dir()}"\n[microvm.vms.sleepy]\nconfig = "src/sleepy.toml"\n', "h.toml"
    )
    monkeypatch.setenv("MICROVM_UNIT_DIR", str(tmp_path / "units"))
    assert "'sleepy' is suspended" in failing("host", "apply", "--dry-run", str(host))  # refused while planning
    saved.unlink()  # the user gives the state up
    assert "sleepy: updated" in ok("update", "sleepy")


@pytest.mark.boot
@pytest.mark.xdist_group("boot")
def test_a_vm_qemu_cannot_save_runs_on(tmp_path: Path) -> None:
    share = '[[microvm.shares]]\ntag = "data"\nsource = "data"\nmountPoint = "/data"\nproto = "9p"\n'
    write_vm(tmp_path / "src", TICKING.format(name="nosave") + share, "nosave.toml")
    ok("create", "nosave", "-f", str(tmp_path / "src"))
    state = vm_state("nosave")
    run, _ = _run_until_ticks("nosave", tmp_path / "run.out", 1)
    message = failing("suspend", "nosave")
    assert "qemu could not save the VM: Migration is disabled when VirtFS export path" in message, message
    assert not state.saved_state[0].exists() and not state.saved_state[1].exists()
    assert not list(state.path.glob(".*.partial"))
    count = len(_ticks(state.console_files()[1]))
    deadline = time.monotonic() + 60
    while len(_ticks(state.console_files()[1])) == count:  # still running, not paused
        assert time.monotonic() < deadline
        time.sleep(0.1)
    shutdown = subprocess.run([state.path / "current/bin/microvm-shutdown"], cwd=state.path, check=False, timeout=120)
    assert shutdown.returncode == 0 and run.wait(timeout=30) == 0


def test_list_and_status_show_the_guests_addresses(tmp_path: Path, ns) -> None:
    """Static addresses always; the base interface's fixed DHCP and SLAAC addresses once the host bridge is up."""
    src = tmp_path / "src"
    extra = """
[guest.network.base]
enable = true
n = 5
[[microvm.interfaces]]
type = "tap"
id = "vm-static"
mac = "02:00:00:00:00:42"
[guest.network.interfaces.vm-static]
dhcp = false
addresses = ["192.168.7.2/24"]
"""
    define(src, "addr", extra=extra)
    ok("create", "addr", "-f", str(src))
    table = ok("list").splitlines()  # not a terminal: the table in plain text
    assert "\033[" not in "\n".join(table)
    assert table[0].split() == ["NAME", "STATE", "HYPERVISOR", "VCPU", "MEM", "ADDRESSES", "UPTIME", "NEXT"]
    row = ["addr", "not booted", "qemu", "1", "256 MB", "192.168.7.2", "-", "microvm start addr"]
    assert re.split(r"\s{2,}", table[1]) == row

    host = write_vm(tmp_path, "[network.basic]\nenable = true\n", "host.toml")
    up = ns.run(sys.executable, "-m", "microvm", "host", "network", "up", str(host), check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    status = ok("status", "addr")
    addresses = next(line for line in status.splitlines() if line.startswith("addresses:"))
    # VM n=5: 10.213.0.(n+2) from the bridge's DHCP table; SLAAC from its MAC 02:00:00:01:00:05
    assert addresses == "addresses: 192.168.7.2, 10.213.0.7, fd12:3456:789a::ff:fe01:5"
    assert json.loads(ok("status", "addr", "--json"))["addresses"] == [
        "192.168.7.2",
        "10.213.0.7",
        "fd12:3456:789a::ff:fe01:5",
    ]
