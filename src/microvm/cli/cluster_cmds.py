"""``microvm cluster plan|apply``: the host file's cluster VMs as Pacemaker resources."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..host.statedir import installed_configs
from ..store import Store
from .app import app, err, out, warn

if TYPE_CHECKING:
    from ..cluster.plan import ClusterPlan

cluster_app = typer.Typer(
    help="The Pacemaker cluster: the host file's cluster VMs as its resources.", no_args_is_help=True
)
app.add_typer(cluster_app, name="cluster")

HOST_FILE = Path("/etc/microvm/host.toml")
HostFile = Annotated[Path, typer.Argument(help="The host file (the same on every node).")]


def _plan(file: Path, store: Store) -> ClusterPlan:
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..cluster import plan
    from ..config import load_host

    host = load_host(file, installed_configs())
    warn(host.warnings)
    with err.status("planning", spinner="dots") as status:
        return plan.plan(host, store, progress=status.update)


@cluster_app.command("plan")
def plan_command(file: HostFile = HOST_FILE) -> None:
    """Build the cluster VMs; show the change to the cluster's resources and the builds to copy to other nodes."""
    planned = _plan(file, Store())
    for line in planned.describe():
        out.print(line, soft_wrap=True, markup=False)
    if not planned.diff:
        out.print("resources: nothing to change", markup=False)


@cluster_app.command("apply")
def apply_command(file: HostFile = HOST_FILE) -> None:
    """Copy each cluster VM's build to the other nodes, then write its resource ``microvm-NAME`` (cibadmin)."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..cluster import plan

    store = Store()
    planned = _plan(file, store)
    plan.apply(planned, store, lambda line: out.print(line, soft_wrap=True, markup=False))
    if not planned.diff:
        out.print("resources: nothing to change", markup=False)
