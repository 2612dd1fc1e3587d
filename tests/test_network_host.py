"""The host side of networking, for real, inside network namespaces the tests create.

`microvm host network up|down` (bridge, addresses, forwarding, our own
nftables table, dnsmasq) and the runner's `bin/tap-up`/`tap-down`/
`macvtap-up`/`macvtap-down`. Nothing here touches the machine's own namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import guest_for, microvm_in, snapshot, write_vm

from microvm.config import vm_config
from microvm.hypervisors import get
from microvm.model.options import HostConfig
from microvm.runner.script import runner_files

HOST = """
[network.basic]
enable = true
[network.nat]
enable = true
"""


def write_runner(directory: Path, microvm: dict, guest: dict | None = None) -> Path:
    """The runner files of a qemu VM (no store, no kernel): enough for tap-up and friends."""
    vm = vm_config({"microvm": microvm, "guest": guest or {"hostName": "t", "arch": "x86_64"}})
    spec = get("qemu").runner(vm, guest_for("qemu"))
    for rel, (content, mode) in runner_files(vm, get("qemu"), spec, directory, None).items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
    return directory


def test_up_is_idempotent_and_down_restores_the_namespace(ns, tmp_path: Path) -> None:
    host = write_vm(tmp_path, HOST, "host.toml")
    # something that is not ours: another table and a changed sysctl must survive both ways
    ns.run("nft", "add", "table", "ip", "theirs")
    ns.run("sysctl", "-w", "net.ipv6.conf.all.forwarding=1")
    before = snapshot(ns)

    first = microvm_in(ns, "host", "network", "up", str(host)).stdout
    assert "add bridge microvm" in first and "start dnsmasq on microvm" in first
    addresses = ns.run("ip", "-o", "address", "show", "dev", "microvm").stdout
    assert "10.213.0.1/24" in addresses and "fd12:3456:789a::1/64" in addresses
    ruleset = ns.run("nft", "list", "ruleset").stdout
    assert "table inet microvm_nat" in ruleset and "masquerade" in ruleset and "table ip theirs" in ruleset
    assert ns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert "dnsmasq" in {Path(f"/proc/{pid}/comm").read_text().strip() for pid in ns.pids()}

    plan = microvm_in(ns, "host", "network", "up", "--dry-run", str(host)).stdout
    assert plan == "", plan  # nothing left to do

    up = snapshot(ns)
    plan = microvm_in(ns, "host", "network", "down", "--dry-run", str(host)).stdout
    assert "would stop dnsmasq on microvm" in plan and "would remove bridge microvm" in plan, plan
    # the bridge's timers (gc_timer) tick meanwhile: the rest must not change
    assert {k: v for k, v in snapshot(ns).items() if k != "links"} == {k: v for k, v in up.items() if k != "links"}
    assert (tmp_path / "state" / ".network.json").exists()

    microvm_in(ns, "host", "network", "down", str(host))
    assert snapshot(ns) == before
    assert not (tmp_path / "state" / ".network.json").exists()


def test_restore_at_boot_applies_the_recorded_network_again(ns, tmp_path: Path) -> None:
    """What microvm-network.service runs: after a reboot the bridge, NAT table and sysctl are back as recorded."""
    host = write_vm(tmp_path, HOST, "host.toml")
    before = snapshot(ns)
    microvm_in(ns, "host", "network", "up", str(host))
    # a reboot: the kernel's state is gone, the record in the state directory stays
    ns.run("ip", "link", "del", "microvm")
    ns.run("nft", "delete", "table", "inet", "microvm_nat")
    ns.run("sysctl", "-w", "net.ipv4.ip_forward=0")
    restored = ns.run(sys.executable, "-m", "microvm.helpers", "network-restore", str(tmp_path / "state")).stdout
    assert "add bridge microvm" in restored and "add nftables table inet microvm_nat" in restored, restored
    assert "10.213.0.1/24" in ns.run("ip", "-o", "address", "show", "dev", "microvm").stdout
    assert "microvm_nat" in ns.run("nft", "list", "ruleset").stdout
    assert ns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    microvm_in(ns, "host", "network", "down", str(host))
    assert snapshot(ns) == before  # the sysctl's first value is still what it goes back to


def test_a_changed_config_removes_exactly_what_it_no_longer_asks_for(ns, tmp_path: Path) -> None:
    host = write_vm(tmp_path, HOST, "host.toml")
    microvm_in(ns, "host", "network", "up", str(host))
    # the user added an address to our bridge by hand: not ours, so it stays
    ns.run("ip", "address", "add", "192.0.2.1/24", "dev", "microvm")
    host.write_text(HOST.replace("[network.nat]\nenable = true", "[network.nat]\nenable = false"))
    changes = microvm_in(ns, "host", "network", "up", str(host)).stdout
    assert "remove nftables table inet microvm_nat" in changes
    assert "remove bridge" not in changes
    assert "microvm_nat" not in ns.run("nft", "list", "ruleset").stdout
    assert ns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    assert "192.0.2.1/24" in ns.run("ip", "-o", "address", "show", "dev", "microvm").stdout
    microvm_in(ns, "host", "network", "down", str(host))
    assert "microvm" not in ns.run("ip", "-o", "link", "show").stdout


def test_pure_layer2_bridge_onto_a_port(ns, tmp_path: Path) -> None:
    """No addresses, no DHCP, no NAT: the bridge only joins the VMs' taps to a NIC or VLAN interface.

    The port here is one end of a veth pair (this machine's kernel has no dummy or vlan driver).
    """
    ns.run("ip", "link", "add", "nic0", "type", "veth", "peer", "name", "nic0-peer")
    before = snapshot(ns)
    host = write_vm(
        tmp_path,
        """
        [network.basic]
        enable = true
        name = "br-lan"
        ipv4Subnet = false
        ipv6Prefix = false
        ports = ["nic0"]
        """,
        "host.toml",
    )
    changes = microvm_in(ns, "host", "network", "up", str(host)).stdout
    assert changes.splitlines() == [
        "add bridge br-lan",
        "add nic0 on bridge br-lan",
        "record the tap settings for bin/tap-up",
    ]
    assert "master br-lan" in ns.run("ip", "-d", "link", "show", "nic0").stdout
    assert "inet" not in ns.run("ip", "-o", "address", "show", "dev", "br-lan").stdout.replace("inet6 fe80", "")
    assert ns.pids() == []  # no dnsmasq: nothing to serve
    microvm_in(ns, "host", "network", "down", str(host))
    assert snapshot(ns) == before


def test_tap_up_makes_persistent_taps_with_matching_queue_mode(ns, tmp_path: Path) -> None:
    host = write_vm(tmp_path, HOST, "host.toml")
    microvm_in(ns, "host", "network", "up", str(host))
    state = tmp_path / "state" / "t"
    state.mkdir(parents=True)
    os.chown(state, 65534, 65534)  # the hypervisor's user owns the state dir; the taps become its own
    single = write_runner(
        tmp_path / "r1", {"vcpu": 1, "interfaces": [{"type": "tap", "id": "vm7", "mac": "02:00:00:01:00:07"}]}
    )
    multi = write_runner(
        tmp_path / "r2",
        {"vcpu": 2, "interfaces": [{"type": "tap", "id": "vm8", "mac": "02:00:00:01:00:08"}]},
    )
    for runner in (single, multi):
        ns.run(str(runner / "bin/tap-up"), cwd=state)
    vm7 = ns.run("ip", "-d", "link", "show", "vm7").stdout
    vm8 = ns.run("ip", "-d", "link", "show", "vm8").stdout
    for details in (vm7, vm8):
        assert "master microvm" in details and "persist on" in details and "vnet_hdr on" in details
        assert "user nobody" in details
    assert "multi_queue" not in vm7 and "multi_queue" in vm8
    # the tap script ran: the tap is administratively up
    assert "UP" in ns.run("ip", "-o", "link", "show", "vm7").stdout.split(">")[0]
    # up again replaces our stale tap instead of failing
    ns.run(str(single / "bin/tap-up"), cwd=state)
    for runner in (single, multi):
        ns.run(str(runner / "bin/tap-down"), cwd=state)
    assert "vm7" not in ns.run("ip", "-o", "link", "show").stdout
    microvm_in(ns, "host", "network", "down", str(host))


def test_tap_up_never_deletes_an_interface_that_is_not_a_tap(ns, tmp_path: Path) -> None:
    ns.run("ip", "link", "add", "vm9", "type", "veth", "peer", "name", "vm9-peer")
    before = snapshot(ns)
    taps = [
        {"type": "tap", "id": "vm8", "mac": "02:00:00:01:00:08"},
        {"type": "tap", "id": "vm9", "mac": "02:00:00:01:00:09"},
    ]
    runner = write_runner(tmp_path / "r", {"interfaces": taps})
    result = ns.run(str(runner / "bin/tap-up"), cwd=tmp_path, check=False)
    assert result.returncode != 0 and "vm9 exists on this host and is not a tun interface" in result.stderr
    # the veth is untouched, and the tap made before the failure is gone again
    assert snapshot(ns) == before


def test_macvtap_up_hands_the_device_to_the_hypervisor_user(ns, tmp_path: Path) -> None:
    ns.run("ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0-peer")
    ns.run("ip", "link", "set", "lan0", "up")
    runner = write_runner(
        tmp_path / "r",
        {
            "user": "nobody",
            "interfaces": [
                {
                    "type": "macvtap",
                    "id": "mvt0",
                    "mac": "02:00:00:00:00:aa",
                    "macvtap": {"link": "lan0", "mode": "bridge"},
                }
            ],
        },
    )
    ns.run(str(runner / "bin/macvtap-up"), cwd=tmp_path)
    details = ns.run("ip", "-d", "link", "show", "mvt0").stdout
    assert "macvtap mode bridge" in details and "02:00:00:00:00:aa" in details
    index = ns.run("cat", "/sys/class/net/mvt0/ifindex").stdout.strip()
    assert os.stat(f"/dev/tap{index}").st_uid == 65534
    ns.run(str(runner / "bin/macvtap-down"), cwd=tmp_path)
    assert "mvt0" not in ns.run("ip", "-o", "link", "show").stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_network_units_verify(tmp_path: Path) -> None:
    """The boot-time restoration of the bridge and the bridge's dnsmasq."""
    from microvm.host import network

    host = HostConfig.model_validate({"network": {"basic": {"enable": True}, "nat": {"enable": True}}})
    units = network.network_units(host, tmp_path / "state")
    assert list(units) == ["microvm-network.service", "microvm-dnsmasq-microvm.service"]
    assert f"microvm.helpers network-restore {tmp_path / 'state'}" in units["microvm-network.service"]
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in units)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "--no-ping" in units["microvm-dnsmasq-microvm.service"]
    assert "--conf-file=/dev/null" in units["microvm-dnsmasq-microvm.service"]


ROUTED_HOST = """
[network.routed]
enable = true
[network.nat]
enable = true
"""


def test_routed_tap_gets_host_addresses_and_a_route_per_vm_address(ns, tmp_path: Path) -> None:
    host = write_vm(tmp_path, ROUTED_HOST, "host.toml")
    before = snapshot(ns)
    runner = tmp_path / "r"
    vm = vm_config(
        {"guest": {"hostName": "rt", "network": {"base": {"enable": True, "n": 3, "routed": {"enable": True}}}}}
    )
    write_runner(runner, vm.microvm.dump(), vm.guest.dump())
    # not applied on the host yet: a clear error, no tap left behind
    result = ns.run(str(runner / "bin/tap-up"), cwd=tmp_path, check=False)
    assert result.returncode != 0 and "network.routed" in result.stderr
    assert "rvm3" not in ns.run("ip", "-o", "link", "show").stdout
    microvm_in(ns, "host", "network", "up", str(host))
    assert "ip saddr 10.214.0.0/24" in ns.run("nft", "list", "table", "inet", "microvm_nat").stdout
    ns.run(str(runner / "bin/tap-up"), cwd=tmp_path)
    addresses = ns.run("ip", "-o", "address", "show", "dev", "rvm3").stdout
    assert "10.214.0.1/32" in addresses and "fd12:3456:789b::1/128" in addresses
    routes = (
        ns.run("ip", "route", "show", "dev", "rvm3").stdout + ns.run("ip", "-6", "route", "show", "dev", "rvm3").stdout
    )
    assert "10.214.0.5 " in routes and "fd12:3456:789b::5 " in routes
    assert "master" not in ns.run("ip", "-o", "link", "show", "rvm3").stdout
    ns.run(str(runner / "bin/tap-down"), cwd=tmp_path)
    microvm_in(ns, "host", "network", "down", str(host))
    assert snapshot(ns) == before
