"""Store and state directory under faults (issue 15): gc during a build, killed builds and gcs,
a full disk, a kill between recording a build and switching to it, a runner gone from the store,
and commands SIGKILLed at many points (microvm.faults) leaving everything consistent."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import build_file, microvm, write_vm

from microvm.host import lifecycle
from microvm.host.statedir import VMState
from microvm.store import Store

VM = """
[guest]
hostName = "{name}"
shell = false
commands = ["poweroff"]
[microvm]
mem = {mem}
{extra}
"""
VOLUME = '[[microvm.volumes]]\nimage = "data.img"\nmountPoint = "/data"\nsize = 8'


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True)


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


@pytest.fixture
def private(shared_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A private store (gc and kills must not touch the shared one) holding the shared store's kernel, hard-linked."""
    kernel = build_file(shared_store, write_vm(tmp_path / "probe", "[guest]\nhostName = 'probe'\n")).kernel.path
    store = Store(tmp_path / "store")
    (store.root / ".cache").mkdir(parents=True)
    subprocess.run(["cp", "-al", kernel, store.root], check=True)
    for cached in (shared_store.root / ".cache").glob("kernel-resolve-*.json"):
        shutil.copy(cached, store.root / ".cache")
    monkeypatch.setenv("MICROVM_STORE", str(store.root))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # scratch space outside the store would show up here
    (tmp_path / "tmp").mkdir()
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
def test_a_full_disk_is_one_error_line_and_leaves_nothing_partial(shared_store, tmp_path: Path) -> None:
    kernel = build_file(shared_store, write_vm(tmp_path / "probe", "[guest]\nhostName = 'probe'\n")).kernel
    local = f'[guest.kernel]\nimage = "{kernel.image}"\nmodulesDir = "{kernel.modules_dir}"'
    file = write_vm(tmp_path, VM.format(name="full", mem=256, extra=local))  # the kernel alone is bigger than 40 MB
    small = tmp_path / "small"
    small.mkdir()
    script = f"""mount -t tmpfs -o size=40m tmpfs {small} || exit 99
        MICROVM_STORE={small}/store {sys.executable} -m microvm build {file}; echo "rc=$?"; ls -A {small}/store"""
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    code, *listing = result.stdout.split()
    assert code == "rc=1", result.stdout + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert "building kernel-local: No space left on device: " in result.stderr
    assert f"{small}/store/" in result.stderr  # the path
    assert [name for name in listing if name.startswith(".tmp") or not name.startswith(".")] == []  # nothing partial


# --- finding 7: a kill between recording a build and switching current --------------------------------------


def test_a_kill_before_the_switch_leaves_list_telling_the_truth(private: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_vm(src, VM.format(name="sw", mem=256, extra=""), "sw.toml")
    assert microvm("create", "sw", "-f", str(src)).returncode == 0
    state = _state("sw")
    old = state.current
    write_vm(src, VM.format(name="sw", mem=300, extra=""), "sw.toml")
    log = tmp_path / "update.log"
    assert microvm("update", "sw", env={**os.environ, "MICROVM_FAULT_LOG": str(log)}).returncode == 0
    lines = log.read_text().splitlines()
    switch = next(i for i, line in enumerate(lines, 1) if line.startswith("os.symlink") and ".current." in lines[i])
    # the same update again (to another size, so it builds as much), killed just before it creates the new `current`
    subprocess.run(["rm", "-rf", state.path], check=True)
    write_vm(src, VM.format(name="sw", mem=256, extra=""), "sw.toml")
    assert microvm("create", "sw", "-f", str(src)).returncode == 0
    write_vm(src, VM.format(name="sw", mem=320, extra=""), "sw.toml")
    killed = microvm("update", "sw", env={**os.environ, "MICROVM_FAULT_AT": str(switch)})
    assert killed.returncode == -signal.SIGKILL
    assert state.current == old
    assert lifecycle.status(state).state == "outdated"
    assert "outdated" in microvm("list").stdout


# --- finding 10: the current runner is gone from the store --------------------------------------------------


def test_a_vm_whose_runner_is_gone_can_be_removed_and_says_how_to_run(private: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_vm(src, VM.format(name="gone", mem=256, extra=VOLUME), "gone.toml")
    assert microvm("create", "gone", "-f", str(src)).returncode == 0
    state = _state("gone")
    (state.path / "data.img").write_text("user data")
    shutil.rmtree(state.current)  # deleted by hand
    for command in (["run", "gone"], ["status", "gone"]):
        result = microvm(*command)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        if command[0] == "run":
            assert "missing from the store" in result.stderr and "microvm update gone" in result.stderr
    assert "gone: outdated" in microvm("list").stdout or "gone:" in microvm("list").stdout
    result = microvm("remove", "gone")
    assert result.returncode == 0, result.stderr
    assert (state.path / "data.img").read_text() == "user data"  # data is never lost
    assert sorted(p.name for p in state.path.iterdir()) == ["data.img"]
