"""The content-addressed store.

Each build output is a directory ``<hash>-<name>`` whose hash covers every
input that went into it. Outputs are built under a temporary name and renamed
into place, so an entry either exists complete or not at all, and is never
changed afterwards. The same inputs are a cache hit and do no work.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import MicrovmError

HASH_LEN = 32


def default_store_dir() -> Path:
    """``$MICROVM_STORE``, else /var/lib/microvm/store for root, else the user's cache."""
    if env := os.environ.get("MICROVM_STORE"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/microvm/store")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "microvm" / "store"


def input_hash(inputs: Any) -> str:
    """Stable hash of JSON-serialisable build inputs."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:HASH_LEN]


def file_digest(path: Path) -> str:
    """sha256 of a file's content, for inputs that are files."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """A directory of immutable, hash-named build outputs."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_store_dir()).absolute()

    def path_for(self, name: str, inputs: Any) -> Path:
        return self.root / f"{input_hash({'name': name, 'inputs': inputs})}-{name}"

    def add(
        self,
        name: str,
        inputs: Any,
        build: Callable[[Path], None],
        references: tuple[Path, ...] = (),
    ) -> tuple[Path, bool]:
        """Return the entry for ``inputs``, building it with ``build(tmpdir)`` if missing.

        ``references`` are the store entries this one uses (kept alive by gc
        as long as this one is). Returns ``(path, built)``; ``built`` is False
        on a cache hit. A build that raises leaves nothing behind.
        """
        final = self.path_for(name, inputs)
        if final.exists():
            return final, False
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(final.name):
            if final.exists():  # another process built it while we waited
                return final, False
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=self.root))
            try:
                build(tmp)
                (tmp / ".inputs.json").write_text(
                    json.dumps({"name": name, "inputs": inputs}, indent=1, sort_keys=True, default=str)
                )
                (tmp / ".references").write_text("".join(f"{self.owner_of(r) or r}\n" for r in references))
                tmp.chmod(0o755)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final, True

    @contextlib.contextmanager
    def _lock(self, entry: str) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(exist_ok=True)
        with (locks / entry).open("w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if not p.name.startswith("."))

    def references(self, entry: Path) -> list[Path]:
        refs = entry / ".references"
        return [Path(line) for line in refs.read_text().splitlines() if line] if refs.exists() else []

    def owner_of(self, path: Path) -> Path | None:
        """The store entry that ``path`` lies in, if any."""
        try:
            rel = path.absolute().relative_to(self.root)
        except ValueError:
            return None
        return self.root / rel.parts[0] if rel.parts else None

    # --- copying between stores (the archive format is below the class) --------

    def in_dependency_order(self, entries: list[Path]) -> list[Path]:
        """The closure of ``entries``, each entry after the entries it references."""
        ordered: list[Path] = []
        seen: set[Path] = set()

        def visit(entry: Path) -> None:
            if entry in seen or not entry.exists():
                return
            seen.add(entry)
            for ref in self.references(entry):
                visit(ref)
            ordered.append(entry)

        for entry in entries:
            visit(entry)
        return ordered

    def missing(self, names: list[str]) -> list[str]:
        """Which of the entry ``names`` this store lacks."""
        for name in names:
            if not ENTRY_NAME.match(name):
                raise MicrovmError(f"{name!r} is not a store entry name")
        return [name for name in names if not (self.root / name).exists()]

    def send(self, entries: list[Path], out: BinaryIO) -> int:
        """Write ``entries`` (in this order) as one copy stream; returns the bytes written."""
        written = 0

        def write(data: bytes) -> None:
            nonlocal written
            out.write(data)
            h.update(data)
            written += len(data)

        out.write(ARCHIVE_MAGIC)
        for entry in entries:
            h = hashlib.sha256()
            out.write(b"entry %s\n" % entry.name.encode())
            _archive(entry, write)
            out.write(b"sha256 %s\n" % h.hexdigest().encode())
        out.write(b"end\n")
        out.flush()
        return written

    def receive(self, stream: BinaryIO) -> list[Path]:
        """Read a copy stream; keep its entries only if every one arrived whole with its content hash.

        Entries are unpacked under temporary names and renamed into place only
        after the end of the stream: a corrupted or interrupted copy leaves nothing.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        staged: list[tuple[Path, Path]] = []
        try:
            if stream.readline(64) != ARCHIVE_MAGIC:
                raise MicrovmError("not a microvm copy stream (or an empty one: the sender failed)")
            while (line := _HashingReader(stream).line(hashed=False)) != b"end":
                kind, _, name = line.partition(b" ")
                if kind != b"entry" or not ENTRY_NAME.match(name.decode(errors="replace")):
                    raise MicrovmError(f"the copy stream is malformed (at {line[:80]!r})")
                final = self.root / name.decode()
                tmp = Path(tempfile.mkdtemp(prefix=f".tmp-recv-{final.name}-", dir=self.root))
                staged.append((tmp, final))
                reader = _HashingReader(stream)
                _unarchive(reader, tmp)
                expected = reader.line(hashed=False).partition(b" ")[2].decode(errors="replace")
                if expected != reader.hash.hexdigest():
                    raise MicrovmError(
                        f"store entry {final.name} arrived corrupted: content hash {reader.hash.hexdigest()}, "
                        f"the sender's is {expected}"
                    )
            added = []
            for tmp, final in staged:  # references first: never an entry whose references are missing
                with self._lock(final.name):
                    if not final.exists():
                        os.rename(tmp, final)
                        added.append(final)
            return added
        finally:
            for tmp, _ in staged:
                shutil.rmtree(tmp, ignore_errors=True)

    # --- garbage collection ---------------------------------------------------

    @property
    def roots_dir(self) -> Path:
        return self.root / ".roots"

    def add_root(self, name: str, entry: Path) -> None:
        """Keep ``entry`` (and what it references) alive under ``name``; replaced atomically."""
        self.roots_dir.mkdir(parents=True, exist_ok=True)
        link = self.roots_dir / name
        tmp = link.with_name(f".{name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(entry)
        os.replace(tmp, link)

    def roots(self) -> list[Path]:
        if not self.roots_dir.is_dir():
            return []
        return [Path(os.readlink(link)) for link in self.roots_dir.iterdir() if link.is_symlink()]

    def live(self, extra_roots: list[Path]) -> set[Path]:
        """Every entry reachable from the recorded roots and ``extra_roots``."""
        return self.closure([owner for r in [*self.roots(), *extra_roots] if (owner := self.owner_of(r))])

    def closure(self, entries: list[Path]) -> set[Path]:
        """``entries`` and every entry they reference, directly or not."""
        found: set[Path] = set()
        todo = list(entries)
        while todo:
            entry = todo.pop()
            if entry in found or not entry.exists():
                continue
            found.add(entry)
            todo += self.references(entry)
        return found

    def gc(self, extra_roots: list[Path], dry_run: bool = False) -> list[Path]:
        """Delete every entry no root reaches; return what was (or would be) deleted."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(".gc"):
            live = self.live(extra_roots)
            dead = [entry for entry in self.entries() if entry not in live]
            if not dry_run:
                for entry in dead:
                    # rename first so a half-deleted entry never looks complete
                    doomed = entry.with_name(f".tmp-gc-{entry.name}")
                    os.rename(entry, doomed)
                    shutil.rmtree(doomed)
        return dead


# --- moving entries between stores (microvm copy) -------------------------------
#
# An entry travels as a NAR-like archive of its tree: node type, the executable
# bit, names (sorted) and contents, nothing else (no times, owners or inode
# order), so the same tree always gives the same bytes. Its sha256 is the
# entry's content hash; the sender appends it, the receiver recomputes it from
# what arrived and keeps the entry only if the two agree.

ARCHIVE_MAGIC = b"microvm-archive-1\n"
ENTRY_NAME = re.compile(rf"^[0-9a-f]{{{HASH_LEN}}}-[A-Za-z0-9._+-]+$")
_CHUNK = 1 << 20


def _archive(path: Path, write: Callable[[bytes], None]) -> None:
    if path.is_symlink():
        target = os.fsencode(os.readlink(path))
        write(b"l %d\n" % len(target) + target)
    elif path.is_dir():
        names = sorted(os.fsencode(n) for n in os.listdir(path))
        write(b"d %d\n" % len(names))
        for name in names:
            write(b"%d\n" % len(name) + name)
            _archive(path / os.fsdecode(name), write)
    else:
        size = path.stat().st_size
        write(b"f %s %d\n" % (b"x" if path.stat().st_mode & 0o100 else b"-", size))
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                write(chunk)


def content_hash(entry: Path) -> str:
    """sha256 of the entry's archive: equal trees, equal hashes, whatever host they are on."""
    h = hashlib.sha256()
    _archive(entry, h.update)
    return h.hexdigest()


class _HashingReader:
    """Reads the incoming stream, hashing what it reads, refusing what is malformed or cut short."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.hash = hashlib.sha256()

    def exact(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) != size:
            raise MicrovmError("the copy stream ended early (interrupted transfer)")
        self.hash.update(data)
        return data

    def line(self, hashed: bool = True) -> bytes:
        data = self.stream.readline(4096)
        if not data.endswith(b"\n"):
            raise MicrovmError("the copy stream ended early (interrupted transfer)")
        if hashed:
            self.hash.update(data)
        return data[:-1]

    def header(self) -> tuple[bytes, list[bytes]]:
        kind, *fields = self.line().split(b" ")
        return kind, fields


def _unarchive(reader: _HashingReader, path: Path) -> None:
    kind, fields = reader.header()
    try:
        if kind == b"l" and len(fields) == 1:
            os.symlink(reader.exact(int(fields[0])), path)
        elif kind == b"d" and len(fields) == 1:
            path.mkdir(exist_ok=path.is_dir())
            path.chmod(0o755)
            for _ in range(int(fields[0])):
                name = reader.exact(int(reader.line()))
                if b"/" in name or name in (b"", b".", b".."):
                    raise MicrovmError(f"the copy stream has a bad file name {name!r}")
                _unarchive(reader, path / os.fsdecode(name))
        elif kind == b"f" and len(fields) == 2 and fields[0] in (b"x", b"-"):
            with path.open("xb") as f:
                left = int(fields[1])
                while left:
                    chunk = reader.exact(min(left, _CHUNK))
                    f.write(chunk)
                    left -= len(chunk)
            path.chmod(0o755 if fields[0] == b"x" else 0o644)
        else:
            raise MicrovmError(f"the copy stream is malformed (node {kind!r})")
    except ValueError as exc:
        raise MicrovmError(f"the copy stream is malformed ({exc})") from exc
