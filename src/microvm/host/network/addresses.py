"""The host network's address arithmetic: the bridge's IPv6 address and each base VM's addresses (pure)."""

from __future__ import annotations

import ipaddress

from ...model.options import BasicNetwork, ipv6_host_interface, nth_host_address


def bridge_ipv6(basic: BasicNetwork) -> ipaddress.IPv6Interface | None:
    """The bridge's IPv6 address: ``<prefix>1/64``."""
    return ipaddress.IPv6Interface(ipv6_host_interface(basic.ipv6Prefix)) if basic.ipv6Prefix else None


def base_ipv4(basic: BasicNetwork, n: int) -> ipaddress.IPv4Address | None:
    """VM ``n``'s fixed IPv4 address: the n+1-th host address of the subnet after the bridge's own."""
    return nth_host_address(basic.ipv4Subnet, n) if basic.ipv4Subnet else None  # type: ignore[return-value]


def max_base_vms(basic: BasicNetwork) -> int:
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
