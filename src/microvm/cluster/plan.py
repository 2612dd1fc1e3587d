"""``microvm cluster plan|apply``: the host file's cluster VMs as resources of the running cluster.

Planning builds each cluster VM (as `host apply` does: the same build on every node with the same
host file), refuses a cluster without fencing unless the host file allows it, and compares the
resources and constraints with the CIB. Applying copies every build to the other nodes first (only
what their stores lack), then writes the resources and constraints with ``cibadmin``: a resource
never names a build its node does not have.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import LoadedHost
from ..errors import MicrovmError
from ..remote.copy import copy_to
from ..remote.ssh import Remote
from ..runner.build import build_vm
from ..store import Store
from . import pacemaker, resources

ATTEMPTS = 3  # writes of the change, each made from a fresh read of the CIB, while others change it meanwhile


@dataclass
class ClusterPlan:
    """What `cluster apply` does, as `cluster plan` shows it: kept between the two so apply builds nothing."""

    diff: resources.Diff  # from the CIB as it was when planned: what plan shows
    want: dict[str, resources.Item]  # by id: apply makes the diff again from the CIB it writes to
    builds: dict[str, Path]  # VM name -> runner
    nodes: list[str]  # the other nodes, which get every build

    def describe(self) -> list[str]:
        copies = [f"copy {build} (VM {name}) to {', '.join(self.nodes)}" for name, build in self.builds.items()]
        return (copies if self.nodes else []) + self.diff.describe()


def nodes(cib: ET.Element) -> list[str]:
    """The cluster's nodes but this one (node names are what ssh reaches them by)."""
    known = pacemaker.node_names(cib)
    if not known:
        return []
    here = pacemaker.local_node()
    return [name for name in known if name != here]


def resource_vms() -> set[str]:
    """The VMs the running cluster has a resource of (``microvm-NAME`` of the agent); none where no cluster
    answers. `host apply` asks before it takes a VM or the host out of the cluster."""
    try:
        cib = pacemaker.query_cib()
    except MicrovmError:
        return set()
    return {rid.removeprefix(pacemaker.PREFIX) for rid in resources.ours(cib)}


def resource_builds() -> list[Path]:
    """The builds the cluster's resources name (`gc` keeps them: fail-over starts them on this node). Fails when
    the cluster does not answer: without knowing them, a gc could delete what a fail-over needs."""
    try:
        cib = pacemaker.query_cib()
    except MicrovmError as exc:
        raise MicrovmError(
            f"cannot tell which builds the cluster's VMs use: {exc.message}",
            hint="run it while this node's cluster runs (CIB_file=/var/lib/pacemaker/cib/cib.xml when it is stopped)",
        ) from None
    return [Path(build) for resource, _ in resources.ours(cib).values() if (build := resource.params.get("build"))]


def _unknown_nodes(host: LoadedHost, names: list[str], cib: ET.Element) -> None:
    """Refuse a ``preferNodes`` entry that is no node of the cluster (a typo would silently prefer nothing)."""
    known = pacemaker.node_names(cib)
    wrong = [
        f"{host.loaded.file}: microvm.vms.{name}.preferNodes[{i}]: {node!r} is not a node of this cluster"
        for name in names
        for i, node in enumerate(host.config.microvm.vms[name].preferNodes)
        if node not in known
    ]
    if wrong:
        raise MicrovmError("\n".join(wrong), hint=f"its nodes (crm_node -l): {', '.join(known) or 'none yet'}")


def _refuse_held(host: LoadedHost, cib: ET.Element, changes: resources.Diff) -> None:
    """Refuse to remove a resource that others' constraints name (Pacemaker would refuse the deletion half-way
    through the apply): they are not microvm's to delete."""
    for gone in changes.only(resources.Resource).remove:
        if theirs := resources.named_by_others(cib, gone.id):
            deletes = [f"cibadmin --delete --xml-text '<{c.tag} id=\"{c.get('id')}\"/>'" for c in theirs]
            raise MicrovmError(
                f"{host.loaded.file}: runs no cluster VM {gone.id.removeprefix(pacemaker.PREFIX)} any more, but "
                f"constraints that are not microvm's name its resource {gone.id}: "
                f"{', '.join(c.get('id', '') for c in theirs)}; Pacemaker cannot delete the resource under them",
                hint=f"remove them first: crm_resource --clear --resource {gone.id} (those of --move and --ban), "
                f"or {'; '.join(deletes)}",
            )


def plan(host: LoadedHost, store: Store, progress: Callable[[str], None] = lambda _: None) -> ClusterPlan:
    """What `apply` would do, building the cluster VMs on the way."""
    file, cluster = host.loaded.file, host.config.cluster
    if not cluster.enable:
        raise MicrovmError(
            f"{file}: cluster.enable is not true: this host is no cluster node", hint="[cluster] enable = true"
        )
    names = [name for name, declared in host.config.microvm.vms.items() if declared.cluster]
    cib = pacemaker.query_cib()  # the refusals first: they take no time, the builds may take minutes
    if cluster.requireFencing and (problem := pacemaker.fencing_problem(cib)):
        raise MicrovmError(
            f"{problem}: without fencing a VM can run on two nodes at once after a split; refusing",
            hint=f"add a fence device (stonith) and stonith-enabled=true, or set requireFencing = false in {file} "
            "(tests only)",
        )
    _unknown_nodes(host, names, cib)
    builds = {
        name: build_vm(
            store, host.vms[name].config, progress=lambda step, n=name: progress(f"building {n}: {step}")
        ).runner
        for name in names
    }
    want = resources.wanted(host.config, {name: host.vms[name].config for name in names}, builds)
    want |= resources.constraints(host.config)
    changes = resources.diff(cib, want)
    _refuse_held(host, cib, changes)
    return ClusterPlan(changes, want, builds, nodes(cib))


def apply(result: ClusterPlan, store: Store, report: Callable[[str], None]) -> None:
    """Copy the builds to the other nodes, then write the resources and constraints (added, changed, removed).

    A node that cannot be reached (down, in maintenance) does not hold the others up: the resources are
    written, its agent refuses to start a build it lacks (so the cluster runs the VM elsewhere), and the
    command fails at the end naming it, to be run again once it is back. Once a run has copied the builds
    there, the failures its agent had for want of them are cleaned up, so the cluster may run the VMs there.
    """
    missed = []
    for node in result.nodes:
        try:
            for name, build in result.builds.items():
                copied = copy_to(Remote.parse(node), str(build), store)
                report(f"{node}: build of {name}: {len(copied.entries)} of {copied.total} store entries sent")
        except MicrovmError as exc:
            report(f"{node}: the builds were not copied: {exc.message}")
            missed.append(node)
    _write(result.want, report)
    for node in (n for n in result.nodes if n not in missed):
        for name in result.builds:
            pacemaker.cleanup(pacemaker.PREFIX + name, node)
    if missed:
        raise MicrovmError(
            f"the builds are not on {', '.join(missed)}: the cluster runs these VMs on the other nodes only",
            hint="run microvm cluster apply again once they are reachable",
        )


def _write(want: dict[str, resources.Item], report: Callable[[str], None]) -> None:
    """Make the CIB's resources and constraints ``want``: read it again after the copies (which take minutes),
    and write the whole change as one patch (pacemaker.transaction), made again when the CIB changed meanwhile."""
    said: list[str] = []  # what the attempt that is written did
    for attempt in range(ATTEMPTS):
        said.clear()
        try:
            pacemaker.transaction(lambda draft: _edit(draft, resources.diff(draft.cib, want), said.append))
        except pacemaker.CibChanged as exc:
            if attempt == ATTEMPTS - 1:
                raise MicrovmError(f"{exc} ({ATTEMPTS} times); nothing was written", hint="run it again") from None
            continue
        for line in said:
            report(line)
        return


def _edit(draft: pacemaker.Draft, diff: resources.Diff, report: Callable[[str], None]) -> None:
    """Stale constraints go first, then the resources change, and new or changed constraints come last: no
    constraint ever names a resource that is not there (cibadmin checks each step)."""
    mine, placed = diff.only(resources.Resource), diff.only(resources.Constraint)
    for step in (resources.Diff(remove=placed.remove), mine, resources.Diff(placed.add, placed.change)):
        for item in step.add:
            report(f"add {item.what}")
            draft.create(item.section, item.text())
        for item, live, why in step.change:
            report(f"change {item.what}: {'; '.join(why)}")
            draft.replace(item.section, item.text(live))
        for item in step.remove:
            report(f"remove {item.what}")
            draft.delete(ET.tostring(ET.Element(item.tag, id=item.id), encoding="unicode"))
