"""What `list` prints: the table's columns and alignment, its colours (as microvm.nix's `microvm -l`), uptimes."""

from __future__ import annotations

import re

from microvm.cli.show import table, uptime
from microvm.host.lifecycle import Status

ANSI = re.compile(r"\033\[[0-9;]*m")


def test_uptime_shows_two_units() -> None:
    assert [uptime(s) for s in (None, 0, 42, 303, 7503, 3 * 86400 + 4 * 3600 + 59)] == [
        "-", "0s", "42s", "5m03s", "2h05m", "3d04h",
    ]  # fmt: skip


def test_table_colours_do_not_change_the_layout() -> None:
    vms = [
        Status("db", True, True, "current", hypervisor="qemu", vcpu=2, mem=1024, uptime=90, addresses=["10.0.0.3"]),
        Status("web-long-name", False, False, "outdated", "rebuild and reboot", "microvm -Ru web-long-name"),
    ]
    plain, coloured = table(vms, colour=False), table(vms, colour=True)
    assert ANSI.sub("", coloured) == plain and "\033[" not in plain
    lines = plain.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "HYPERVISOR", "VCPU", "MEM", "ADDRESSES", "UPTIME", "NEXT"]
    assert [line.index("STATE" if i == 0 else line.split()[1]) for i, line in enumerate(lines)] == [15, 15, 15]
    assert re.split(r"\s{2,}", lines[2]) == [
        "web-long-name",
        "outdated",
        "-",
        "-",
        "-",
        "-",
        "-",
        "microvm -Ru web-long-name",
    ]
    db, web = coloured.splitlines()[1:]
    assert db.startswith("\033[32mdb\033[0m") and "\033[32mcurrent\033[0m" in db  # runs: green; current: green
    assert web.startswith("\033[31mweb-long-name\033[0m") and "\033[31moutdated\033[0m" in web  # red
    assert "\033[1mmicrovm -Ru web-long-name\033[0m" in web
