"""guest.network.interfaces details: an interface named by its MAC, link-local addressing and RA off."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import BOOT_TIMEOUT, build_file, write_vm

from microvm.store import Store

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]


def test_busybox_guest_renames_by_mac_and_leaves_link_local_off(shared_store: Store, ns, tmp_path: Path) -> None:
    file = write_vm(
        tmp_path / "vm",
        """
        [guest]
        hostName = "netname"
        shell = false
        commands = [
          'echo "links: $(ls /sys/class/net | tr "\\n" " ")"',
          'echo "v6 on uplink0: $(ip -6 addr show dev uplink0 | grep -c inet6) on lan0: $(ip -6 addr show dev lan0 | grep -c fe80)"',
          'echo "ra on uplink0: $(cat /proc/sys/net/ipv6/conf/uplink0/accept_ra)"',
          "poweroff",
        ]
        [[microvm.interfaces]]
        type = "user"
        id = "first"
        mac = "02:00:00:00:10:01"
        [[microvm.interfaces]]
        type = "user"
        id = "second"
        mac = "02:00:00:00:10:02"
        [guest.network.interfaces.first]   # nothing leaves the guest on it
        name = "uplink0"
        dhcp = false
        acceptRA = false
        linkLocal = false
        [guest.network.interfaces.second]
        name = "lan0"
        dhcp = false
        [microvm]
        mem = 256
        """,
    )
    built = build_file(shared_store, file)
    state = tmp_path / "state"
    state.mkdir()
    result = ns.run(str(built.run), cwd=state, timeout=BOOT_TIMEOUT, check=False)
    console = (state / "netname-console.log").read_text(errors="replace")
    assert result.returncode == 0, console + result.stderr
    assert "links: lan0 lo uplink0 " in console
    assert "v6 on uplink0: 0 on lan0: 1" in console
    assert "ra on uplink0: 0" in console
