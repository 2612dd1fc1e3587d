"""The host network for VMs: a bridge with addresses, DHCP and router advertisements, NAT, per-VM addresses.

Our version of the wrapper module's ``provision.virt.microvm.host.network``.
What the host file's ``network`` asks for is a list of items (the bridge, its
addresses and ports, forwarding sysctls, an nftables table of our own, the
DHCP host table; see :mod:`.items`). :func:`plan_network` compares them with
the running system and with what an earlier apply recorded in
``<stateDir>/.network.json`` (:func:`microvm.host.plan.converge`): adding what
is missing, and removing what we added before and is no longer wanted. Only
what we added is ever removed, and undone as it was (a sysctl goes back to its
old value). Other nftables tables are never touched.

dnsmasq serves DHCPv4 and router advertisements on the bridge, supervised by
a unit (or, on a host without systemd, started by ``microvm host network
up``). VM ``n`` of ``guest.network.base`` always gets the same IPv4 address
through a DHCP host table derived from the MAC scheme, so the host needs no
list of its VMs; SLAAC gives it the EUI-64 address of its MAC in the IPv6 prefix.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ...model.addresses import bridge_ipv6
from ...model.options import BasicNetwork, HostConfig
from ..plan import (
    DEFAULT_UNIT_DIR,
    Change,
    Item,
    Plan,
    Record,
    RemoveFile,
    Systemctl,
    activation_changes,
    converge,
    unit_file_changes,
)
from ..unitfile import generated
from .dnsmasq import daemon_changes, dhcp_hosts, dhcp_hosts_path, leases_path, serves_dhcp, stop_daemon
from .items import Address, Bridge, File, NftTable, Port, Sysctl, Vlan
from .netlink import iproute, link_index, link_kind
from .record import network_dir, network_record, record_path, recorded_basic, recorded_host, with_tap_settings
from .units import DNSMASQ_PREFIX, DNSMASQ_UNITS, network_units, systemd_running

NFT_TABLE = "microvm_nat"  # family inet: one table for v4 and v6
FORWARDING = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")


def nft_ruleset(host: HostConfig) -> str:
    """Masquerade what leaves the bridge or the routed subnets for another interface (the uplink, if named)."""
    basic, nat, routed = host.network.basic, host.network.nat, host.network.routed
    rules = []
    if basic.enable:
        out = f'oifname "{nat.uplink}"' if nat.uplink else f'oifname != "{basic.name}"'
        rules.append(f'iifname "{basic.name}" {out} masquerade')
    if routed.enable:
        for subnet in routed.subnets():
            family = "ip" if ipaddress.ip_network(subnet).version == 4 else "ip6"
            out = f'oifname "{nat.uplink}"' if nat.uplink else f"{family} daddr != {subnet}"
            rules.append(f"{family} saddr {subnet} {out} masquerade")
    body = "".join(f"    {rule}\n" for rule in rules)
    return (
        f"table inet {NFT_TABLE} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"{body}"
        "  }\n"
        "}\n"
    )


def desired_items(host: HostConfig, state_dir: Path | None = None) -> list[Item]:
    basic, nat, routed = host.network.basic, host.network.nat, host.network.routed
    vlans = host.network.vlans
    items: list[Item] = [Vlan(name, vlan.link, vlan.id) for name, vlan in vlans.items()]
    if basic.enable:
        items.append(Bridge(basic.name))
        if basic.ipv4Subnet:
            items.append(Address(basic.name, basic.ipv4Subnet))
        if (v6 := bridge_ipv6(basic)) is not None:
            items.append(Address(basic.name, str(v6)))
        items += [Port(basic.name, port, port in vlans) for port in basic.ports]
    for name, bridge in host.network.bridges.items():
        items.append(Bridge(name))
        items += [Address(name, address) for address in bridge.addresses]
        items += [Port(name, port, port in vlans) for port in bridge.ports]
    if routed.enable or (nat.enable and basic.enable):
        items += [Sysctl(name, "1") for name in FORWARDING]
    if nat.enable and (basic.enable or routed.enable):
        items.append(NftTable("inet", NFT_TABLE, nft_ruleset(host)))
    if serves_dhcp(basic):
        items.append(File(str(dhcp_hosts_path(basic, state_dir)), dhcp_hosts(basic)))
    return items


@dataclass
class AttachTap(Change):
    """A VM's tap made before the bridge existed (or while it was gone) joins it."""

    tap: str
    bridge: str

    def describe(self) -> str:
        return f"attach tap {self.tap} to bridge {self.bridge}"

    def apply(self) -> None:
        with iproute() as ipr:
            ipr.link("set", index=link_index(ipr, self.tap), master=link_index(ipr, self.bridge))


@dataclass
class RecordTapSettings(Change):
    """Record what ``bin/tap-up`` and the restoration at boot read (see :func:`.record.with_tap_settings`)."""

    host: HostConfig
    record: Record = field(repr=False)

    def describe(self) -> str:
        return "record the tap settings for bin/tap-up"

    def apply(self) -> None:
        self.record.write(with_tap_settings(self.record.read(), self.host))


@dataclass
class ForgetNetwork(Change):
    """Once everything it added is removed: the record, the bridge's leases, the network directory if empty."""

    state_dir: Path | None

    def describe(self) -> str:
        return f"remove {record_path(self.state_dir)} and the bridge's leases"

    def apply(self) -> None:
        basic = recorded_basic(self.state_dir)
        if not network_record(self.state_dir).read().get("items"):
            record_path(self.state_dir).unlink(missing_ok=True)
        if basic is not None:
            leases_path(basic.name, self.state_dir).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            network_dir(self.state_dir).rmdir()  # only when empty


def _detached_taps(basic: BasicNetwork) -> list[Change]:
    """The VMs' taps matching ``tapMatch`` that are not on the bridge."""
    if not basic.enable:
        return []
    changes: list[Change] = []
    with iproute() as ipr:
        bridge = link_index(ipr, basic.name)
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            detached = bridge is None or link.get_attr("IFLA_MASTER") != bridge
            if link_kind(link) == "tun" and fnmatch.fnmatchcase(name, basic.tapMatch) and detached:
                changes.append(AttachTap(name, basic.name))
    return changes


def plan_network(host: HostConfig, state_dir: Path | None = None) -> Plan:
    """What applying ``host``'s network changes on this host: removals of what we added before, then additions,
    the taps to join the bridge, and the settings ``bin/tap-up`` reads."""
    record = network_record(state_dir)
    plan = Plan(converge(desired_items(host, state_dir), record))
    plan.add(*_detached_taps(host.network.basic))
    if with_tap_settings(recorded := record.read(), host) != recorded:
        plan.add(RecordTapSettings(host, record))
    return plan


def restore_plan(state_dir: Path | None = None) -> Plan:
    """The network the last apply recorded, again: at boot, the bridge and its taps' settings are gone."""
    return plan_network(recorded_host(state_dir), state_dir)


def up_plan(host: HostConfig, state_dir: Path, unit_dir: Path = DEFAULT_UNIT_DIR) -> Plan:
    """``microvm host network up``: the network, and dnsmasq as a unit (with systemd) or as our daemon."""
    network = plan_network(host, state_dir)
    if not systemd_running():
        network.add(*daemon_changes(host, state_dir))
        return network
    units = network_units(host, state_dir)
    files = unit_file_changes(unit_dir, units, enable=list(units), stale=generated(unit_dir, DNSMASQ_UNITS))
    return Plan([*files, *network.changes, *activation_changes(files, units, "host network", DNSMASQ_PREFIX)])


def down_plan(host: HostConfig, state_dir: Path, unit_dir: Path = DEFAULT_UNIT_DIR) -> Plan:
    """``microvm host network down``: stop dnsmasq, remove everything the network added and its record."""
    plan = Plan()
    if systemd_running():
        for name in network_units(host, state_dir):
            if (unit_dir / name).exists():
                plan.add(Systemctl(("disable", "--now", name), check=False), RemoveFile(unit_dir / name))
        if plan:
            plan.add(Systemctl(("daemon-reload",)))
    else:
        plan.add(*stop_daemon(host.network.basic.name, state_dir))
    record = network_record(state_dir)
    plan.add(*converge([], record))
    if record.path.exists() or network_dir(state_dir).exists():
        plan.add(ForgetNetwork(state_dir))
    return plan
