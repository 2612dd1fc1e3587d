"""``microvm copy``: a store entry's closure to or from another host, only what it lacks."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import MicrovmError
from ..host.statedir import VMState
from ..store import Store
from .ssh import Remote


@dataclass
class Copied:
    entries: list[str]  # names of the entries sent, references first
    total: int  # entries in the closure
    bytes: int  # archive bytes sent


def resolve(ref: str, store: Store) -> Path:
    """A store path (or a path inside an entry), else the current runner of the installed VM named ``ref``."""
    if "/" in ref:
        if (entry := store.owner_of(Path(ref))) is None or not entry.exists():
            raise MicrovmError(f"{ref} is not in the store {store.root}")
        return entry
    current = VMState.of(ref).current_or_refuse("a store path")
    return store.owner_of(current) or current


def check_root(store: Store, root: str) -> None:
    """Entries refer to each other by absolute path: both stores must be at the same place."""
    if Path(root) != store.root:
        raise MicrovmError(
            f"the stores differ: {root} there, {store.root} here; entries name their references by path",
            hint="set MICROVM_STORE to the same directory on both hosts",
        )


def closure_names(store: Store, ref: str) -> list[str]:
    return [entry.name for entry in store.in_dependency_order([resolve(ref, store)])]


def remote_lacks(remote: Remote, store: Store, entries: list[Path]) -> list[str]:
    """The names of ``entries`` (a closure) that ``remote``'s store lacks."""
    names = "".join(f"{e.name}\n" for e in entries)
    return json.loads(remote.run("store", "missing", "--root", str(store.root), input=names))


def copy_to(remote: Remote, ref: str, store: Store) -> Copied:
    entries = store.in_dependency_order([resolve(ref, store)])
    wanted = set(remote_lacks(remote, store, entries))
    todo = [entry for entry in entries if entry.name in wanted]
    sent = 0
    if todo:
        receiver = remote.spawn("store", "receive", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert receiver.stdin is not None and receiver.stderr is not None
        try:
            sent = store.send(todo, receiver.stdin)
            receiver.stdin.close()
        except BrokenPipeError:
            pass  # the receiver stopped: its error says why
        finally:
            error = receiver.stderr.read().decode(errors="replace")
            returncode = receiver.wait()
        if returncode != 0:
            raise remote.failure(returncode, error, ["store receive"])
    return Copied([entry.name for entry in todo], len(entries), sent)


def copy_from(remote: Remote, ref: str, store: Store) -> Copied:
    answer = json.loads(remote.run("store", "closure", ref))
    check_root(store, answer["root"])
    todo = store.missing(answer["entries"])
    if not todo:
        return Copied([], len(answer["entries"]), 0)
    sender = remote.spawn("store", "send", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert sender.stdin is not None and sender.stdout is not None and sender.stderr is not None
    sender.stdin.write("".join(f"{name}\n" for name in todo).encode())
    sender.stdin.close()
    counted = _Counting(sender.stdout)
    try:
        store.receive(counted)  # type: ignore[arg-type]
    except MicrovmError:
        sender.kill()
        error = sender.stderr.read().decode(errors="replace")
        if sender.wait() not in (0, -9):
            raise remote.failure(sender.returncode, error, ["store send"]) from None
        raise
    sender.wait()
    return Copied(todo, len(answer["entries"]), counted.count)


class _Counting:
    """A readable stream that counts the bytes read through it."""

    def __init__(self, stream) -> None:
        self.stream, self.count = stream, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        data = self.stream.readline(limit)
        self.count += len(data)
        return data
