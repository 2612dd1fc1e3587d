"""Module load order: on a small fake modules dir, and on the real Debian cloud kernel."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from microvm.errors import MicrovmError
from microvm.guest.kmod import ModuleIndex, module_name, resolve_modules

RELEASE = "6.1.0-test-amd64"


def fake_modules_dir(root: Path) -> Path:
    """A depmod-like index: c <- b <- a, softdeps, a built-in and an alias."""
    d = root / "lib/modules" / RELEASE
    d.mkdir(parents=True)
    (d / "modules.dep").write_text(
        "kernel/a.ko: kernel/b.ko kernel/c.ko\n"
        "kernel/b.ko: kernel/c.ko\n"
        "kernel/c.ko:\n"
        "kernel/fs/my-fs.ko: kernel/c.ko\n"
        "kernel/crc.ko:\n"
        "kernel/after.ko:\n"
        "kernel/loop1.ko:\n"
        "kernel/loop2.ko:\n"
    )
    (d / "modules.softdep").write_text(
        "# Soft dependencies extracted from modules themselves.\n"
        "softdep my_fs pre: crypto-crc missing-soft post: after\n"
        "softdep a ignored-word\n"
        "softdep loop1 post: loop2\n"
        "softdep loop2 pre: loop1\n"
    )
    (d / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\nkernel/crypto/sha-256.ko\n")
    (d / "modules.builtin.modinfo").write_bytes(b"sha_256.alias=crypto-sha256\0sha_256.license=GPL\0")
    (d / "modules.alias").write_text("alias crypto-crc crc\nalias virtio:d00000002v* b\n")
    return d


def names(paths: list[Path]) -> list[str]:
    return [module_name(p.name) for p in paths]


def test_dependencies_first_each_once(tmp_path: Path) -> None:
    d = fake_modules_dir(tmp_path)
    paths = resolve_modules(d, ["a", "b", "c"])
    assert names(paths) == ["c", "b", "a"]
    assert paths[0] == d / "kernel/c.ko"


def test_softdeps_pre_and_post_by_alias_dash_or_underscore(tmp_path: Path) -> None:
    d = fake_modules_dir(tmp_path)
    for request in ("my-fs", "my_fs"):
        # crc (via its alias) before, after after; an absent soft dependency is skipped
        assert names(resolve_modules(d, [request])) == ["crc", "c", "my_fs", "after"]


def test_builtin_modules_and_aliases_are_skipped(tmp_path: Path) -> None:
    d = fake_modules_dir(tmp_path)
    assert resolve_modules(d, ["ext4", "sha-256", "crypto-sha256"]) == []


def test_softdep_cycles_terminate(tmp_path: Path) -> None:
    d = fake_modules_dir(tmp_path)
    assert names(resolve_modules(d, ["loop2"])) == ["loop1", "loop2"]


def test_unknown_module_names_module_and_release(tmp_path: Path) -> None:
    d = fake_modules_dir(tmp_path)
    with pytest.raises(MicrovmError, match=f"kernel module 9p does not exist in kernel {RELEASE}"):
        resolve_modules(d, ["9p"])


def test_missing_index_says_to_run_depmod(tmp_path: Path) -> None:
    with pytest.raises(MicrovmError, match="no modules.dep") as err:
        resolve_modules(tmp_path, ["a"])
    assert "depmod" in str(err.value)


def test_pure_index() -> None:
    index = ModuleIndex(
        release="r",
        files={"x": "x.ko", "y": "sub/y.ko.xz"},
        deps={"x": ["y"], "y": []},
    )
    assert index.resolve(["x", "y"]) == ["sub/y.ko.xz", "x.ko"]
    assert module_name("kernel/net/9p/9pnet_virtio.ko.zst") == "9pnet_virtio"


# --- the real Debian cloud kernel, fetched once into a store the tests reuse ---


def _cache_dir() -> Path:
    return Path(os.environ.get("MICROVM_TEST_CACHE") or Path.home() / ".cache" / "microvm-test")


@pytest.fixture(scope="session")
def cloud_kernel():
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get not available to fetch the Debian cloud kernel")
    from microvm.guest.debarch import Apt, host_arch
    from microvm.guest.kernel import fetch_kernel, resolve_kernel_package
    from microvm.store import Store

    store = Store(_cache_dir() / "store")
    apt = Apt.for_arch(store, host_arch())
    return fetch_kernel(store, resolve_kernel_package("cloud", store, apt), apt)


def test_real_cloud_kernel_order(cloud_kernel) -> None:
    assert cloud_kernel.modules_dir is not None
    order = names(
        resolve_modules(cloud_kernel.modules_dir, ["virtio_blk", "erofs", "virtiofs", "virtio_net", "button", "evdev"])
    )
    assert len(order) == len(set(order))
    for before, after in [
        ("virtio_ring", "virtio"),
        ("virtio", "virtio_blk"),
        ("libcrc32c", "erofs"),
        ("fuse", "virtiofs"),
        ("failover", "net_failover"),
        ("net_failover", "virtio_net"),
    ]:
        assert order.index(before) < order.index(after), (before, after, order)
    assert {"button", "evdev"} <= set(order)
    assert all(p.exists() for p in resolve_modules(cloud_kernel.modules_dir, order))


def test_warm_kernel_resolution_starts_no_process(cloud_kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    from microvm import proc
    from microvm.guest.debarch import Apt, host_arch
    from microvm.guest.kernel import resolve_kernel_package
    from microvm.store import Store

    store = Store(_cache_dir() / "store")
    apt = Apt.for_arch(store, host_arch())
    resolve_kernel_package("cloud", store, apt)  # warm the cache (already warm after the fixture)

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("warm resolution ran a process")

    monkeypatch.setattr(proc, "run", no_process)
    assert resolve_kernel_package("cloud", store, apt).name == cloud_kernel.package
