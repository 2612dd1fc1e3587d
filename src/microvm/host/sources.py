"""Sources: where installed VMs are defined and rebuilt from (microvm.nix's flakes).

A source is a directory or a git repository (``git+file:///path?ref=branch``;
without ``ref`` the repository's HEAD). It defines VMs by name: VM ``NAME`` is
``<source>/NAME/vm.toml`` or else ``<source>/NAME.toml``.

Each build records a *fingerprint* of what defined the VM: for a git source the
commit, for a directory a hash of every file the VM was loaded from (its
imports included). ``microvm list`` recomputes it cheaply to tell a VM whose
source changed (outdated) without evaluating or building anything.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import parse_qs, urlsplit

from .. import proc
from ..errors import MicrovmError
from ..layout import read_small
from ..store import Store
from .statedir import installed_configs

if TYPE_CHECKING:
    from ..config import LoadedVM

DEFAULT_SOURCE = "/etc/microvm"


class Source(NamedTuple):  # not a dataclass: see microvm.host.statedir.VMState
    """A parsed source: a directory, or a git repository at a ref."""

    url: str
    path: Path
    ref: str | None = None  # set for git sources ("HEAD" when the URL names none)

    @property
    def is_git(self) -> bool:
        return self.ref is not None

    @classmethod
    def parse(cls, text: str) -> Source:
        if text.startswith("git+"):
            parts = urlsplit(text[len("git+") :])
            if parts.scheme != "file":
                raise MicrovmError(
                    f"unsupported source {text!r}", hint="use a directory or git+file:///path?ref=branch"
                )
            query = parse_qs(parts.query)
            ref = query.get("ref", ["HEAD"])[0]
            return cls(f"git+file://{parts.path}" + (f"?ref={ref}" if "ref" in query else ""), Path(parts.path), ref)
        if "://" in text:
            raise MicrovmError(f"unsupported source {text!r}", hint="use a directory or git+file:///path?ref=branch")
        path = Path(text).absolute()
        return cls(str(path), path)

    def commit(self) -> str:
        """The commit the git ref points at now."""
        result = proc.run(["git", "-C", self.path, "rev-parse", "--verify", f"{self.ref}^{{commit}}"], check=False)
        if result.returncode != 0:
            raise MicrovmError(f"source {self.url}: cannot resolve {self.ref!r}: {result.stderr.strip()}")
        return result.stdout.strip()

    @contextlib.contextmanager
    def checkout(self, store: Store) -> Iterator[tuple[Path, str | None]]:
        """The source's files as a directory (a git ref is exported to scratch space in the store, which gc
        collects if we are killed), and its commit."""
        if not self.is_git:
            if not self.path.is_dir():
                raise MicrovmError(f"source {self.url} is not a directory")
            yield self.path, None
            return
        import tarfile  # here for start-up speed: `list` and `status` import this module and never check out

        commit = self.commit()
        with store.scratch("source") as tmp:
            archive = tmp / "source.tar"
            proc.run(["git", "-C", self.path, "archive", "--format=tar", f"--output={archive}", commit])
            tree = tmp / "tree"
            with tarfile.open(archive) as tar:
                tar.extractall(tree, filter="data")
            yield tree, commit


def vm_file(root: Path, name: str, url: str) -> Path:
    """Where ``name`` is defined in a source's files."""
    candidates = [root / name / "vm.toml", root / f"{name}.toml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MicrovmError(
        f"source {url} defines no VM {name!r}",
        hint="expected " + " or ".join(str(c.relative_to(root)) for c in candidates),
    )


def files_digest(files: list[Path]) -> str:
    """Hash of the files' names and contents (a missing file counts as changed)."""
    h = hashlib.sha256()
    for file in sorted(files):
        h.update(str(file).encode() + b"\0")
        try:
            h.update(read_small(file))
        except FileNotFoundError:  # not file.exists(): `list` hashes every VM's files, one system call less
            h.update(b"\0missing\0")
    return h.hexdigest()[:32]


def files_fingerprint(files: list[Path]) -> dict[str, str | list[str]]:
    return {"files": [str(f) for f in files], "digest": files_digest(files)}


class Evaluated(NamedTuple):
    """A VM loaded from a source, with the fingerprint to record."""

    loaded: LoadedVM
    fingerprint: dict[str, str | list[str]]


@contextlib.contextmanager
def evaluate(source: Source, name: str, store: Store, state_dir: Path | None = None) -> Iterator[Evaluated]:
    """Load VM ``name`` (to live in ``state_dir``) from ``source``; the files stay available while the context is open (for the build)."""
    with source.checkout(store) as (root, commit):
        from ..config import load_vm  # late on purpose: pydantic; list and status import this module

        loaded = load_vm(vm_file(root, name, source.url), name=name, installed=installed_configs(), state_dir=state_dir)
        yield Evaluated(loaded, {"commit": commit} if commit is not None else files_fingerprint(loaded.files))


def changed_since(source_url: str | None, fingerprint: dict) -> bool | None:
    """Whether the source (None: the files of a declared VM) changed since ``fingerprint``; None when unknown.

    No fingerprint (the VM was built from another source than the one recorded) counts as changed.
    """
    if not fingerprint:
        return True
    try:
        # a directory source (the usual) needs no parsing: `list` asks this of every VM
        source = (
            Source.parse(source_url) if source_url and ("://" in source_url or source_url.startswith("git+")) else None
        )
        if source is not None and source.is_git:
            return source.commit() != fingerprint.get("commit")
    except MicrovmError:
        return None
    files = [Path(f) for f in fingerprint.get("files", [])]
    return files_digest(files) != fingerprint.get("digest") if files else None
