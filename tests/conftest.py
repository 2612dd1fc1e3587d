"""Shared fixtures: a store reused across runs (the kernel is downloaded once) and real boots."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from microvm.config import load_vm
from microvm.runner.build import BuiltVM, build_vm
from microvm.store import Store

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MICROVM_TEST_CACHE") or Path.home() / ".cache" / "microvm-test")
BOOT_TIMEOUT = 180  # TCG on a loaded 2-core machine; a hung guest fails, it never passes
UNUSED_DAYS = 3  # shared-store entries no test run used for this long are deleted


class _TouchingStore(Store):
    """The shared store, marking every entry a test uses (new or a cache hit) as used now."""

    def add(self, *args: Any, **kwargs: Any) -> tuple[Path, bool]:
        path, built = super().add(*args, **kwargs)
        os.utime(path)
        return path, built


def pytest_configure(config: pytest.Config) -> None:
    """Keep the shared store from growing without end: every change to the code makes new entries.

    Entries used within UNUSED_DAYS stay, with what they reference. Done once by the
    controlling process, before any xdist worker starts.
    """
    store = Store(CACHE / "store")
    if hasattr(config, "workerinput") or not store.root.is_dir():
        return
    cutoff = time.time() - UNUSED_DAYS * 86400
    store.gc([entry for entry in store.entries() if entry.stat().st_mtime > cutoff])


@pytest.fixture(scope="session")
def shared_store() -> Store:
    """The store the tests build into; kept between runs so builds are cache hits."""
    return _TouchingStore(CACHE / "store")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI runs in tests use the shared store, a private state dir, and TCG.

    They run as root, and the shared store is under /root (mode 0700), which the user `microvm run`
    drops to cannot reach: hypervisors run as root here. The drop itself is tested in a container
    (test_host_systemd.py), whose users and /root are its own.
    """
    monkeypatch.setenv("MICROVM_STORE", str(CACHE / "store"))
    monkeypatch.setenv("MICROVM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MICROVM_ACCEL", "tcg")
    monkeypatch.setenv("MICROVM_RUN_AS_ROOT", "1")


def entries_built_for(store_root: Path, host_name: str) -> set[str]:
    """Store entries of the VM ``host_name`` (xdist workers share the store: compare these, not all entries)."""
    kinds = ("system", "rootimage", "initrd", "microvm-qemu")
    return {e for e in os.listdir(store_root) if e.endswith(tuple(f"-{kind}-{host_name}" for kind in kinds))}


def exposure(roots: list[Path], secret: bytes) -> tuple[list[Path], list[Path]]:
    """What other users could change or read below ``roots``: (everything every user may write,
    the files every user may read - the file and each directory above it up to its root - that hold ``secret``).

    Where the roots are (the tests' cache is under root's private home) does not count: on a host the
    store and the state directory are where every user may look.
    """
    writable, readable = [], []

    def reachable(directory: Path, root: Path) -> bool:
        return all(d.stat().st_mode & 0o001 for d in (directory, *directory.parents) if d.is_relative_to(root))

    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            for name in [*dirnames, *filenames]:
                mode = (here / name).lstat().st_mode
                if stat.S_ISLNK(mode):
                    continue
                if mode & 0o002:
                    writable.append(here / name)
                if (
                    stat.S_ISREG(mode)
                    and mode & 0o004
                    and reachable(here, root)
                    and secret in (here / name).read_bytes()
                ):
                    readable.append(here / name)
    return writable, readable


def write_vm(directory: Path, text: str, name: str = "vm.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


@dataclass
class Booted:
    built: BuiltVM
    workdir: Path
    returncode: int
    console: str


def build_file(store: Store, file: Path, hypervisor: str | None = None) -> BuiltVM:
    return build_vm(store, load_vm(file).config, hypervisor)


def boot(
    store: Store, file: Path, workdir: Path, timeout: float = BOOT_TIMEOUT, hypervisor: str | None = None
) -> Booted:
    """Build ``file`` and run its runner to completion; return the console output."""
    built = build_file(store, file, hypervisor)
    workdir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [built.run], cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    logs = list(workdir.glob("*-console.log"))
    console = logs[0].read_text(errors="replace") if logs else result.stdout.decode(errors="replace")
    return Booted(built, workdir, result.returncode, console + result.stderr.decode(errors="replace"))


@contextmanager
def started(store: Store, file: Path, workdir: Path) -> Iterator[tuple[BuiltVM, subprocess.Popen[bytes]]]:
    """Build ``file`` and start its runner in ``workdir``; the hypervisor is killed afterwards if still there."""
    built = build_file(store, file)
    workdir.mkdir(parents=True, exist_ok=True)
    vm = subprocess.Popen([built.run], cwd=workdir, stdin=subprocess.DEVNULL)
    try:
        yield built, vm
    finally:
        vm.kill()


def shut_down(built: BuiltVM, workdir: Path, vm: subprocess.Popen[bytes]) -> None:
    """``bin/microvm-shutdown``, which returns only once the hypervisor has exited (with status 0)."""
    result = subprocess.run(
        [built.runner / "bin/microvm-shutdown"], cwd=workdir, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert vm.wait(timeout=5) == 0


def microvm(*args: str, timeout: float = BOOT_TIMEOUT, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real `microvm` command."""
    return subprocess.run(
        [sys.executable, "-m", "microvm", *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


@pytest.fixture
def ns():
    """A private network namespace (loopback up) for the test; removed with its processes afterwards."""
    from netns import netns

    with netns() as namespace:
        yield namespace
