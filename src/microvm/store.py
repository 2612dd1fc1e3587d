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
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
            import tempfile  # here for start-up speed: the commands that only read the store never add to it

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
