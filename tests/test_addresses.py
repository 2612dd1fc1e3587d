"""The address arithmetic (microvm.model.addresses): pure, no network needed."""

from __future__ import annotations

import ipaddress

import pytest

from microvm.model.addresses import (
    BASE_N_MAX,
    base_ipv4,
    base_mac,
    base_tap,
    bridge_ipv6,
    ipv6_host_interface,
    max_base_vms,
    nth_host_address,
    slaac_ipv6,
)
from microvm.model.options import BasicNetwork


@pytest.mark.parametrize(
    "interface, n, expected",
    [
        ("10.213.0.1/24", 0, "10.213.0.2"),
        ("10.213.0.1/24", 252, "10.213.0.254"),
        ("10.213.0.1/24", 253, None),  # .255 is the broadcast address
        ("10.5.0.10/24", 8, "10.5.0.9"),  # below the interface's own address
        ("10.5.0.10/24", 9, "10.5.0.11"),  # its own address is skipped
        ("10.5.0.1/30", 0, "10.5.0.2"),
        ("10.5.0.1/30", 1, None),
        ("fd00::1/64", 0, "fd00::2"),
        ("fd00::1/64", 0xFFFF, "fd00::1:1"),
        ("fd00::1/126", 2, None),  # IPv6 has no broadcast: ::3 is the last, n=1
    ],
)
def test_nth_host_address_skips_the_network_and_the_own_address(interface: str, n: int, expected: str | None) -> None:
    found = nth_host_address(interface, n)
    assert (str(found) if found is not None else None) == expected


def test_every_base_vm_of_a_subnet_gets_its_own_address_inside_it() -> None:
    basic = BasicNetwork(ipv4Subnet="10.7.0.100/25")
    net = ipaddress.IPv4Interface(basic.ipv4Subnet).network
    found = [base_ipv4(basic, n) for n in range(max_base_vms(basic))]
    assert len(set(found)) == len(found) == net.num_addresses - 3
    assert all(a in net and a not in (net.network_address, net.broadcast_address) for a in found)
    assert ipaddress.IPv4Address("10.7.0.100") not in found
    assert base_ipv4(basic, max_base_vms(basic)) is None


def test_a_bridge_without_ipv4_or_ipv6_has_no_addresses() -> None:
    basic = BasicNetwork(ipv4Subnet=False, ipv6Prefix=False)
    assert base_ipv4(basic, 0) is None and max_base_vms(basic) == 0 and bridge_ipv6(basic) is None


def test_the_bridge_and_the_routed_host_take_address_1_of_the_ipv6_prefix() -> None:
    assert ipv6_host_interface("fd12:3456:789a::") == "fd12:3456:789a::1/64"
    assert ipv6_host_interface("fd12:3456::/48") == "fd12:3456::1/48"
    assert str(bridge_ipv6(BasicNetwork())) == "fd12:3456:789a::1/64"


@pytest.mark.parametrize(
    "n, tap, mac",
    [
        (0, "vm0", "02:00:00:01:00:00"),
        (258, "vm258", "02:00:00:01:01:02"),
        (BASE_N_MAX, "vm65535", "02:00:00:01:ff:ff"),
    ],
)
def test_base_tap_and_mac_carry_n(n: int, tap: str, mac: str) -> None:
    assert base_tap(n) == tap and base_mac(n) == mac


@pytest.mark.parametrize(
    "mac, expected",
    [
        ("02:00:00:01:00:03", "fd12:3456:789a::ff:fe01:3"),  # the local bit is flipped off
        ("52:54:00:12:34:56", "fd12:3456:789a:0:5054:ff:fe12:3456"),  # and a universal one on (RFC 4291 appendix A)
    ],
)
def test_slaac_address_is_the_eui64_of_the_mac(mac: str, expected: str) -> None:
    assert str(slaac_ipv6(ipaddress.IPv6Network("fd12:3456:789a::/64"), mac)) == expected
