"""The content-addressed store.

Each build output is a directory ``<hash>-<name>`` whose hash covers every
input that went into it. Outputs are built under a temporary name and renamed
into place, so an entry either exists complete or not at all, and is never
changed afterwards. The same inputs are a cache hit and do no work.

A finished entry is sealed (as Nix canonicalises its store paths): root's, no
group or other write bit, no set-id or sticky bit anywhere inside, so no other
user can change what later builds and guests use. What sealing took away (a
guest's 1777 /tmp, its setuid programs, files of its users) is recorded in the
entry's ``.permissions`` for the image builder to give back inside the image.
Entries holding a guest system (which may hold secrets: password hashes, private
files) are *private*: readable only by root and the ``microvm`` group.

Builds and gc coordinate as Nix's do. A process that uses the store has a
session there: a file under ``.temproots`` that it holds locked (flock) as long
as it lives, listing every entry it builds or finds, its temporary roots. They
are registered under a shared gc lock, which gc holds exclusively, so a gc
either reads the root or has finished before the entry is looked at.
Temporaries (``.tmp-<session>-...``: builds in progress, scratch space, entries
gc is deleting) are named after their session, so gc removes those whose
session's lock nobody holds: the process was killed. A lock, unlike a PID,
tells the truth across PID namespaces (a container sharing the store).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import json
import os
import re
import shutil
import stat
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any, BinaryIO

from .errors import MicrovmError, io_error

HASH_LEN = 32
# The group that may read private entries: the VM units run with it (see microvm.host.units).
PRIVATE_GROUP = "microvm"
PERMISSIONS = ".permissions"
METADATA = (".inputs.json", ".references", PERMISSIONS)  # the store's own files in an entry, never part of a guest
UNSAFE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH
Permissions = dict[str, list[int]]  # relative path -> [mode, uid, gid]
TMP = ".tmp-"  # a temporary in the store: .tmp-<pid of its creator>-<what>
OLD_TEMPORARY = 86400  # seconds after which a temporary without a PID in its name is stale


def default_store_dir() -> Path:
    """``$MICROVM_STORE``, else /var/lib/microvm/store for root, else the user's cache."""
    if env := os.environ.get("MICROVM_STORE"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/microvm/store")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "microvm" / "store"


def _tempfile() -> ModuleType:
    """The tempfile module, loaded at first use: list/status/start/stop load this module but make no temporaries
    (tempfile costs them ~2 ms of start-up)."""
    import tempfile  # late on purpose: see above

    return tempfile


def input_hash(inputs: Any) -> str:
    """Stable hash of JSON-serialisable build inputs."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:HASH_LEN]


def _session_of(temporary: str) -> str | None:
    """The session a temporary is named after (``.tmp-<pid>-<random>-...``), None for an older version's name."""
    pid, _, rest = temporary.removeprefix(TMP).partition("-")
    return f"{pid}-{rest.split('-', 1)[0]}" if pid.isdigit() and rest else None


def _held(session: Path) -> bool:
    """Whether a live process holds its session file locked."""
    try:
        with session.open() as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except FileNotFoundError:
        return False
    return False


def _forget(roots: IO[str], path: Path) -> None:
    roots.close()
    path.unlink(missing_ok=True)


def file_digest(path: Path) -> str:
    """sha256 of a file's content, for inputs that are files."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def seal(tree: Path) -> Permissions:
    """Make everything below ``tree`` immutable to all but root; return what was taken away.

    Every inode becomes root's (when we are root) and loses its set-id, sticky
    and group/other write bits; a device node is root's alone. Symlinks are never followed.
    """
    as_root = os.geteuid() == 0
    taken: Permissions = {}
    for dirpath, dirnames, filenames in os.walk(tree):  # os.walk does not descend into symlinked dirs
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            foreign = as_root and (st.st_uid, st.st_gid) != (0, 0)
            link = stat.S_ISLNK(st.st_mode)
            device = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)  # it would open the host's own device
            sealed = mode & (0o700 if device else ~UNSAFE_BITS)
            if not foreign and (link or sealed == mode):
                continue
            taken[os.path.relpath(path, tree)] = [mode, st.st_uid, st.st_gid]
            if foreign:
                os.chown(path, 0, 0, follow_symlinks=False)  # clears set-id bits: chmod after
            if not link:
                os.chmod(path, sealed)
    return taken


def restore(tree: Path, taken: Permissions, under: str = "") -> None:
    """Give back inside ``tree`` (a private copy) what :func:`seal` took from the paths ``under`` a prefix."""
    for rel, (mode, uid, gid) in sorted(taken.items()):
        if not rel.startswith(under):
            continue
        path = tree / rel.removeprefix(under)
        if os.geteuid() == 0:
            os.chown(path, uid, gid, follow_symlinks=False)
        if not path.is_symlink():
            path.chmod(mode)


def _private_gid() -> int | None:
    """The group that may read private entries, if this host has it and we may give entries to it."""
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam(PRIVATE_GROUP).gr_gid
    except KeyError:
        return None


def set_access(entry: Path, private: bool) -> None:
    """The mode of an entry's top directory: everyone may read a public entry; a private one only root
    and the ``microvm`` group (or only its owner where that group does not exist)."""
    st = entry.stat()
    if st.st_uid != os.geteuid():
        return  # root's entry used by another user: not theirs to change
    gid = _private_gid() if private else None
    if gid is not None and st.st_gid != gid:
        os.chown(entry, -1, gid)
    mode = 0o755 if not private else 0o750 if gid is not None else 0o700
    if stat.S_IMODE(st.st_mode) != mode:
        entry.chmod(mode)


class Store:
    """A directory of immutable, hash-named build outputs."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_store_dir()).absolute()
        self._session: tuple[IO[str], str] | None = None  # this process's locked roots file and its name

    def path_for(self, name: str, inputs: Any) -> Path:
        return self.root / f"{input_hash({'name': name, 'inputs': inputs})}-{name}"

    def add(
        self,
        name: str,
        inputs: Any,
        build: Callable[[Path], None],
        references: tuple[Path, ...] = (),
        private: bool = False,
    ) -> tuple[Path, bool]:
        """Return the entry for ``inputs``, building it with ``build(tmpdir)`` if missing.

        ``references`` are the store entries this one uses (kept alive by gc
        as long as this one is). ``private``: the entry may hold secrets (see
        :func:`set_access` and :meth:`share`). Returns ``(path, built)``; ``built`` is False
        on a cache hit. A build that raises leaves nothing behind.
        """
        final = self.path_for(name, inputs)
        self._protect(final)
        if final.exists():
            return final, False
        with self._lock(final.name):
            if final.exists():  # another process built it while we waited
                return final, False
            with self.scratch(final.name) as tmp:
                try:
                    build(tmp)
                    if taken := seal(tmp):
                        (tmp / PERMISSIONS).write_text(json.dumps(taken, indent=0, sort_keys=True))
                    (tmp / ".inputs.json").write_text(
                        json.dumps({"name": name, "inputs": inputs}, indent=1, sort_keys=True, default=str)
                    )
                    (tmp / ".references").write_text("".join(f"{self.owner_of(r) or r}\n" for r in references))
                    for meta in METADATA:
                        if (tmp / meta).exists():
                            (tmp / meta).chmod(0o644)
                    set_access(tmp, private)
                    os.rename(tmp, final)
                except OSError as exc:
                    raise io_error(f"building {name}", exc, tmp) from None
        return final, True

    @contextlib.contextmanager
    def scratch(self, what: str) -> Iterator[Path]:
        """A private temporary directory in the store, removed afterwards (or by gc once this process is dead)."""
        try:
            path = Path(_tempfile().mkdtemp(prefix=f"{TMP}{self._session_name()}-{what}-", dir=self.root))
        except OSError as exc:
            raise io_error(f"making a temporary directory for {what}", exc, self.root) from None
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)  # nothing left when it became an entry

    def _open_session(self) -> tuple[IO[str], str]:
        """This process's session file, locked until it exits (made under the shared gc lock, so no gc
        sees it unlocked and takes the process for dead)."""
        if self._session is None:
            directory = self.root / ".temproots"
            directory.mkdir(exist_ok=True)
            fd, path = _tempfile().mkstemp(prefix=f"{os.getpid()}-", dir=directory)
            roots = os.fdopen(fd, "w")
            fcntl.flock(roots, fcntl.LOCK_EX)
            weakref.finalize(self, _forget, roots, Path(path))
            self._session = (roots, Path(path).name)
        return self._session

    def _session_name(self) -> str:
        """The name temporaries of this process are named after."""
        with self._lock(".gc", fcntl.LOCK_SH):
            return self._open_session()[1]

    def _protect(self, entry: Path) -> None:
        """Make ``entry`` a temporary root of this process: no gc deletes it (or what it references) while we live.

        Registered under the shared gc lock: a gc running now finishes first (and the caller then finds
        the entry gone, and builds it), a later one reads the root.
        """
        try:
            with self._lock(".gc", fcntl.LOCK_SH):
                roots, _ = self._open_session()
                roots.write(f"{entry.name}\n")
                roots.flush()
        except OSError as exc:
            raise io_error("registering a temporary gc root", exc, self.root) from None

    @contextlib.contextmanager
    def _lock(self, entry: str, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / entry).open("w") as f:
            fcntl.flock(f, mode)
            yield

    def entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if not p.name.startswith("."))

    def permissions(self, entry: Path) -> Permissions:
        """What sealing took from ``entry`` (see :func:`seal`)."""
        path = entry / PERMISSIONS
        return json.loads(path.read_text()) if path.exists() else {}

    def share(self, entry: Path) -> None:
        """Give the private entries ``entry`` uses to the ``microvm`` group, which may be newer than they are."""
        for used in self.closure([entry]):
            if not used.stat().st_mode & stat.S_IXOTH:
                set_access(used, private=True)

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
                tmp = Path(_tempfile().mkdtemp(prefix=f".tmp-recv-{final.name}-", dir=self.root))
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
        link = self.roots_dir / name
        with contextlib.suppress(OSError):
            if os.readlink(link) == str(entry):
                return  # already (a warm `microvm build` then needs no session, so no temporary file)
        self.roots_dir.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f"{TMP}{self._session_name()}-{name}")  # a kill leaves a temporary, no root
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(entry)
        os.replace(tmp, link)

    def roots(self) -> list[Path]:
        if not self.roots_dir.is_dir():
            return []
        links = [link for link in self.roots_dir.iterdir() if link.is_symlink() and not link.name.startswith(".")]
        return [Path(os.readlink(link)) for link in links]

    def live(self, extra_roots: list[Path]) -> set[Path]:
        """Every entry reachable from the recorded roots and ``extra_roots``."""
        return self.closure([owner for r in [*self.roots(), *extra_roots] if (owner := self.owner_of(r))])

    def closure(self, entries: list[Path]) -> set[Path]:
        """``entries`` and every entry they reference, directly or not."""
        return set(self.in_dependency_order(entries))

    def temporary_roots(self, clean: bool) -> list[Path]:
        """The entries other live sessions registered (see :meth:`_protect`); with ``clean``, the files of dead
        ones go. This process's own are left out: its builds are over when it collects garbage."""
        directory = self.root / ".temproots"
        own = self._session[1] if self._session else None
        found: list[Path] = []
        for file in sorted(directory.iterdir()) if directory.is_dir() else []:
            if file.name == own:
                continue
            if _held(file):
                found += [self.root / line for line in file.read_text().splitlines() if line]
            elif clean:
                file.unlink(missing_ok=True)
        return found

    def stale_temporaries(self) -> list[Path]:
        """Temporaries whose session ended without removing them: builds and gcs that were killed.

        An older version named them without a session: those are stale once a day old.
        """
        found = []
        for path in [*self.root.glob(f"{TMP}*"), *self.roots_dir.glob(f"{TMP}*")]:
            session = _session_of(path.name)
            if session is None:
                if time.time() - path.lstat().st_mtime > OLD_TEMPORARY:
                    found.append(path)
            elif session != (self._session and self._session[1]) and not _held(self.root / ".temproots" / session):
                found.append(path)
        return found

    def gc(self, extra_roots: list[Path], dry_run: bool = False) -> list[Path]:
        """Delete every entry no root reaches (nor a running build), and stale temporaries; return the entries
        that were (or would be) deleted."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(".gc"):
            live = self.live([*extra_roots, *self.temporary_roots(clean=not dry_run)])
            dead = [entry for entry in self.entries() if entry not in live]
            if not dry_run:
                _, session = self._open_session()
                for path in [*self.stale_temporaries(), *dead]:
                    # rename first so a half-deleted entry never looks complete
                    doomed = path if path.name.startswith(TMP) else path.with_name(f"{TMP}{session}-gc-{path.name}")
                    try:
                        os.rename(path, doomed)
                        if doomed.is_symlink():  # a root being replaced
                            doomed.unlink()
                        else:
                            shutil.rmtree(doomed)
                    except OSError as exc:
                        raise io_error(f"gc: removing {path.name}", exc, doomed) from None
        return dead


# --- moving entries between stores (microvm copy) -------------------------------
#
# An entry travels as a NAR-like archive of its tree: node type, permission bits
# (sealed ones: a private entry stays private), names (sorted) and contents,
# nothing else (no times, owners or inode order), so the same tree always gives
# the same bytes. Its sha256 is the
# entry's content hash; the sender appends it, the receiver recomputes it from
# what arrived and keeps the entry only if the two agree.

ARCHIVE_MAGIC = b"microvm-archive-1\n"
ENTRY_NAME = re.compile(rf"^[0-9a-f]{{{HASH_LEN}}}-[A-Za-z0-9._+-]+$")
_CHUNK = 1 << 20


def _mode(path: Path, top: bool) -> int:
    """The permission bits an archive carries: sealed ones; the top directory only public (755) or
    private (700: the receiver gives it to its own ``microvm`` group), which differs between hosts."""
    mode = stat.S_IMODE(path.lstat().st_mode) & ~UNSAFE_BITS
    return (0o755 if mode & 0o005 else 0o700) if top else mode


def _archive(path: Path, write: Callable[[bytes], None], top: bool = True) -> None:
    if path.is_symlink():
        target = os.fsencode(os.readlink(path))
        write(b"l %d\n" % len(target) + target)
    elif path.is_dir():
        names = sorted(os.fsencode(n) for n in os.listdir(path))
        write(b"d %o %d\n" % (_mode(path, top), len(names)))
        for name in names:
            write(b"%d\n" % len(name) + name)
            _archive(path / os.fsdecode(name), write, top=False)
    else:
        size = path.stat().st_size
        write(b"f %o %d\n" % (_mode(path, top), size))
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


def _unarchive(reader: _HashingReader, path: Path, top: bool = True) -> None:
    kind, fields = reader.header()
    try:
        if kind == b"l" and len(fields) == 1:
            os.symlink(reader.exact(int(fields[0])), path)
        elif kind == b"d" and len(fields) == 2:
            path.mkdir(exist_ok=path.is_dir())
            path.chmod(0o700)  # until it is complete
            for _ in range(int(fields[1])):
                name = reader.exact(int(reader.line()))
                if b"/" in name or name in (b"", b".", b".."):
                    raise MicrovmError(f"the copy stream has a bad file name {name!r}")
                _unarchive(reader, path / os.fsdecode(name), top=False)
            mode = int(fields[0], 8) & ~UNSAFE_BITS
            if top:
                set_access(path, private=mode != 0o755)
            else:
                path.chmod(mode)
        elif kind == b"f" and len(fields) == 2:
            with path.open("xb") as f:
                left = int(fields[1])
                while left:
                    chunk = reader.exact(min(left, _CHUNK))
                    f.write(chunk)
                    left -= len(chunk)
            path.chmod(int(fields[0], 8) & ~UNSAFE_BITS)
        else:
            raise MicrovmError(f"the copy stream is malformed (node {kind!r})")
    except ValueError as exc:
        raise MicrovmError(f"the copy stream is malformed ({exc})") from exc
