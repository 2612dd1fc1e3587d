"""A VM's host interfaces: the taps and macvtaps its runner lists, made before it starts, removed after.

``bin/tap-up``/``tap-down`` and ``bin/macvtap-up``/``macvtap-down`` in the
runner call ``python -m microvm.helpers COMMAND RUNNER`` (run as root, by
``microvm-tap-interfaces@``/``microvm-macvtap-interfaces@`` or by hand).
As in microvm.nix, taps are persistent, owned by the user the hypervisor runs
as, with ``vnet_hdr`` and, exactly when the runner's ``tap-flags`` say so,
``multi_queue`` (qemu refuses a tap whose queue mode differs from its own).
A tap joins its interface's ``bridge``, else the host bridge whose
``tapMatch`` it matches (recorded by :mod:`microvm.host.network`); then the
host's ``tapScript`` runs with ``$id`` set (by default it brings the tap up).

Everything goes through netlink (pyroute2) in the caller's network namespace.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import MicrovmError
from ..layout import MACVTAP_INTERFACES, RUNNER_CONFIG, TAP_FLAGS, TAP_INTERFACES
from ..model.options import RoutedNetwork, VMConfig
from . import network


@dataclass(frozen=True)
class Tap:
    id: str
    bridge: str | None
    routed: RoutedNetwork | None = None  # the routed layout's base tap
    n: int = 0


@dataclass(frozen=True)
class Macvtap:
    id: str
    mac: str
    link: str
    mode: str


def _lines(runner: Path, name: str) -> list[str]:
    path = runner / name
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _vm(runner: Path) -> VMConfig:
    return VMConfig.model_validate(json.loads((runner / RUNNER_CONFIG).read_text()))


def runner_taps(runner: Path) -> tuple[list[Tap], set[str]]:
    """The runner's taps (with the bridge each names, or the routed layout) and its tap flags."""
    vm = _vm(runner)
    base = vm.guest.network.base
    bridges = {i.id: i.bridge for i in vm.microvm.interfaces if i.type == "tap"}
    taps = []
    for name in _lines(runner, TAP_INTERFACES):
        routed = base.routed if base.enable and base.routed.enable and name == base.tap else None
        taps.append(Tap(name, bridges.get(name), routed, base.n))
    flags = set(" ".join(_lines(runner, TAP_FLAGS)).split())
    return taps, flags


def runner_macvtaps(runner: Path) -> list[Macvtap]:
    return [Macvtap(*line.split()) for line in _lines(runner, MACVTAP_INTERFACES)]


def owner(runner: Path, user: str | None) -> tuple[int, int]:
    """uid/gid the hypervisor runs as: ``user``, else the VM's ``microvm.user``, else the state directory's owner.

    The hypervisor runs in the VM's state directory (the current directory of
    these commands), which belongs to the user it runs as.
    """
    user = user or _vm(runner).microvm.user
    if user:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise MicrovmError(
                f"user {user!r} does not exist on this host", hint="create it or set microvm.user"
            ) from None
        return entry.pw_uid, entry.pw_gid
    st = os.stat(".")
    return st.st_uid, st.st_gid


def _remove_own(ipr, name: str, kind: str) -> None:
    """Delete interface ``name`` if it exists and is a ``kind``; refuse to touch anything else."""
    index = network.link_index(ipr, name)
    if index is None:
        return
    found = network.link_kind(ipr.get_links(index)[0])
    if found != kind:
        raise MicrovmError(
            f"{name} exists on this host and is not a {kind} interface ({found or 'physical'}); not touching it",
            hint="rename the VM's interface (microvm.interfaces[].id)",
        )
    ipr.link("del", index=index)


def tap_up(runner: Path, user: str | None = None) -> list[str]:
    """Create the runner's taps (replacing stale ones of ours) and run the tap script; return their names.

    Everything is checked before the first tap is made, and a failure half-way removes the taps made so far.
    """
    taps, flags = runner_taps(runner)
    uid, gid = owner(runner, user)
    if taps and (problem := _tun_access_problem(uid, gid)):
        print(f"tap-up: warning: {problem}", file=sys.stderr)
    script = network.tap_script()
    with network.iproute() as ipr:
        masters = {tap.id: _master(ipr, tap) for tap in taps}
        made: list[str] = []
        try:
            for tap in taps:
                _remove_own(ipr, tap.id, "tun")
                ipr.link(
                    "add",
                    ifname=tap.id,
                    kind="tuntap",
                    mode="tap",
                    uid=uid,
                    gid=gid,
                    ifr={"no_pi": True, "vnet_hdr": "vnet_hdr" in flags, "multi_queue": "multi_queue" in flags},
                )
                made.append(tap.id)
                index = network.link_index(ipr, tap.id)
                if tap.routed is not None:
                    _route(ipr, index, tap)
                elif masters[tap.id] is not None:
                    ipr.link("set", index=index, master=masters[tap.id])
                proc.run(["sh", "-c", script], env={"id": tap.id})
        except BaseException:
            for name in made:
                _remove_own(ipr, name, "tun")
            raise
    return [tap.id for tap in taps]


def _tun_access_problem(uid: int, gid: int, tun: Path = Path("/dev/net/tun")) -> str | None:
    """The hypervisor's user must open /dev/net/tun to attach to its tap; say so before qemu fails obscurely."""
    st = tun.stat()
    mode = st.st_mode
    allowed = (
        uid == 0
        or mode & 0o006 == 0o006
        or (st.st_gid == gid and mode & 0o060 == 0o060)
        or (st.st_uid == uid and mode & 0o600 == 0o600)
    )
    if allowed:
        return None
    return (
        f"{tun} is mode {mode & 0o777:o}, so the hypervisor's user (uid {uid}) cannot open its taps; "
        f"make it read-write for everyone, as Debian does by default: chmod 0666 {tun}"
    )


def _master(ipr, tap: Tap) -> int | None:
    """The index of the bridge ``tap`` joins (None: no bridge); checks the routed layout matches the host's."""
    if tap.routed is not None:
        host = network.recorded_routed()
        if host != tap.routed:
            raise MicrovmError(
                f"tap {tap.id}: the VM's guest.network.base.routed differs from the host's network.routed "
                f"({'not applied' if host is None else 'different subnets'})",
                hint="set the same values in both and run `microvm host network up HOSTFILE`",
            )
        return None
    bridge = tap.bridge if tap.bridge is not None else network.bridge_for_tap(tap.id)
    if bridge is None:
        return None
    index = network.link_index(ipr, bridge)
    if index is None:
        raise MicrovmError(
            f"tap {tap.id}: bridge {bridge} does not exist",
            hint="create it (microvm host network up HOSTFILE) or fix the interface's bridge",
        )
    return index


def _route(ipr, index: int, tap: Tap) -> None:
    """The routed layout: the host's addresses on the tap, and a host route to each of the VM's addresses."""
    ipr.link("set", index=index, state="up")  # routes need the link up
    for address in tap.routed.host_addresses():
        network.add_address(ipr, index, address)
    for address in tap.routed.vm_addresses(tap.n):
        ipr.route("add", dst=address, oif=index)


def tap_down(runner: Path) -> list[str]:
    taps, _ = runner_taps(runner)
    with network.iproute() as ipr:
        for tap in taps:
            _remove_own(ipr, tap.id, "tun")
    return [tap.id for tap in taps]


def macvtap_up(runner: Path, user: str | None = None) -> list[str]:
    """Create the runner's macvtaps on their links and hand their /dev/tapN to the hypervisor's user."""
    uid, gid = owner(runner, user)
    created = []
    with network.iproute() as ipr:
        for mv in runner_macvtaps(runner):
            _remove_own(ipr, mv.id, "macvtap")
            link = network.link_index(ipr, mv.link)
            if link is None:
                raise MicrovmError(f"macvtap {mv.id}: its link {mv.link} does not exist on this host")
            ipr.link("add", ifname=mv.id, kind="macvtap", link=link, macvtap_mode=mv.mode, address=mv.mac)
            index = network.link_index(ipr, mv.id)
            ipr.link("set", index=index, state="up")
            device = Path(f"/dev/tap{index}")
            if not device.exists():  # devtmpfs makes it; make it where /dev is static
                major, minor = Path(f"/sys/class/net/{mv.id}/tap{index}/dev").read_text().strip().split(":")
                os.mknod(device, 0o600 | 0o020000, os.makedev(int(major), int(minor)))
            os.chown(device, uid, gid)
            created.append(mv.id)
    return created


def macvtap_down(runner: Path) -> list[str]:
    names = [mv.id for mv in runner_macvtaps(runner)]
    with network.iproute() as ipr:
        for name in names:
            _remove_own(ipr, name, "macvtap")
    return names
