"""Fixtures and hooks only: a store reused across runs (the kernel is downloaded once), the test environment.

Shared non-fixture helpers are in helpers.py."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import CACHE
from netns import netns

from microvm.store import Store

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


@pytest.fixture
def ns():
    """A private network namespace (loopback up) for the test; removed with its processes afterwards."""
    with netns() as namespace:
        yield namespace


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key pair for the module's guests (Debian and vsock tests); the public half."""
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    return key.with_suffix(".pub")
