"""``microvm host network up|down HOSTFILE``: the host file's VM network, on its own.

``microvm host apply`` applies it too (through :mod:`microvm.host.network`);
these commands are for trying it out or for hosts that only want the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..host.statedir import installed_configs
from .app import out, warn
from .host_cmds import host_app

network_app = typer.Typer(help="The VM bridge with DHCP, router advertisements and NAT.", no_args_is_help=True)
host_app.add_typer(network_app, name="network")

HostFileArg = Annotated[Path, typer.Argument(help="A host file.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Only print the plan.")]


def _state_dir(host) -> Path:  # -> the host file's stateDir unless $MICROVM_STATE_DIR overrides it
    import os

    return Path(os.environ.get("MICROVM_STATE_DIR") or host.microvm.stateDir)


@network_app.command("up")
def up(file: HostFileArg, dry_run: DryRunOpt = False) -> None:
    """Create the bridge, addresses, NAT and DHCP of HOSTFILE's network; remove what it no longer asks for."""
    from ..config import load_host
    from ..host import network

    loaded = load_host(file, installed_configs())
    warn(loaded.warnings)
    host, state_dir = loaded.config, _state_dir(loaded.config)
    if dry_run:
        for change in network.plan_network(host, state_dir):
            out.print(f"would {change}", soft_wrap=True)
        return
    for change in network.apply_network(host, state_dir):
        out.print(str(change), soft_wrap=True)
    if network.systemd_running():
        _install_units(network.network_units(host, state_dir))
    else:
        pid = network.start_dnsmasq(host, state_dir)
        if pid is not None:
            out.print(f"started dnsmasq (pid {pid}) on {host.network.basic.name}")


@network_app.command("down")
def down(file: HostFileArg) -> None:
    """Remove everything `up` added (bridge, addresses, NAT table, sysctls) and stop its dnsmasq."""
    from ..config import load_host
    from ..host import network

    loaded = load_host(file, installed_configs())
    host, state_dir = loaded.config, _state_dir(loaded.config)
    if network.systemd_running():
        _remove_units(network.network_units(host, state_dir))
    else:
        network.stop_dnsmasq(host.network.basic.name, state_dir)
    for change in network.remove_network(state_dir):
        out.print(str(change), soft_wrap=True)


def _install_units(units: dict[str, str]) -> None:
    from ..host.apply import DEFAULT_UNIT_DIR
    from ..host.systemd import systemctl

    for name, text in units.items():
        (DEFAULT_UNIT_DIR / name).write_text(text)
    if units:
        systemctl("daemon-reload")
        systemctl("enable", "--now", *units)
        systemctl("restart", *units)


def _remove_units(units: dict[str, str]) -> None:
    from ..host.apply import DEFAULT_UNIT_DIR
    from ..host.systemd import systemctl

    for name in units:
        systemctl("disable", "--now", name, check=False)
        (DEFAULT_UNIT_DIR / name).unlink(missing_ok=True)
    if units:
        systemctl("daemon-reload")
