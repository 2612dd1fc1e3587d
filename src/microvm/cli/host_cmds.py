"""``microvm host apply``: install the VMs and units a host file declares."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..host.statedir import installed_configs
from ..layout import OCF_AGENT
from ..store import Store
from .app import app, err, out, warn

host_app = typer.Typer(help="The host: units, user, state directory and declared VMs.", no_args_is_help=True)
app.add_typer(host_app, name="host")


@host_app.command()
def apply(
    file: Annotated[Path, typer.Argument(help="A host file.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build, then only show what would change.")] = False,
) -> None:
    """Build every declared VM, install units, user, group and state directory; restart what changed."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..config import load_host
    from ..host import apply as host_apply

    host = load_host(file, installed_configs())
    warn(host.warnings)
    # MICROVM_UNIT_DIR: where units go instead of /etc/systemd/system (tests; staging a root)
    unit_dir = Path(os.environ.get("MICROVM_UNIT_DIR") or host_apply.DEFAULT_UNIT_DIR)
    cluster_vms: set[str] = set()
    if host.config.cluster.enable or OCF_AGENT.exists():
        from ..cluster.plan import resource_vms  # late on purpose: only a cluster node loads the cluster's module

        cluster_vms = resource_vms()
    with err.status("planning", spinner="dots") as status:
        plan = host_apply.plan(host, Store(), unit_dir, progress=status.update, cluster_vms=cluster_vms)
    if not plan.changes:
        out.print("nothing to change")
        return
    if dry_run:
        for change in plan.changes:
            out.print(f"would {change.describe()}", soft_wrap=True, markup=False)
        return
    plan.apply(lambda line: out.print(line, soft_wrap=True, markup=False))
