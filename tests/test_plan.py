"""The one plan/apply type for changes to the host (microvm.host.plan), on real files, and the network's wanted items."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from microvm.host.network.items import Address, Bridge, File, NftTable, Sysctl
from microvm.host.network.planning import desired_items, nft_ruleset
from microvm.host.plan import (
    Change,
    Group,
    Item,
    Link,
    Plan,
    Record,
    Remove,
    RemoveFile,
    Systemctl,
    WriteFile,
    activation_changes,
    converge,
    unit_file_changes,
)
from microvm.host.unitfile import HEADER, generated
from microvm.model.options import HostConfig


@dataclass(frozen=True)
class Setting(Item):
    """A file holding a value: what the record must give back exactly as it was before we changed it."""

    path: str
    value: str

    @property
    def key(self) -> str:
        return f"setting {Path(self.path).name} = {self.value}"

    def present(self) -> bool:
        return Path(self.path).exists() and Path(self.path).read_text() == self.value

    def add(self) -> Any:
        before = Path(self.path).read_text() if Path(self.path).exists() else None
        Path(self.path).write_text(self.value)
        return before

    def remove(self, undo: Any) -> None:
        if undo is None:
            Path(self.path).unlink()
        else:
            Path(self.path).write_text(undo)


@dataclass
class Append(Change):
    """Appends to a list (or fails): enough to see the order and the stop at a failure."""

    log: list[str]
    word: str

    def describe(self) -> str:
        return f"append {self.word}"

    def apply(self) -> None:
        if self.word == "fail":
            raise OSError("no")
        self.log.append(self.word)


def test_plan_reports_each_change_before_applying_it_and_stops_at_a_failure() -> None:
    log: list[str] = []
    plan = Plan([Append(log, "a"), Append(log, "fail"), Append(log, "c")])
    assert plan.describe() == ["append a", "append fail", "append c"]
    with pytest.raises(OSError):
        plan.apply(lambda line: log.append(f"({line})"))
    assert log == ["(append a)", "a", "(append fail)"]
    assert not Plan() and plan


def test_group_is_one_line_and_applies_its_changes() -> None:
    log: list[str] = []
    group = Group("network", Plan([Append(log, "a"), Append(log, "b")]))
    assert group.describe() == "network: append a; append b"
    group.apply()
    assert log == ["a", "b"]


def test_converge_adds_removes_and_restores_exactly_what_it_changed(tmp_path: Path) -> None:
    theirs, new = tmp_path / "theirs", tmp_path / "new"
    theirs.write_text("0")  # a value that was there before us
    record = Record(tmp_path / "record.json", [Setting])
    one, two = Setting(str(theirs), "1"), Setting(str(new), "x")

    plan = Plan(converge([one, two], record))
    assert plan.describe() == ["add setting theirs = 1", "add setting new = x"]
    plan.apply()
    assert (theirs.read_text(), new.read_text()) == ("1", "x")
    assert converge([one, two], record) == []  # applied: nothing left to do

    # another process reads the record back: the items and how to undo them
    again = Record(tmp_path / "record.json", [Setting])
    assert again.items() == {one.key: (one, "0"), two.key: (two, None)}

    # not wanted any more: removed newest first, each as it was before
    removals = converge([], again)
    assert [type(c) for c in removals] == [Remove, Remove]
    assert [c.describe() for c in removals] == ["remove setting new = x", "remove setting theirs = 1"]
    Plan(removals).apply()
    assert theirs.read_text() == "0" and not new.exists()
    assert json.loads(record.path.read_text())["items"] == {}


def test_a_value_changed_again_keeps_the_first_undo(tmp_path: Path) -> None:
    """A value someone else changed after us is set again, and still goes back to what it was before we came."""
    target = tmp_path / "value"
    target.write_text("original")
    record = Record(tmp_path / "record.json", [Setting])
    wanted = [Setting(str(target), "ours")]
    Plan(converge(wanted, record)).apply()
    target.write_text("someone else's")
    again = converge(wanted, record)
    assert [c.describe() for c in again] == ["add setting value = ours"]
    Plan(again).apply()
    Plan(converge([], record)).apply()
    assert target.read_text() == "original"


def test_an_item_already_there_is_not_added_nor_recorded(tmp_path: Path) -> None:
    """Only what a plan added is ever removed: state that was already right stays the user's."""
    there = tmp_path / "there"
    there.write_text("v")
    record = Record(tmp_path / "record.json", [Setting])
    assert converge([Setting(str(there), "v")], record) == []
    assert record.items() == {}


def test_unit_file_changes_write_remove_stale_and_enable(tmp_path: Path) -> None:
    units = tmp_path / "units"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "old.service").write_text(HEADER + "[Unit]\n")
    (units / "multi-user.target.wants/old.service").symlink_to(units / "old.service")
    (units / "user.service").write_text("[Unit]\n")  # not ours: no header
    stale = generated(units, "*.service")
    assert stale == [units / "old.service"]

    changes = unit_file_changes(units, {"new.service": HEADER + "[Unit]\n"}, enable=["new.service"], stale=stale)
    assert changes == [
        WriteFile(units / "new.service", HEADER + "[Unit]\n"),
        RemoveFile(units / "old.service"),
        RemoveFile(units / "multi-user.target.wants/old.service"),
        Link(units / "multi-user.target.wants/new.service", units / "new.service"),
    ]
    Plan(changes).apply()
    assert sorted(p.name for p in units.rglob("*")) == [
        "multi-user.target.wants",
        "new.service",
        "new.service",
        "user.service",
    ]
    assert (
        unit_file_changes(units, {"new.service": HEADER + "[Unit]\n"}, ["new.service"], generated(units, "*.service"))
        == []
    )


def test_activation_without_systemd_starts_what_is_not_running(tmp_path: Path) -> None:
    """No systemd here (PID 1 is not systemd): no unit is active, so every service is to be started."""
    files: list[Change] = [WriteFile(tmp_path / "a.service", "")]
    assert activation_changes(files, ["a.service"], "host network", "a") == [
        Systemctl(("daemon-reload",)),
        Systemctl(("start", "a.service"), "host network"),
    ]
    assert activation_changes([], [], "", "a") == []


def test_the_network_wants_items_for_what_the_host_file_enables(tmp_path: Path) -> None:
    host = HostConfig.model_validate({"network": {"basic": {"enable": True}, "nat": {"enable": True}}})
    items = desired_items(host, tmp_path)
    assert [type(i) for i in items] == [Bridge, Address, Address, Sysctl, Sysctl, NftTable, File]
    assert [i.key for i in items[:3]] == [
        "bridge microvm",
        "address 10.213.0.1/24 on microvm",
        "address fd12:3456:789a::1/64 on microvm",
    ]
    assert 'iifname "microvm" oifname != "microvm" masquerade' in nft_ruleset(host)
    assert desired_items(HostConfig(), tmp_path) == []
