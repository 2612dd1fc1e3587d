"""The host network for VMs: a bridge with addresses, DHCP and router advertisements, NAT, per-VM addresses.

Our version of the wrapper module's ``provision.virt.microvm.host.network``.
What the host file's ``network`` asks for is a list of :class:`Item`s (the
bridge, its addresses and ports, forwarding sysctls, an nftables table of our
own, the DHCP host table). :func:`plan_network` compares them with the
running system and with what an earlier apply recorded in
``<stateDir>/.network.json``, and returns the :class:`Change`s to make:
adding what is missing, and removing what we added before and is no longer
wanted. Only what we added is ever removed, and undone as it was (a sysctl
goes back to its old value). Other nftables tables are never touched.

dnsmasq serves DHCPv4 and router advertisements on the bridge, supervised
by the unit :func:`network_units` generates (or, on a host without systemd,
started by ``microvm host network up``). VM ``n`` of ``guest.network.base``
always gets the same IPv4 address (:func:`base_ipv4`) through a DHCP host
table derived from the MAC scheme, so the host needs no list of its VMs;
SLAAC gives it the EUI-64 address of its MAC in the IPv6 prefix.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import json
import os
import shlex
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import proc
from ..errors import MicrovmError
from ..model.addresses import BASE_N_MAX, base_ipv4, base_mac, bridge_ipv6, max_base_vms, slaac_ipv6
from ..model.options import BasicNetwork, HostConfig, RoutedNetwork, VMConfig
from . import systemd
from .statedir import default_state_dir, write_atomic
from .units import HEADER

RECORD = ".network.json"
NFT_TABLE = "microvm_nat"  # family inet: one table for v4 and v6
FORWARDING = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")
DEFAULT_TAP_SCRIPT = 'ip link set "$id" up'
# dnsmasq hands these out; longer leases only delay noticing a VM that went away
LEASE_TIME = "1h"


# --- addresses -------------------------------------------------------------------


def vm_addresses(vm: VMConfig, host: HostConfig | None = None) -> list[str]:
    """The addresses ``vm`` has or will get on this host (for ``microvm status``/``list``).

    Static addresses of ``guest.network.interfaces``, and for the base
    interface the bridge's DHCP address and SLAAC address when the host's
    bridge serves them. ``host`` None means: as recorded by the last apply.
    """
    found = [addr.split("/")[0] for iface in vm.guest.network.interfaces.values() for addr in iface.addresses]
    base = vm.guest.network.base
    basic = host.network.basic if host is not None else _recorded_basic()
    if base.enable and basic is not None and basic.enable:
        own = vm.guest.network.interfaces.get(base.tap)
        if basic.dhcp and (own is None or own.dhcp) and (v4 := base_ipv4(basic, base.n)) is not None:
            found.append(str(v4))
        if basic.routerAdvertisements and (own is None or own.acceptRA) and (v6 := bridge_ipv6(basic)) is not None:
            found.append(str(slaac_ipv6(v6.network, base.mac)))
    return list(dict.fromkeys(found))


# --- the record of what we applied --------------------------------------------------


def record_path(state_dir: Path | None = None) -> Path:
    return (state_dir or default_state_dir()) / RECORD


def read_record(state_dir: Path | None = None) -> dict[str, Any]:
    path = record_path(state_dir)
    return json.loads(path.read_text()) if path.exists() else {}


def _write_record(record: dict[str, Any], state_dir: Path | None) -> None:
    path = record_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=1) + "\n")  # item order is the undo order


def _recorded_basic(state_dir: Path | None = None) -> BasicNetwork | None:
    basic = read_record(state_dir).get("basic")
    return BasicNetwork.model_validate(basic) if basic else None


def recorded_routed(state_dir: Path | None = None) -> RoutedNetwork | None:
    """The host's ``network.routed`` as last applied, if enabled."""
    routed = read_record(state_dir).get("routed")
    return RoutedNetwork.model_validate(routed) if routed else None


def tap_script(state_dir: Path | None = None) -> str:
    """The host's ``microvm.host.tapScript`` as last applied (the default when nothing was)."""
    return read_record(state_dir).get("tapScript", DEFAULT_TAP_SCRIPT)


def bridge_for_tap(tap: str, state_dir: Path | None = None) -> str | None:
    """The host bridge whose ``tapMatch`` the tap's name matches, if one was applied."""
    basic = _recorded_basic(state_dir)
    if basic is not None and basic.enable and fnmatch.fnmatchcase(tap, basic.tapMatch):
        return basic.name
    return None


# --- items: one piece of host state each ------------------------------------------


@contextmanager
def iproute() -> Iterator:
    """A netlink socket in the caller's network namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        yield ipr


def link_index(ipr, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def add_address(ipr, index: int, address: str) -> None:
    """Add ``address`` (with prefix length) to a link; IPv6 without duplicate address detection.

    The host is the router of its VM links: waiting for DAD only delays the guests.
    """
    iface = ipaddress.ip_interface(address)
    flags = {"flags": 0x02} if iface.version == 6 else {}  # IFA_F_NODAD
    ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **flags)


def link_kind(link) -> str | None:
    """``bridge``, ``tun``, ``macvtap``, ``veth``...; None for a physical interface."""
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


class Item(ABC):
    """One piece of host state the config asks for; ``key`` identifies it in the record."""

    @property
    @abstractmethod
    def key(self) -> str: ...

    @abstractmethod
    def present(self, ipr) -> bool: ...

    @abstractmethod
    def add(self, ipr) -> Any:
        """Make it so; return what :meth:`remove` needs to undo exactly this (JSON)."""

    @abstractmethod
    def remove(self, ipr, undo: Any) -> None: ...


@dataclass(frozen=True)
class Bridge(Item):
    name: str

    @property
    def key(self) -> str:
        return f"bridge {self.name}"

    def present(self, ipr) -> bool:
        index = link_index(ipr, self.name)
        if index is None:
            return False
        if link_kind(ipr.get_links(index)[0]) != "bridge":
            raise MicrovmError(
                f"{self.name} exists and is not a bridge", hint="choose another network.basic.name or remove it"
            )
        return True

    def add(self, ipr) -> None:
        ipr.link("add", ifname=self.name, kind="bridge")
        ipr.link("set", index=link_index(ipr, self.name), state="up")

    def remove(self, ipr, undo: Any) -> None:
        if (index := link_index(ipr, self.name)) is not None:
            ipr.link("del", index=index)


@dataclass(frozen=True)
class Address(Item):
    device: str
    address: str  # with prefix length

    @property
    def key(self) -> str:
        return f"address {self.address} on {self.device}"

    def present(self, ipr) -> bool:
        iface = ipaddress.ip_interface(self.address)
        index = link_index(ipr, self.device)
        if index is None:
            return False
        return any(
            a.get_attr("IFA_ADDRESS") == str(iface.ip) and a["prefixlen"] == iface.network.prefixlen
            for a in ipr.get_addr(index=index)
        )

    def add(self, ipr) -> None:
        add_address(ipr, link_index(ipr, self.device), self.address)

    def remove(self, ipr, undo: Any) -> None:
        iface = ipaddress.ip_interface(self.address)
        if (index := link_index(ipr, self.device)) is not None and self.present(ipr):
            ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)


@dataclass(frozen=True)
class Port(Item):
    """A host interface (NIC, VLAN, tap) enslaved to a bridge."""

    bridge: str
    device: str

    @property
    def key(self) -> str:
        return f"{self.device} on bridge {self.bridge}"

    def present(self, ipr) -> bool:
        index, master = link_index(ipr, self.device), link_index(ipr, self.bridge)
        if index is None:
            raise MicrovmError(f"{self.device} does not exist on this host", hint="fix network.basic.ports")
        return master is not None and ipr.get_links(index)[0].get_attr("IFLA_MASTER") == master

    def add(self, ipr) -> bool:
        index = link_index(ipr, self.device)
        was_up = bool(ipr.get_links(index)[0]["flags"] & 1)  # IFF_UP
        ipr.link("set", index=index, master=link_index(ipr, self.bridge))
        ipr.link("set", index=index, state="up")
        return was_up

    def remove(self, ipr, undo: Any) -> None:
        if (index := link_index(ipr, self.device)) is not None:
            ipr.link("set", index=index, master=0)
            if undo is False:
                ipr.link("set", index=index, state="down")


@dataclass(frozen=True)
class Sysctl(Item):
    name: str  # path under /proc/sys
    value: str

    @property
    def path(self) -> Path:
        return Path("/proc/sys") / self.name

    @property
    def key(self) -> str:
        return f"sysctl {self.name.replace('/', '.')} = {self.value}"

    def present(self, ipr) -> bool:
        return self.path.read_text().strip() == self.value

    def add(self, ipr) -> str:
        before = self.path.read_text().strip()
        self.path.write_text(self.value + "\n")
        return before

    def remove(self, ipr, undo: Any) -> None:
        self.path.write_text(f"{undo}\n")


@dataclass(frozen=True)
class NftTable(Item):
    """Our own nftables table, replaced as a whole; other tables are never read or written."""

    family: str
    name: str
    ruleset: str

    @property
    def key(self) -> str:
        # the rules are part of the key: a changed rule set is removed and added again
        return f"nftables table {self.family} {self.name} ({_digest(self.ruleset)})"

    def present(self, ipr) -> bool:
        return proc.run(["nft", "list", "table", self.family, self.name], check=False).returncode == 0

    def add(self, ipr) -> None:
        # add + delete + define in one transaction: replaces a stale table of ours atomically
        header = f"add table {self.family} {self.name}\ndelete table {self.family} {self.name}\n"
        proc.run(["nft", "-f", "-"], input=header + self.ruleset)

    def remove(self, ipr, undo: Any) -> None:
        proc.run(["nft", "delete", "table", self.family, self.name], check=False)


@dataclass(frozen=True)
class File(Item):
    path: str
    content: str

    @property
    def key(self) -> str:
        return f"file {self.path} ({_digest(self.content)})"

    def present(self, ipr) -> bool:
        path = Path(self.path)
        return path.exists() and path.read_text() == self.content

    def add(self, ipr) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.content)

    def remove(self, ipr, undo: Any) -> None:
        Path(self.path).unlink(missing_ok=True)


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


ITEM_TYPES: dict[str, type[Item]] = {cls.__name__: cls for cls in (Bridge, Address, Port, Sysctl, NftTable, File)}


def _item_data(item: Item) -> dict[str, Any]:
    return {"type": type(item).__name__, **asdict(item)}


def _item_from(data: dict[str, Any]) -> Item:
    fields = dict(data)
    return ITEM_TYPES[fields.pop("type")](**fields)


# --- what the host file asks for ----------------------------------------------------


def network_dir(state_dir: Path | None = None) -> Path:
    return (state_dir or default_state_dir()) / ".network"


def dhcp_hosts(basic: BasicNetwork) -> str:
    """dnsmasq config with the host table: the MAC of every possible base VM -> its fixed address."""
    lines = [f"dhcp-host={base_mac(n)},{base_ipv4(basic, n)}" for n in range(min(max_base_vms(basic), BASE_N_MAX + 1))]
    return "".join(line + "\n" for line in lines)


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
    items: list[Item] = []
    if basic.enable:
        items.append(Bridge(basic.name))
        if basic.ipv4Subnet:
            items.append(Address(basic.name, basic.ipv4Subnet))
        if (v6 := bridge_ipv6(basic)) is not None:
            items.append(Address(basic.name, str(v6)))
        items += [Port(basic.name, port) for port in basic.ports]
    if routed.enable or (nat.enable and basic.enable):
        items += [Sysctl(name, "1") for name in FORWARDING]
    if nat.enable and (basic.enable or routed.enable):
        items.append(NftTable("inet", NFT_TABLE, nft_ruleset(host)))
    if _serves_dhcp(basic):
        items.append(File(str(dhcp_hosts_path(basic, state_dir)), dhcp_hosts(basic)))
    return items


def _serves_dhcp(basic: BasicNetwork) -> bool:
    return basic.enable and basic.dhcp and bool(basic.ipv4Subnet)


def _serves_ra(basic: BasicNetwork) -> bool:
    return basic.enable and basic.routerAdvertisements and bool(basic.ipv6Prefix)


def dhcp_hosts_path(basic: BasicNetwork, state_dir: Path | None = None) -> Path:
    return network_dir(state_dir) / f"{basic.name}.dhcp-hosts.conf"


# --- plan and apply -----------------------------------------------------------------------


@dataclass
class Change:
    """One step of a plan: what it does (``str(change)``), and :meth:`apply` doing it."""

    what: str
    action: Callable[[Any], None] = field(repr=False)

    def apply(self, ipr=None) -> None:
        """Make the change; ``ipr`` is an open pyroute2 IPRoute to reuse (else one is opened)."""
        if ipr is not None:
            self.action(ipr)
            return
        with iproute() as own:
            self.action(own)

    def __str__(self) -> str:
        return self.what


def plan_network(host: HostConfig, state_dir: Path | None = None) -> list[Change]:
    """What applying ``host``'s network changes on this host: removals of what we added before, then additions."""
    record = read_record(state_dir)
    wanted = {item.key: item for item in desired_items(host, state_dir)}
    ours: dict[str, dict[str, Any]] = record.get("items", {})
    changes: list[Change] = []
    # undo in reverse order of adding (addresses before their bridge)
    for key in reversed(list(ours)):
        if key not in wanted:
            item = _item_from(ours[key]["item"])
            changes.append(Change(f"remove {key}", _remover(item, ours[key].get("undo"), state_dir)))
    with iproute() as ipr:
        for key, item in wanted.items():
            if not item.present(ipr):
                changes.append(Change(f"add {key}", _adder(item, state_dir)))
        basic = host.network.basic
        if basic.enable:
            bridge = link_index(ipr, basic.name)
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                detached = bridge is None or link.get_attr("IFLA_MASTER") != bridge
                if link_kind(link) == "tun" and fnmatch.fnmatchcase(name, basic.tapMatch) and detached:
                    changes.append(Change(f"attach tap {name} to bridge {basic.name}", _attach(name, basic.name)))
    return changes


def _adder(item: Item, state_dir: Path | None) -> Callable[[Any], None]:
    def do(ipr) -> None:
        undo = item.add(ipr)
        record = read_record(state_dir)
        items = record.setdefault("items", {})
        # a pre-existing value we changed keeps its first undo (the state before we ever touched it)
        previous = items.get(item.key, {}).get("undo")
        items[item.key] = {"item": _item_data(item), "undo": previous if previous is not None else undo}
        _write_record(record, state_dir)

    return do


def _remover(item: Item, undo: Any, state_dir: Path | None) -> Callable[[Any], None]:
    def do(ipr) -> None:
        item.remove(ipr, undo)
        record = read_record(state_dir)
        record.get("items", {}).pop(item.key, None)
        _write_record(record, state_dir)

    return do


def _attach(tap: str, bridge: str) -> Callable[[Any], None]:
    def do(ipr) -> None:
        ipr.link("set", index=link_index(ipr, tap), master=link_index(ipr, bridge))

    return do


def apply_network(host: HostConfig, state_dir: Path | None = None) -> list[Change]:
    """Apply ``host``'s network (the plan of :func:`plan_network`); return the changes made.

    Also records the bridge and ``tapScript`` for ``bin/tap-up``.
    """
    changes = plan_network(host, state_dir)
    with iproute() as ipr:
        for change in changes:
            change.apply(ipr)
    _write_record(_with_tap_settings(read_record(state_dir), host), state_dir)
    return changes


def _with_tap_settings(record: dict[str, Any], host: HostConfig) -> dict[str, Any]:
    """``record`` with what ``bin/tap-up`` reads: the tap script and the enabled bridge/routed layouts."""
    record = dict(record, tapScript=host.microvm.host.tapScript, network=host.network.dump())
    for part in ("basic", "routed"):
        options = getattr(host.network, part)
        if options.enable:
            record[part] = options.dump()
        else:
            record.pop(part, None)
    return record


def tap_settings_outdated(host: HostConfig, state_dir: Path | None = None) -> bool:
    """Whether ``bin/tap-up`` would read other settings than ``host`` asks for (apply needed)."""
    record = read_record(state_dir)
    return _with_tap_settings(record, host) != record


def restore_network(state_dir: Path | None = None) -> list[Change]:
    """Apply the network the last apply recorded again: at boot, the bridge and its taps' settings are gone."""
    record = read_record(state_dir)
    host = HostConfig.model_validate(
        {"network": record.get("network", {}), "microvm": {"host": {"tapScript": record.get("tapScript", "")}}}
    )
    return apply_network(host, state_dir)


def remove_network(state_dir: Path | None = None) -> list[Change]:
    """Remove everything an earlier apply added (as applying a host file without ``network``)."""
    basic = _recorded_basic(state_dir)
    changes = apply_network(HostConfig(), state_dir)
    path = record_path(state_dir)
    if path.exists() and not read_record(state_dir).get("items"):
        path.unlink()
    if basic is not None:
        (network_dir(state_dir) / f"{basic.name}.leases").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        network_dir(state_dir).rmdir()  # only when empty
    return changes


# --- dnsmasq and its unit -----------------------------------------------------------------


def dhcp_unit_name(host: HostConfig) -> str:
    return f"microvm-dnsmasq-{host.network.basic.name}.service"


def dnsmasq_argv(host: HostConfig, state_dir: Path | None = None, foreground: bool = True) -> list[str]:
    """dnsmasq serving DHCPv4 (fixed addresses for base VMs) and router advertisements on the bridge only."""
    basic = host.network.basic
    net = network_dir(state_dir)
    argv = [
        proc.which("dnsmasq", purpose="for DHCP and router advertisements on the VM bridge"),
        "--conf-file=/dev/null",  # ignore /etc/dnsmasq.conf: this instance is ours alone
        f"--interface={basic.name}",
        "--bind-dynamic",  # only the bridge's addresses, even when it appears after dnsmasq starts
        "--except-interface=lo",
        "--no-hosts",
        "--no-ping",  # no 3 s ICMP probe per lease: the host table already avoids conflicts
        f"--dhcp-leasefile={net / (basic.name + '.leases')}",
        f"--pid-file={net / (basic.name + '.dnsmasq.pid')}" if not foreground else "--pid-file=",
    ]
    if foreground:
        argv.append("--keep-in-foreground")
    if _serves_dhcp(basic):
        bridge = ipaddress.IPv4Interface(basic.ipv4Subnet)
        hosts = list(bridge.network.hosts())
        first, last = hosts[0], hosts[-1]
        argv += [
            f"--dhcp-range={first},{last},{bridge.network.netmask},{LEASE_TIME}",
            # a conf file, not --dhcp-hostsfile: dnsmasq reads it as root, before dropping to its user
            f"--conf-file={dhcp_hosts_path(basic, state_dir)}",
            "--dhcp-authoritative",
        ]
    if _serves_ra(basic):
        argv += ["--enable-ra", f"--dhcp-range=::,constructor:{basic.name},ra-only"]
    return argv


def serves_anything(host: HostConfig) -> bool:
    return _serves_dhcp(host.network.basic) or _serves_ra(host.network.basic)


RESTORE_UNIT = "microvm-network.service"


def network_units(host: HostConfig, state_dir: Path | None = None) -> dict[str, str]:
    """systemd units for the host network: its restoration at boot, and the bridge's dnsmasq if it serves."""
    if not (host.network.basic.enable or host.network.routed.enable):
        return {}
    restore = " ".join(
        _systemd_quote(a)
        for a in (sys.executable, "-m", "microvm.host.network", "restore", str(state_dir or default_state_dir()))
    )
    units = {
        RESTORE_UNIT: f"""\
{HEADER}[Unit]
Description=The microvm host network (bridge, addresses, NAT) as `microvm host apply` left it
After=network.target
Before=microvms.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={restore}

[Install]
WantedBy=multi-user.target
"""
    }
    if serves_anything(host):
        units[dhcp_unit_name(host)] = _dnsmasq_unit(host, state_dir)
    return units


def _dnsmasq_unit(host: HostConfig, state_dir: Path | None) -> str:
    basic = host.network.basic
    argv = dnsmasq_argv(host, state_dir)
    return f"""\
{HEADER}[Unit]
Description=DHCP and router advertisements for the microvm bridge {basic.name}
Wants={RESTORE_UNIT}
After=network.target {RESTORE_UNIT}
Before=microvms.target

[Service]
ExecStartPre=/bin/mkdir -p {shlex.quote(str(network_dir(state_dir)))}
ExecStart={" ".join(_systemd_quote(a) for a in argv)}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""


def _systemd_quote(arg: str) -> str:
    """An ExecStart word: systemd splits on spaces and expands ``$``/``%``; quote only when needed."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if any(c in escaped for c in " \t\"'\\"):
        return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def start_dnsmasq(host: HostConfig, state_dir: Path | None = None) -> int | None:
    """Without systemd: run dnsmasq as a daemon (pid file in the network directory); return its pid."""
    if not serves_anything(host):
        return None
    stop_dnsmasq(host.network.basic.name, state_dir)
    network_dir(state_dir).mkdir(parents=True, exist_ok=True)
    proc.run(dnsmasq_argv(host, state_dir, foreground=False))
    return _dnsmasq_pid(host.network.basic.name, state_dir)


def _dnsmasq_pid(bridge: str, state_dir: Path | None) -> int | None:
    pidfile = network_dir(state_dir) / f"{bridge}.dnsmasq.pid"
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_dnsmasq(bridge: str, state_dir: Path | None = None) -> None:
    from ..control.process import stop_hard

    pid = _dnsmasq_pid(bridge, state_dir)
    if pid is not None and _is_dnsmasq(pid):
        stop_hard(pid, grace=5)
    (network_dir(state_dir) / f"{bridge}.dnsmasq.pid").unlink(missing_ok=True)


def _is_dnsmasq(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq"
    except OSError:
        return False


def systemd_running() -> bool:
    """Whether dnsmasq can be a systemd unit: systemd is PID 1 and we are in its network namespace.

    Inside another namespace (``ip netns exec``) a unit would serve the wrong one, so dnsmasq runs as our daemon.
    """
    try:
        same_namespace = os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        same_namespace = False
    return systemd.running() and same_namespace


def main(argv: list[str] | None = None) -> int:
    """``python -m microvm.host.network restore STATE_DIR``: what microvm-network.service runs at boot."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m microvm.host.network")
    parser.add_argument("command", choices=["restore"])
    parser.add_argument("state_dir", type=Path, nargs="?", help="the host's microvm.stateDir")
    args = parser.parse_args(argv)
    try:
        for change in restore_network(args.state_dir):
            print(change)
    except MicrovmError as exc:
        print(f"microvm network: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
