"""Address arithmetic of the VM networks, shared by the option model and the host network.

One scheme, in one place: VM ``n`` of ``guest.network.base`` has the tap
``vm<n>`` and the MAC ``02:00:00:01:HH:LL``; the host's DHCP server gives that
MAC the n+1-th address of the bridge's subnet after the bridge's own, and
SLAAC derives its IPv6 address from the MAC. The routed layout numbers VM
addresses the same way. Pure functions of strings and numbers.
"""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any, Literal, Protocol

BASE_N_MAX = 0xFFFF  # network.base.n fills the last two bytes of the MAC


class Bridge(Protocol):
    """What the bridge's addresses depend on: the host's ``network.basic``."""

    @property
    def ipv4Subnet(self) -> str | Literal[False]: ...

    @property
    def ipv6Prefix(self) -> str | Literal[False]: ...


def nth_host_address(interface: str, n: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The n+1-th usable address of ``interface``'s network after skipping ``interface``'s own; None past the end.

    10.213.0.1/24: n=0 -> 10.213.0.2; fd00::1/64: n=0 -> fd00::2. How VM ``n`` gets a fixed address.
    """
    iface = ipaddress.ip_interface(interface)
    net = iface.network
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - (1 if iface.version == 4 else 0)
    candidate = first + n
    if candidate >= int(iface.ip):
        candidate += 1
    return ipaddress.ip_address(candidate) if candidate <= last else None


def ipv6_host_interface(prefix: str) -> str:
    """``<prefix>1/<len>``: the host's address in an IPv6 prefix written as ``fd12:3456:789a::`` (a /64)."""
    net = ipaddress.IPv6Network(prefix if "/" in prefix else f"{prefix}/64")
    return f"{net.network_address + 1}/{net.prefixlen}"


def base_tap(n: int, routed: bool = False) -> str:
    """The tap name of VM ``n``'s base interface (matches the default ``tapMatch`` "vm*"; ``rvm<n>`` routed)."""
    return f"rvm{n}" if routed else f"vm{n}"


def base_mac(n: int) -> str:
    """The MAC of VM ``n``'s base interface: locally administered, ``n`` in the last two bytes."""
    return f"02:00:00:01:{n >> 8:02x}:{n & 0xFF:02x}"


def bridge_ipv6(basic: Bridge) -> ipaddress.IPv6Interface | None:
    """The bridge's IPv6 address: ``<prefix>1/64``."""
    return ipaddress.IPv6Interface(ipv6_host_interface(basic.ipv6Prefix)) if basic.ipv6Prefix else None


def base_ipv4(basic: Bridge, n: int) -> ipaddress.IPv4Address | None:
    """VM ``n``'s fixed IPv4 address: the n+1-th host address of the subnet after the bridge's own."""
    return nth_host_address(basic.ipv4Subnet, n) if basic.ipv4Subnet else None  # type: ignore[return-value]


def max_base_vms(basic: Bridge) -> int:
    """How many base VMs get a fixed IPv4 address in the subnet."""
    if not basic.ipv4Subnet:
        return 0
    return ipaddress.IPv4Interface(basic.ipv4Subnet).network.num_addresses - 3  # network, broadcast, bridge


def slaac_ipv6(prefix: ipaddress.IPv6Network, mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 address the kernel forms from ``mac`` in ``prefix`` (its default ``addr_gen_mode``)."""
    octets = [int(b, 16) for b in mac.split(":")]
    octets[0] ^= 0x02
    eui = octets[:3] + [0xFF, 0xFE] + octets[3:]
    return ipaddress.IPv6Address(int(prefix.network_address) | int.from_bytes(bytes(eui), "big"))


def config_addresses(vm: dict[str, Any], basic: dict[str, Any] | None) -> list[str]:
    """The addresses a VM has or will get on this host, from dumped options (a runner's vm.json) as they are.

    Static addresses of ``guest.network.interfaces``, and for the base
    interface the DHCP and SLAAC addresses when the host's bridge (``basic``,
    its dumped ``network.basic``) serves them. Plain dicts: ``microvm list``
    reads hundreds of these and validating each through the model costs ms.
    """
    network = vm["guest"]["network"]
    interfaces = network.get("interfaces", {})
    found = [addr.split("/")[0] for iface in interfaces.values() for addr in iface.get("addresses", [])]
    base = network.get("base", {})
    if base.get("enable") and basic and basic.get("enable"):
        n = base.get("n", 0)
        own = interfaces.get(base_tap(n, base.get("routed", {}).get("enable", False)), {})
        if basic.get("dhcp") and own.get("dhcp", True) and (v4 := base_ipv4(SimpleNamespace(**basic), n)) is not None:
            found.append(str(v4))
        if basic.get("routerAdvertisements") and own.get("acceptRA", True) and basic.get("ipv6Prefix"):
            v6 = bridge_ipv6(SimpleNamespace(**basic))
            found.append(str(slaac_ipv6(v6.network, base_mac(n))))  # type: ignore[union-attr]
    return list(dict.fromkeys(found))
