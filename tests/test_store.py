"""The store and the build cache: cache hits, new entries on change, nothing partial on failure."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from helpers import build_file, entries_built_for, exposure, write_vm

from microvm.errors import CommandError, MicrovmError
from microvm.guest.image import build_root_image
from microvm.store import Store, content_hash

VM = """
[guest]
hostName = "{name}"
commands = ["echo {word}"]
[microvm]
mem = 128
{extra}
"""


def test_add_is_atomic_and_cached(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "file").write_text("x")

    first, built = store.add("thing", {"a": 1}, build)
    again, built_again = store.add("thing", {"a": 1}, build)
    assert (built, built_again) == (True, False)
    assert first == again and len(calls) == 1
    other, _ = store.add("thing", {"a": 2}, build)
    assert other != first


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")

    def build(out: Path) -> None:
        (out / "half").write_text("written")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.add("broken", {}, build)
    assert store.entries() == []
    assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp")]


def test_gc_keeps_roots_and_their_references(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    dep, _ = store.add("dep", {}, lambda out: None)
    top, _ = store.add("top", {}, lambda out: None, references=(dep,))
    junk, _ = store.add("junk", {}, lambda out: None)
    store.add_root("keep", top)
    assert store.gc([], dry_run=True) == [junk]
    assert junk.exists()
    assert store.gc([]) == [junk]
    assert not junk.exists() and top.exists() and dep.exists()


def test_second_build_is_a_cache_hit_and_a_change_is_a_new_entry(shared_store, tmp_path: Path) -> None:
    file = write_vm(tmp_path, VM.format(name="cache", word="one", extra=""))
    first = build_file(shared_store, file)
    before = _own_entries(shared_store, first.runner, "cache")
    again = build_file(shared_store, file)
    assert again.runner == first.runner
    # no work, nothing new: other test workers share this store, so only this VM's entries are compared
    assert _own_entries(shared_store, first.runner, "cache") == before
    write_vm(tmp_path, VM.format(name="cache", word="two", extra=""))
    changed = build_file(shared_store, file)
    assert changed.runner != first.runner and changed.system != first.system
    assert changed.kernel.path == first.kernel.path  # the unchanged parts are shared


def _own_entries(store: Store, runner: Path, host_name: str) -> dict[Path, int]:
    """The runner's closure and every entry named for ``host_name``, each with its inode (a rebuild makes a new one)."""
    named = {store.root / name for name in entries_built_for(store.root, host_name)}
    return {p: p.stat().st_ino for p in store.closure([runner]) | named}


def test_failed_image_build_leaves_no_partial_entry(shared_store, tmp_path: Path) -> None:
    file = write_vm(tmp_path, VM.format(name="badimage", word="bad", extra='storeDiskErofsFlags = ["--no-such-flag"]'))
    with pytest.raises(CommandError):
        build_file(shared_store, file)
    assert not [p for p in shared_store.root.glob(".tmp-*-rootimage-badimage-*")]
    assert not [p for p in shared_store.root.glob("*-rootimage-badimage")]
    assert [p for p in shared_store.root.glob("*-system-badimage")]  # the steps before it are complete


def test_finished_entry_is_immutable_to_others(tmp_path: Path) -> None:
    """No write bit for group or others, no set-id or sticky bit, anywhere in a finished entry (issue 15, 3)."""
    store = Store(tmp_path / "store")

    def build(out: Path) -> None:
        (out / "tmp").mkdir(mode=0o777)
        (out / "tmp").chmod(0o1777)
        (out / "open").write_text("anyone may change me")
        (out / "open").chmod(0o666)
        (out / "suid").write_text("#!/bin/sh\n")
        (out / "suid").chmod(0o4755)
        (out / "link").symlink_to("/etc/passwd")
        os.mknod(out / "console", 0o666 | stat.S_IFCHR, os.makedev(5, 1))  # as mmdebstrap leaves in a tree

    entry, _ = store.add("sealed", {}, build)
    assert exposure([entry], b"")[0] == []
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in entry.iterdir() if not p.is_symlink()}
    assert not [name for name, mode in modes.items() if mode & 0o7022], modes
    assert modes["console"] == 0o600  # nobody else opens the host's console through the store
    assert os.readlink(entry / "link") == "/etc/passwd"  # kept, never followed


def extract(image: Path, kind: str, dest: Path) -> Path:
    """Unpack a root image with its own tools (they keep modes and owners), to see what the guest sees."""
    if kind == "erofs":
        subprocess.run(["fsck.erofs", f"--extract={dest}", image], check=True, capture_output=True)
    else:
        subprocess.run(["unsquashfs", "-no-progress", "-d", dest, image], check=True, capture_output=True)
    return dest


@pytest.mark.parametrize("kind", ["erofs", "squashfs"])
def test_store_tree_is_sealed_and_the_image_keeps_guest_modes(shared_store, tmp_path: Path, kind: str) -> None:
    """The guest's /tmp is 1777 inside the image, not in the store; the store's own files stay out (15: 3, 11)."""
    extra = f'storeDiskType = "{kind}"'
    built = build_file(shared_store, write_vm(tmp_path, VM.format(name=f"seal-{kind}", word="x", extra=extra)))
    assert built.system is not None and built.root_image is not None
    assert exposure([built.system, built.root_image.parent], b"")[0] == []
    guest = extract(built.root_image, kind, tmp_path / "guest")
    assert stat.S_IMODE(guest.stat().st_mode) == 0o755
    assert stat.S_IMODE((guest / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((guest / "bin/busybox").stat().st_mode) == 0o755
    assert not [p.name for p in guest.iterdir() if p.name.startswith(".")]  # .inputs.json, .references, ...


def test_squashfs_image_is_reproducible(shared_store, tmp_path: Path) -> None:
    """Two builds of one system's squashfs image, a second apart, are the same bytes (15: 11)."""
    built = build_file(shared_store, write_vm(tmp_path, VM.format(name="repro", word="x", extra="")))
    assert built.system is not None
    images = []
    for n in range(2):
        time.sleep(1.1 * n)  # another second: a build time in the image would differ
        images.append(build_root_image(Store(tmp_path / f"store{n}"), built.system, "squashfs", [], "repro"))
    assert images[0].read_bytes() == images[1].read_bytes()


def _tree(root: Path) -> Path:
    """An entry with a file, an executable, a symlink and a subdirectory."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "run").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "run").chmod(0o755)
    (root / "data").write_bytes(bytes(range(256)) * 1000)
    (root / "link").symlink_to("bin/run")
    (root / ".references").write_text("")
    return root


def test_copy_stream_round_trips_with_equal_content_hashes(tmp_path: Path) -> None:
    source = Store(tmp_path / "a")
    entry = _tree(source.root / f"{'0' * 32}-thing")
    buffer = io.BytesIO()
    sent = source.send([entry], buffer)
    assert sent > 256000
    target = Store(tmp_path / "b")
    assert target.receive(io.BytesIO(buffer.getvalue())) == [target.root / entry.name]
    copy = target.root / entry.name
    assert content_hash(copy) == content_hash(entry)
    assert (copy / "bin" / "run").stat().st_mode & 0o100 and (copy / "link").readlink() == Path("bin/run")
    (copy / "data").write_bytes(b"changed")
    assert content_hash(copy) != content_hash(entry)
    assert target.missing([entry.name, f"{'1' * 32}-other"]) == [f"{'1' * 32}-other"]


def test_a_private_entry_arrives_private(tmp_path: Path) -> None:
    """An entry that may hold secrets (a guest system) is readable by no other user on the receiving host either."""
    source = Store(tmp_path / "a")
    entry = _tree(source.root / f"{'3' * 32}-system")
    (entry / "shadow").write_text("root:$6$secret\n")
    (entry / "shadow").chmod(0o600)
    entry.chmod(0o700)
    buffer = io.BytesIO()
    source.send([entry], buffer)
    target = Store(tmp_path / "b")
    [copy] = target.receive(io.BytesIO(buffer.getvalue()))
    assert stat.S_IMODE(copy.stat().st_mode) & 0o007 == 0
    assert stat.S_IMODE((copy / "shadow").stat().st_mode) == 0o600
    assert stat.S_IMODE((copy / "data").stat().st_mode) == stat.S_IMODE((entry / "data").stat().st_mode)


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda d: d[: len(d) // 2], "ended early"),
        (lambda d: d[: len(d) // 2] + bytes([d[len(d) // 2] ^ 1]) + d[len(d) // 2 + 1 :], "arrived corrupted"),
        (lambda d: d.replace(b"entry 0", b"entry /"), "malformed"),
    ],
    ids=["interrupted", "corrupted", "bad-name"],
)
def test_a_bad_copy_stream_leaves_nothing(tmp_path: Path, mangle, error: str) -> None:
    source = Store(tmp_path / "a")
    first = _tree(source.root / f"{'0' * 32}-first")
    second = _tree(source.root / f"{'2' * 32}-second")
    buffer = io.BytesIO()
    source.send([first, second], buffer)
    target = Store(tmp_path / "b")
    with pytest.raises(MicrovmError, match=error):
        target.receive(io.BytesIO(mangle(buffer.getvalue())))
    assert [p.name for p in target.root.iterdir()] == []  # no entry, no temporary directory
