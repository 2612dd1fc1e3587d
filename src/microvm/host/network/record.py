"""What the last apply of the network left in ``<stateDir>/.network.json``: the items it added (to undo them)
and the settings ``bin/tap-up``, ``microvm status`` and the restoration at boot read."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from ...layout import NETWORK_RECORD
from ...model.options import BasicNetwork, HostConfig, RoutedNetwork
from ..plan import Record
from ..statedir import default_state_dir
from .items import ITEM_TYPES

DEFAULT_TAP_SCRIPT = 'ip link set "$id" up'


def record_path(state_dir: Path | None = None) -> Path:
    return (state_dir or default_state_dir()) / NETWORK_RECORD


def network_record(state_dir: Path | None = None) -> Record:
    return Record(record_path(state_dir), ITEM_TYPES)


def read_record(state_dir: Path | None = None) -> dict[str, Any]:
    return network_record(state_dir).read()


def network_dir(state_dir: Path | None = None) -> Path:
    """Where the network keeps its files (DHCP host table, leases, dnsmasq's pid file)."""
    return (state_dir or default_state_dir()) / ".network"


def recorded_basic(state_dir: Path | None = None) -> BasicNetwork | None:
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
    basic = recorded_basic(state_dir)
    if basic is not None and basic.enable and fnmatch.fnmatchcase(tap, basic.tapMatch):
        return basic.name
    return None


def with_tap_settings(record: dict[str, Any], host: HostConfig) -> dict[str, Any]:
    """``record`` with what ``bin/tap-up`` reads: the tap script and the enabled bridge/routed layouts."""
    record = dict(record, tapScript=host.microvm.host.tapScript, network=host.network.dump())
    for part in ("basic", "routed"):
        options = getattr(host.network, part)
        if options.enable:
            record[part] = options.dump()
        else:
            record.pop(part, None)
    return record


def recorded_host(state_dir: Path | None = None) -> HostConfig:
    """The host network (and tap script) as last applied: what the restoration at boot applies again."""
    record = read_record(state_dir)
    return HostConfig.model_validate(
        {"network": record.get("network", {}), "microvm": {"host": {"tapScript": record.get("tapScript", "")}}}
    )
