"""The pieces of host state the network adds: each knows whether it is there, how to add it and to undo that."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import proc
from ...errors import MicrovmError
from ..plan import Item
from ..statedir import write_atomic
from .netlink import add_address, iproute, link_index, link_kind, netlink_error


@dataclass(frozen=True)
class Bridge(Item):
    name: str

    @property
    def key(self) -> str:
        return f"bridge {self.name}"

    def present(self) -> bool:
        with iproute() as ipr:
            index = link_index(ipr, self.name)
            if index is None:
                return False
            if link_kind(ipr.get_links(index)[0]) != "bridge":
                raise MicrovmError(
                    f"{self.name} exists and is not a bridge", hint="choose another network.basic.name or remove it"
                )
        return True

    def add(self) -> None:
        with iproute() as ipr:
            ipr.link("add", ifname=self.name, kind="bridge")
            ipr.link("set", index=link_index(ipr, self.name), state="up")

    def remove(self, undo: Any) -> None:
        _delete_link(self.name)


@dataclass(frozen=True)
class Address(Item):
    device: str
    address: str  # with prefix length

    @property
    def key(self) -> str:
        return f"address {self.address} on {self.device}"

    def present(self) -> bool:
        iface = ipaddress.ip_interface(self.address)
        with iproute() as ipr:
            index = link_index(ipr, self.device)
            return index is not None and any(
                a.get_attr("IFA_ADDRESS") == str(iface.ip) and a["prefixlen"] == iface.network.prefixlen
                for a in ipr.get_addr(index=index)
            )

    def add(self) -> None:
        with iproute() as ipr:
            add_address(ipr, link_index(ipr, self.device), self.address)

    def remove(self, undo: Any) -> None:
        iface = ipaddress.ip_interface(self.address)
        if self.present():
            with iproute() as ipr:
                ipr.addr(
                    "del", index=link_index(ipr, self.device), address=str(iface.ip), prefixlen=iface.network.prefixlen
                )


@dataclass(frozen=True)
class Port(Item):
    """A host interface (NIC, VLAN, tap) enslaved to a bridge."""

    bridge: str
    device: str
    made_here: bool = False  # a VLAN of network.vlans: the same plan adds it first

    @property
    def key(self) -> str:
        return f"{self.device} on bridge {self.bridge}"

    def present(self) -> bool:
        with iproute() as ipr:
            index, master = link_index(ipr, self.device), link_index(ipr, self.bridge)
            if index is None and self.made_here:
                return False
            if index is None:
                raise MicrovmError(
                    f"{self.device} does not exist on this host", hint="fix the bridge's ports, or declare it a VLAN"
                )
            return master is not None and ipr.get_links(index)[0].get_attr("IFLA_MASTER") == master

    def add(self) -> bool:
        with iproute() as ipr:
            index = link_index(ipr, self.device)
            was_up = bool(ipr.get_links(index)[0]["flags"] & 1)  # IFF_UP
            ipr.link("set", index=index, master=link_index(ipr, self.bridge))
            ipr.link("set", index=index, state="up")
        return was_up

    def remove(self, undo: Any) -> None:
        with iproute() as ipr:
            if (index := link_index(ipr, self.device)) is not None:
                ipr.link("set", index=index, master=0)
                if undo is False:
                    ipr.link("set", index=index, state="down")


@dataclass(frozen=True)
class Vlan(Item):
    """A VLAN interface on a trunk port (``ip link add NAME link LINK type vlan id ID``), up."""

    name: str
    link: str
    id: int

    @property
    def key(self) -> str:
        return f"vlan {self.name} (id {self.id} on {self.link})"

    def present(self) -> bool:
        with iproute() as ipr:
            index = link_index(ipr, self.name)
            if index is None:
                return False
            link = ipr.get_links(index)[0]
            info = link.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
            if link_kind(link) != "vlan" or data is None or data.get_attr("IFLA_VLAN_ID") != self.id:
                raise MicrovmError(f"{self.name} exists and is not VLAN {self.id}", hint="rename it in network.vlans")
            if link.get_attr("IFLA_LINK") != link_index(ipr, self.link):
                raise MicrovmError(f"{self.name} exists on another link than {self.link}", hint="fix network.vlans")
        return True

    def add(self) -> None:
        with iproute() as ipr:
            trunk = link_index(ipr, self.link)
            if trunk is None:
                raise MicrovmError(
                    f"{self.link} does not exist on this host", hint=f"fix network.vlans.{self.name}.link"
                )
            try:
                ipr.link("add", ifname=self.name, kind="vlan", link=trunk, vlan_id=self.id)
            except netlink_error() as exc:
                raise MicrovmError(
                    f"network.vlans.{self.name}: the kernel refused VLAN {self.id} on {self.link}: {exc.args[-1]}",
                    hint="the host kernel needs 802.1Q VLAN support (module 8021q)",
                ) from None
            ipr.link("set", index=link_index(ipr, self.name), state="up")
            ipr.link("set", index=trunk, state="up")

    def remove(self, undo: Any) -> None:
        _delete_link(self.name)


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

    def present(self) -> bool:
        return self.path.read_text().strip() == self.value

    def add(self) -> str:
        before = self.path.read_text().strip()
        self.path.write_text(self.value + "\n")
        return before

    def remove(self, undo: Any) -> None:
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

    def present(self) -> bool:
        return proc.run(["nft", "list", "table", self.family, self.name], check=False).returncode == 0

    def add(self) -> None:
        # add + delete + define in one transaction: replaces a stale table of ours atomically
        header = f"add table {self.family} {self.name}\ndelete table {self.family} {self.name}\n"
        proc.run(["nft", "-f", "-"], input=header + self.ruleset)

    def remove(self, undo: Any) -> None:
        proc.run(["nft", "delete", "table", self.family, self.name], check=False)


@dataclass(frozen=True)
class File(Item):
    path: str
    content: str

    @property
    def key(self) -> str:
        return f"file {self.path} ({_digest(self.content)})"

    def present(self) -> bool:
        path = Path(self.path)
        return path.exists() and path.read_text() == self.content

    def add(self) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.content)

    def remove(self, undo: Any) -> None:
        Path(self.path).unlink(missing_ok=True)


def _delete_link(name: str) -> None:
    with iproute() as ipr:
        if (index := link_index(ipr, name)) is not None:
            ipr.link("del", index=index)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


ITEM_TYPES: tuple[type[Item], ...] = (Vlan, Bridge, Address, Port, Sysctl, NftTable, File)
