"""Shared fixtures: a store reused across runs (the kernel is downloaded once) and real boots."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from microvm.build.store import Store
from microvm.build.vm import BuiltVM, build_vm
from microvm.config import load_vm

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MICROVM_TEST_CACHE") or Path.home() / ".cache" / "microvm-test")
BOOT_TIMEOUT = 180  # TCG on a loaded 2-core machine; a hung guest fails, it never passes


@pytest.fixture(scope="session")
def shared_store() -> Store:
    """The store the tests build into; kept between runs so builds are cache hits."""
    return Store(CACHE / "store")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI runs in tests use the shared store, a private state dir, and TCG."""
    monkeypatch.setenv("MICROVM_STORE", str(CACHE / "store"))
    monkeypatch.setenv("MICROVM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MICROVM_ACCEL", "tcg")


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
    result = subprocess.run([built.run], cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
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
        [built.runner / "bin/microvm-shutdown"], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert vm.wait(timeout=5) == 0


def microvm(*args: str, timeout: float = BOOT_TIMEOUT, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real `microvm` command."""
    return subprocess.run(
        [sys.executable, "-m", "microvm", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


@pytest.fixture
def ns():
    """A private network namespace (loopback up) for the test; removed with its processes afterwards."""
    from netns import netns

    with netns() as namespace:
        yield namespace
