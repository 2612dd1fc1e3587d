"""``microvm host network up|down HOSTFILE``: the host file's VM network, on its own.

``microvm host apply`` applies it too (through :mod:`microvm.host.network`);
these commands are for trying it out or for hosts that only want the network.
"""

from __future__ import annotations

import os
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


def _run(file: Path, which: str, dry_run: bool) -> None:
    """Plan ``up`` or ``down`` for the host file's network (stateDir: $MICROVM_STATE_DIR or the file's), apply it."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..config import load_host
    from ..host import network

    loaded = load_host(file, installed_configs())
    warn(loaded.warnings)
    host = loaded.config
    state_dir = Path(os.environ.get("MICROVM_STATE_DIR") or host.microvm.stateDir)
    plan = (network.up_plan if which == "up" else network.down_plan)(host, state_dir)
    if dry_run:
        for line in plan.describe():
            out.print(f"would {line}", soft_wrap=True, markup=False)
        return
    plan.apply(lambda line: out.print(line, soft_wrap=True, markup=False))


@network_app.command("up")
def up(file: HostFileArg, dry_run: DryRunOpt = False) -> None:
    """Create the bridge, addresses, NAT and DHCP of HOSTFILE's network; remove what it no longer asks for."""
    _run(file, "up", dry_run)


@network_app.command("down")
def down(file: HostFileArg, dry_run: DryRunOpt = False) -> None:
    """Remove everything `up` added (bridge, addresses, NAT table, sysctls) and stop its dnsmasq."""
    _run(file, "down", dry_run)
