"""Netlink helpers (pyroute2) shared by the network's items and the runner's tap helpers."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def iproute() -> Iterator:
    """A netlink socket in the caller's network namespace."""
    from pyroute2 import IPRoute  # heavy: loaded only by the commands that change links, for start-up speed

    with IPRoute() as ipr:
        yield ipr


def netlink_error() -> type[Exception]:
    """pyroute2's error for a request the kernel refused (``except netlink_error() as exc``; ``exc.code``: errno)."""
    from pyroute2.netlink.exceptions import NetlinkError  # heavy: as in iproute(), for start-up speed

    return NetlinkError


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
