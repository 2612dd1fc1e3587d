"""One way to change the host: a :class:`Plan` of :class:`Change`\\ s, and a :class:`Record` of what was added.

Everything that changes the host (``host apply``, the host network, ``host
network up/down``, the network's restoration at boot) first plans: a list of
changes that each say what they would do (``--dry-run`` prints that) and then
do it. Nothing that is already right is planned, so applying twice changes
nothing the second time.

What must be undone exactly later (a bridge we created, a sysctl we changed
and its old value) is an :class:`Item`: :func:`converge` compares the wanted
items with the host and with the :class:`Record` of what earlier plans added,
and plans adding what is missing and removing what we added before and is no
longer wanted. Only what the record holds is ever removed.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import systemd
from .statedir import switch_link, write_atomic

DEFAULT_UNIT_DIR = systemd.UNIT_DIR


class Change(ABC):
    """One step of a plan."""

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def apply(self) -> None: ...


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)

    def add(self, *changes: Change) -> None:
        self.changes.extend(changes)

    def __bool__(self) -> bool:
        return bool(self.changes)

    def describe(self) -> list[str]:
        return [change.describe() for change in self.changes]

    def apply(self, report: Callable[[str], None] = lambda _: None) -> None:
        """Apply each change in order, reporting it first (a failure leaves the next ones undone)."""
        for change in self.changes:
            report(change.describe())
            change.apply()


@dataclass
class Group(Change):
    """Several changes shown as one line: ``title: first; second``."""

    title: str
    plan: Plan

    def describe(self) -> str:
        return f"{self.title}: " + "; ".join(self.plan.describe())

    def apply(self) -> None:
        self.plan.apply()


# --- files and systemd -------------------------------------------------------------


@dataclass
class WriteFile(Change):
    path: Path
    content: str
    mode: int | None = None  # None: as the umask says

    def describe(self) -> str:
        return f"{'update' if self.path.exists() else 'write'} {self.path}"

    def apply(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, self.content, self.mode)


@dataclass
class RemoveFile(Change):
    path: Path

    def describe(self) -> str:
        return f"remove {self.path}"

    def apply(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.path.parent.name.endswith(".d") and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()


@dataclass
class Link(Change):
    path: Path
    target: Path

    def describe(self) -> str:
        return f"link {self.path} -> {self.target}"

    def apply(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        switch_link(self.path, self.target)


@dataclass
class Systemctl(Change):
    args: tuple[str, ...]
    why: str = ""
    check: bool = True

    def describe(self) -> str:
        return f"systemctl {' '.join(self.args)}" + (f" ({self.why})" if self.why else "")

    def apply(self) -> None:
        systemd.systemctl(*self.args, check=self.check)


def write_if_changed(path: Path, content: str, mode: int | None = None) -> list[Change]:
    """Writing ``content`` to ``path`` (with ``mode``), unless it holds that already."""
    same = path.exists() and path.read_text() == content and mode in (None, path.stat().st_mode & 0o7777)
    return [] if same else [WriteFile(path, content, mode)]


WANTS = "multi-user.target.wants"


def unit_file_changes(unit_dir: Path, wanted: dict[str, str], enable: list[str], stale: list[Path]) -> list[Change]:
    """Write the unit files that differ, remove the ``stale`` ones not wanted, enable ``enable`` at boot."""
    changes: list[Change] = []
    for rel, content in wanted.items():
        changes += write_if_changed(unit_dir / rel, content)
    for path in stale:
        if str(path.relative_to(unit_dir)) not in wanted:
            changes.append(RemoveFile(path))
            if (wants := unit_dir / WANTS / path.name).is_symlink():
                changes.append(RemoveFile(wants))
    for name in enable:
        link = unit_dir / WANTS / name
        if not link.is_symlink() or Path(os.readlink(link)) != unit_dir / name:
            changes.append(Link(link, unit_dir / name))
    return changes


def activation_changes(
    files: list[Change], services: Iterable[str], why: str, stop_prefix: str | tuple[str, ...]
) -> list[Change]:
    """After ``files`` changed units: reload systemd, stop removed ``stop_prefix*`` units (one prefix of several),
    start ``services`` not running, restart those whose unit changed.

    Only for the host's own systemd (the caller knows it runs and the units are its).
    """
    changes: list[Change] = [Systemctl(("daemon-reload",))] if files else []
    removed = dict.fromkeys(c.path.name for c in files if isinstance(c, RemoveFile))  # a unit and its wants link
    for name in removed:
        if name.startswith(stop_prefix) and systemd.is_active_unit(name):
            changes.append(Systemctl(("stop", name), "no longer declared"))
    for name in services:
        if not systemd.is_active_unit(name):
            changes.append(Systemctl(("start", name), why))
        elif any(isinstance(c, WriteFile) and c.path.name == name for c in files):
            changes.append(Systemctl(("restart", name), "its unit changed"))
    return changes


# --- items: host state added so that it can be removed exactly ------------------------


class Item(ABC):
    """One piece of host state a plan adds; ``key`` names it in the :class:`Record`.

    Items are dataclasses: the record keeps their fields to remove them later, maybe in another process.
    """

    @property
    @abstractmethod
    def key(self) -> str: ...

    @abstractmethod
    def present(self) -> bool: ...

    @abstractmethod
    def add(self) -> Any:
        """Make it so; return what :meth:`remove` needs to undo exactly this (JSON)."""

    @abstractmethod
    def remove(self, undo: Any) -> None: ...


class Record:
    """A JSON file: what plans added (``items``: key -> the item and its undo, in the order added) and settings.

    It is read and written at each change, so that a plan that fails half-way leaves a record of what it did.
    """

    def __init__(self, path: Path, types: Iterable[type[Item]]) -> None:
        self.path = path
        self.types = {cls.__name__: cls for cls in types}

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data, indent=1) + "\n")  # item order is the undo order

    def items(self) -> dict[str, tuple[Item, Any]]:
        """Key -> (item, undo) of everything recorded as added, oldest first."""
        found = {}
        for key, entry in self.read().get("items", {}).items():
            fields = dict(entry["item"])
            found[key] = (self.types[fields.pop("type")](**fields), entry.get("undo"))
        return found

    def added(self, item: Item, undo: Any) -> None:
        data = self.read()
        items = data.setdefault("items", {})
        # a pre-existing value we changed keeps its first undo (the state before we ever touched it)
        previous = items.get(item.key, {}).get("undo")
        items[item.key] = {
            "item": {"type": type(item).__name__, **asdict(item)},  # type: ignore[call-overload]
            "undo": previous if previous is not None else undo,
        }
        self.write(data)

    def removed(self, key: str) -> None:
        data = self.read()
        data.get("items", {}).pop(key, None)
        self.write(data)


@dataclass
class Add(Change):
    item: Item
    record: Record = field(repr=False)

    def describe(self) -> str:
        return f"add {self.item.key}"

    def apply(self) -> None:
        self.record.added(self.item, self.item.add())


@dataclass
class Remove(Change):
    item: Item
    undo: Any
    record: Record = field(repr=False)

    def describe(self) -> str:
        return f"remove {self.item.key}"

    def apply(self) -> None:
        self.item.remove(self.undo)
        self.record.removed(self.item.key)


def converge(wanted: Iterable[Item], record: Record) -> list[Change]:
    """Remove what the record holds and is no longer wanted (newest first: addresses before their bridge),
    then add what is wanted and not present."""
    want = {item.key: item for item in wanted}
    ours = record.items()
    changes: list[Change] = [
        Remove(item, undo, record) for key, (item, undo) in reversed(ours.items()) if key not in want
    ]
    changes += [Add(item, record) for item in want.values() if not item.present()]
    return changes
