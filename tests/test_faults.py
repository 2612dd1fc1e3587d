"""Store and state directory under faults (issue 15): gc during a build, killed builds and gcs,
a full disk, a kill between recording a build and switching to it, a runner gone from the store,
and commands SIGKILLed at many points (microvm.faults) leaving everything consistent."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import POWEROFF_VM, build_file, microvm, write_vm

from microvm.guest.kernel import KernelEntry
from microvm.host import lifecycle
from microvm.host.statedir import VMState
from microvm.store import Store

VOLUME = '[[microvm.volumes]]\nimage = "data.img"\nmountPoint = "/data"\nsize = 8'


def _python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True)


def _add_elsewhere(store: Store, name: str, files: int = 1) -> Path:
    """An entry built by another process, which has ended: rooted nowhere, held by no one."""
    code = "from pathlib import Path; from microvm.store import Store; "
    code += f"Store(Path({str(store.root)!r})).add({name!r}, {{}}, lambda o: [(o / str(i)).write_text(str(i)) for i in range({files})])"
    assert _python(code).wait() == 0
    return store.path_for(name, {})


def _wait_for(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def kernel_entry(shared_store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    probe = write_vm(tmp_path_factory.mktemp("probe"), "[guest]\nhostName = 'probe'\n")
    return build_file(shared_store, probe).kernel.path


def _fresh_store(root: Path, kernel: Path) -> Store:
    """A private store (gc and kills must not touch the shared one) holding the shared store's kernel, hard-linked."""
    store = Store(root)
    (store.root / ".cache").mkdir(parents=True)
    subprocess.run(["cp", "-al", kernel, store.root], check=True)
    for cached in (kernel.parent / ".cache").glob("kernel-resolve-*.json"):
        shutil.copy(cached, store.root / ".cache")
    return store


@pytest.fixture
def private(kernel_entry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    store = _fresh_store(tmp_path / "store", kernel_entry)
    monkeypatch.setenv("MICROVM_STORE", str(store.root))
    return store


def _state(name: str) -> VMState:
    return VMState.of(name, Path(os.environ["MICROVM_STATE_DIR"]))


# --- finding 4: gc during a build ---------------------------------------------------------------------------


def test_gc_during_a_build_keeps_what_the_build_uses(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    env = {**os.environ, "MICROVM_STORE": str(store.root)}
    # another process built the dependency earlier: this build gets it as a cache hit, rooted nowhere
    _add_elsewhere(store, "dep")
    dep, built = store.add("dep", {}, lambda out: None)
    assert not built
    removed = []

    def build(out: Path) -> None:
        result = microvm("gc", env=env)  # a gc while this build runs
        assert result.returncode == 0, result.stderr
        removed.append(result.stdout)
        (out / "uses").write_text((dep / "0").read_text())

    top, _ = store.add("top", {}, build, references=(dep,))
    assert str(dep) not in removed[0] and dep.exists()
    assert (top / "uses").read_text() == "0"
    # built, not yet rooted by the command that built it: a gc now keeps it too, while this process lives
    assert microvm("gc", env=env).returncode == 0
    assert top.exists() and dep.exists()


# --- finding 5: killed builds and gcs leave temporaries that gc removes -------------------------------------


SLOW_BUILD = """
    import time
    from pathlib import Path
    from microvm.store import Store
    def build(out):
        (out / "half").write_text("x")
        time.sleep(600)
    Store(Path({root!r})).add({name!r}, {{}}, build)
"""


def test_gc_removes_the_temporaries_of_killed_builds_and_gcs(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    env = {**os.environ, "MICROVM_STORE": str(store.root)}
    alive = _python(SLOW_BUILD.format(root=str(store.root), name="alive"))
    try:
        # a gc killed while it deletes an entry leaves its own temporary
        _add_elsewhere(store, "junk", files=5)
        log = tmp_path / "gc.log"
        assert microvm("gc", env={**env, "MICROVM_FAULT_LOG": str(log)}).returncode == 0
        _add_elsewhere(store, "junk", files=5)
        at = next(i for i, line in enumerate(log.read_text().splitlines(), 1) if line.startswith("os.remove"))
        gc = microvm("gc", env={**env, "MICROVM_FAULT_AT": str(at)})
        assert gc.returncode == -signal.SIGKILL
        # and a build killed half-way, its own
        killed = _python(SLOW_BUILD.format(root=str(store.root), name="killed"))
        for name in ("killed", "alive"):
            _wait_for(f"{name}'s temporary", lambda n=name: list(store.root.glob(f".tmp-*-{n}-*/half")))
        killed.kill()
        killed.wait()
        leftovers = sorted(p.name for p in store.root.glob(".tmp-*"))
        assert any("killed" in n for n in leftovers) and any("junk" in n for n in leftovers), leftovers

        result = microvm("gc", env=env)
        assert result.returncode == 0, result.stderr
        assert [p.name for p in store.root.glob(".tmp-*") if "alive" not in p.name] == []
        assert list(store.root.glob(".tmp-*-alive-*/half"))  # its builder still runs: kept
        assert store.entries() == []
    finally:
        alive.kill()
        alive.wait()


# --- finding 6: a full disk ---------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="mounts a small tmpfs as the store")
def test_a_full_disk_is_one_error_line_and_leaves_nothing_partial(kernel_entry: Path, tmp_path: Path) -> None:
    kernel = KernelEntry.load(kernel_entry)
    local = f'[guest.kernel]\nimage = "{kernel.image}"\nmodulesDir = "{kernel.modules_dir}"'
    file = write_vm(
        tmp_path, POWEROFF_VM.format(name="full", mem=256, extra=local)
    )  # the kernel alone is bigger than 40 MB
    small = tmp_path / "small"
    small.mkdir()
    script = f"""mount -t tmpfs -o size=40m tmpfs {small} || exit 99
        MICROVM_STORE={small}/store {sys.executable} -m microvm build {file}; echo "rc=$?"; ls -A {small}/store"""
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], check=False, capture_output=True, text=True, timeout=300
    )
    code, *listing = result.stdout.split()
    assert code == "rc=1", result.stdout + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("building ")]  # progress lines
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr[-2000:]
    assert "building kernel-local: No space left on device: " in result.stderr
    assert f"{small}/store/" in result.stderr  # the path
    assert [name for name in listing if name.startswith(".tmp") or not name.startswith(".")] == []  # nothing partial


# --- finding 7: a kill between recording a build and switching current --------------------------------------


def test_a_kill_before_the_switch_leaves_list_telling_the_truth(private: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_vm(src, POWEROFF_VM.format(name="sw", mem=256, extra=""), "sw.toml")
    assert microvm("create", "sw", "-f", str(src)).returncode == 0
    state = _state("sw")
    old = state.current
    write_vm(src, POWEROFF_VM.format(name="sw", mem=300, extra=""), "sw.toml")
    log = tmp_path / "update.log"
    assert microvm("update", "sw", env={**os.environ, "MICROVM_FAULT_LOG": str(log)}).returncode == 0
    lines = log.read_text().splitlines()
    switch = next(i for i, line in enumerate(lines, 1) if line.startswith("os.symlink") and ".current." in lines[i])
    # the same update again (to another size, so it builds as much), killed just before it creates the new `current`
    subprocess.run(["rm", "-rf", state.path], check=True)
    write_vm(src, POWEROFF_VM.format(name="sw", mem=256, extra=""), "sw.toml")
    assert microvm("create", "sw", "-f", str(src)).returncode == 0
    write_vm(src, POWEROFF_VM.format(name="sw", mem=320, extra=""), "sw.toml")
    killed = microvm("update", "sw", env={**os.environ, "MICROVM_FAULT_AT": str(switch)})
    assert killed.returncode == -signal.SIGKILL
    assert state.current == old
    assert lifecycle.status(state).state == "outdated"
    assert "outdated" in microvm("list").stdout


# --- finding 10: the current runner is gone from the store --------------------------------------------------


def test_a_vm_whose_runner_is_gone_can_be_removed_and_says_how_to_run(private: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_vm(src, POWEROFF_VM.format(name="gone", mem=256, extra=VOLUME), "gone.toml")
    assert microvm("create", "gone", "-f", str(src)).returncode == 0
    state = _state("gone")
    (state.path / "data.img").write_text("user data")
    shutil.rmtree(state.current)  # deleted by hand
    for command in (["run", "gone"], ["start", "gone"]):
        result = microvm(*command)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "is missing from the store" in result.stderr and "rebuild it: microvm update gone" in result.stderr
    (gone,) = json.loads(microvm("list", "--json").stdout)
    assert gone["state"] == "missing" and gone["command"] == "microvm update gone"
    assert gone["advice"] == "its runner is gone from the store, rebuild it" and gone["hypervisor"] is None
    assert "gone: stopped, missing" in microvm("status", "gone").stdout
    result = microvm("remove", "gone")
    assert result.returncode == 0, result.stderr
    assert (state.path / "data.img").read_text() == "user data"  # data is never lost
    assert sorted(p.name for p in state.path.iterdir()) == ["data.img"]


# --- the fault test: commands SIGKILLed at many points ------------------------------------------------------

POINTS_PER_COMMAND = 6
HOST = """
[microvm]
stateDir = "{state}"
[microvm.vms.decl]
config = {{ guest = {{ shell = false, commands = ["poweroff"] }}, microvm = {{ mem = {mem} }} }}
"""


class Scenario:
    """One command to kill, in a directory of its own: a private store and state dir, a source, a volume.

    Made once, then copied back (hard links: nothing changes a file in place) before each kill.
    """

    def __init__(self, root: Path, kernel: Path, command: str) -> None:
        self.root, self.command = root, command
        self.pristine = root.with_name(f"{root.name}.pristine")
        self.store = _fresh_store(root / "store", kernel)
        self.state_dir, self.src, self.tmp = root / "state", root / "src", root / "tmp"
        self.tmp.mkdir()
        self.env = {
            **os.environ,
            "MICROVM_STORE": str(self.store.root),
            "MICROVM_STATE_DIR": str(self.state_dir),
            "MICROVM_UNIT_DIR": str(root / "units"),
            "TMPDIR": str(self.tmp),  # scratch space outside the store would be left here
        }
        self.name = "decl" if command == "host apply" else "web"
        self.define(mem=256)
        if command in ("update", "gc"):
            self.run("create", "web", "-f", str(self.src), ok=True)
            self.define(mem=300)
            if command == "gc":
                self.run("update", "web", ok=True)  # the first build is garbage now
        if command == "host apply":
            self.run("host", "apply", str(self.host_file), ok=True)
            self.define(mem=300)
        self.old = VMState.of(self.name, self.state_dir).current
        self.volume = self.state_dir / self.name / "data.img"
        self.volume.parent.mkdir(parents=True, exist_ok=True)
        self.volume.write_bytes(os.urandom(1 << 16))  # as the runner would have made it
        self.volume_hash = hashlib.sha256(self.volume.read_bytes()).hexdigest()
        subprocess.run(["cp", "-al", root, self.pristine], check=True)

    def reset(self) -> None:
        shutil.rmtree(self.root)
        subprocess.run(["cp", "-al", self.pristine, self.root], check=True)

    @property
    def host_file(self) -> Path:
        return self.src / "host.toml"

    def define(self, mem: int) -> None:
        write_vm(self.src, POWEROFF_VM.format(name="web", mem=mem, extra=VOLUME), "web.toml")
        write_vm(self.src, HOST.format(state=self.state_dir, mem=mem), "host.toml")

    def argv(self) -> list[str]:
        return {
            "build": ["build", str(self.src / "web.toml")],
            "create": ["create", "web", "-f", str(self.src)],
            "update": ["update", "web"],
            "gc": ["gc"],
            "host apply": ["host", "apply", str(self.host_file)],
        }[self.command]

    def run(self, *args: str, ok: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
        """The command; `host apply` in a mount namespace whose passwd and group have its user and groups."""
        argv = [sys.executable, "-m", "microvm", *args]
        if args[0] == "host":
            accounts = self.root / "accounts"
            if not accounts.exists():
                accounts.mkdir()
                (accounts / "passwd").write_text(Path("/etc/passwd").read_text() + "microvm:x:990:990::/:/bin/false\n")
                (accounts / "group").write_text(Path("/etc/group").read_text() + "kvm:x:990:\nmicrovm:x:991:\n")
            binds = " && ".join(f"mount --bind {accounts / f} /etc/{f}" for f in ("passwd", "group"))
            argv = ["unshare", "-m", "sh", "-c", f'{binds} && exec "$@"', "sh", *argv]
        result = subprocess.run(argv, env={**self.env, **env}, capture_output=True, text=True, timeout=300, check=False)
        assert "Traceback" not in result.stderr, result.stderr
        if ok:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def problems(self) -> list[str]:
        """What is inconsistent in the store and the state dir now."""
        found = []
        root = self.store.root
        for entry in self.store.entries():
            if not (entry / ".inputs.json").exists() or not (entry / ".references").exists():
                found.append(f"half entry under its final name: {entry.name}")
        state = VMState.of(self.name, self.state_dir)
        for link in ("current", "booted"):
            target = getattr(state, link)
            if target is None:
                continue
            missing = [e for e in self.store.closure([target]) | {target} if not (e / ".inputs.json").exists()]
            if missing or not (target / "share/microvm/vm.json").exists():
                found.append(f"{link} -> {target}: incomplete closure {missing}")
        record = state.build_record_of(state.current)
        if record and record.get("runner") != str(state.current):
            found.append(f"build record {record} is not current's ({state.current})")
        if self.volume.exists() and hashlib.sha256(self.volume.read_bytes()).hexdigest() != self.volume_hash:
            found.append("the volume changed")
        elif not self.volume.exists():
            found.append("the volume is gone")
        listed = subprocess.run(
            [sys.executable, "-m", "microvm", "list"], env=self.env, capture_output=True, text=True, check=False
        )
        if listed.returncode != 0:
            found.append(f"list fails: {listed.stderr.strip()}")
        if self.command in ("update", "host apply") and state.current == self.old and "outdated" not in listed.stdout:
            found.append(f"list says an old build is up to date with its changed source: {listed.stdout.strip()}")
        return found + [f"leftover in the store: {p.name}" for p in self.leftovers(root)]

    def leftovers(self, root: Path) -> list[Path]:
        """Temporaries that no gc would remove (a dead creator's are its job)."""
        temporaries = [*root.glob(".tmp-*"), *root.glob(".roots/.*")]
        return [p for p in temporaries if p not in self.store.stale_temporaries()]

    def repair(self) -> subprocess.CompletedProcess[str]:
        """The next command: the same again (create may refuse: the VM exists), then a gc."""
        again = self.run(*self.argv())
        if not (self.command == "create" and again.returncode == 1 and "already exists" in again.stderr):
            assert again.returncode == 0, again.stdout + again.stderr
        return self.run("gc", ok=True)


@pytest.mark.parametrize("command", ["build", "create", "update", "gc", "host apply"])
def test_commands_killed_at_any_point_leave_everything_consistent(
    kernel_entry: Path, tmp_path: Path, command: str
) -> None:
    if command == "host apply" and (os.geteuid() != 0 or not shutil.which("unshare")):
        pytest.skip("host apply runs as root, with its user and group in a private mount namespace")
    started = time.monotonic()
    scenario = Scenario(tmp_path / "scenario", kernel_entry, command)
    log = tmp_path / "changes.log"
    scenario.run(*scenario.argv(), ok=True, MICROVM_FAULT_LOG=str(log))
    changes = log.read_text().splitlines()
    # the renames and links (entries, records, current) and evenly spread points between them
    switches = [
        i for i, line in enumerate(changes, 1) if line.startswith(("os.rename", "os.symlink")) and "busybox" not in line
    ]
    half = POINTS_PER_COMMAND // 2
    points = sorted(
        {*switches[:: max(1, len(switches) // half)][:half], *range(1, len(changes) + 1, max(1, len(changes) // half))}
    )
    problems, killed = [], 0
    for at in points:
        scenario.reset()
        result = scenario.run(*scenario.argv(), MICROVM_FAULT_AT=str(at))
        killed += result.returncode == -signal.SIGKILL
        problems += [f"{command} killed at change {at} ({changes[at - 1]}): {p}" for p in scenario.problems()]
        scenario.repair()
        problems += [f"{command} killed at {at}, then repaired: {p}" for p in scenario.problems()]
        stale = [
            p.name for pattern in (".tmp-*", ".temproots/*", ".roots/.*") for p in scenario.store.root.glob(pattern)
        ]
        problems += [f"{command} killed at {at}: after gc, {name} is left" for name in stale]
        problems += [f"{command} killed at {at}: scratch outside the store: {p}" for p in scenario.tmp.iterdir()]
    print(
        f"\n{command}: {len(changes)} changes, {len(points)} kill points ({killed} killed), {len(problems)} inconsistencies, {time.monotonic() - started:.0f} s"
    )
    assert killed == len(points)
    assert problems == []
