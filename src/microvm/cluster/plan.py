"""``microvm cluster plan|apply``: the host file's cluster VMs as resources of the running cluster.

Planning builds each cluster VM (as `host apply` does: the same build on every node with the same
host file), refuses a cluster without fencing unless the host file allows it, and compares the
resources with the CIB. Applying copies every build to the other nodes first (only what their
stores lack), then writes the resources with ``cibadmin``: a resource never names a build its
node does not have.
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


@dataclass
class ClusterPlan:
    diff: resources.Diff
    builds: dict[str, Path]  # VM name -> runner
    nodes: list[str]  # the other nodes, which get every build

    def describe(self) -> list[str]:
        copies = [f"copy {build} (VM {name}) to {', '.join(self.nodes)}" for name, build in self.builds.items()]
        return (copies if self.nodes else []) + self.diff.describe()


def nodes(cib: ET.Element) -> list[str]:
    """The cluster's nodes but this one (node names are what ssh reaches them by)."""
    known = [node.get("uname", "") for node in cib.iterfind("./configuration/nodes/node")]
    if not known:
        return []
    here = pacemaker.local_node()
    return [name for name in known if name and name != here]


def plan(host: LoadedHost, store: Store, progress: Callable[[str], None] = lambda _: None) -> ClusterPlan:
    """What `apply` would do, building the cluster VMs on the way."""
    file, cluster = host.loaded.file, host.config.cluster
    if not cluster.enable:
        raise MicrovmError(
            f"{file}: cluster.enable is not true: this host is no cluster node", hint="[cluster] enable = true"
        )
    names = [name for name, declared in host.config.microvm.vms.items() if declared.cluster]
    builds = {
        name: build_vm(
            store, host.vms[name].config, progress=lambda step, n=name: progress(f"building {n}: {step}")
        ).runner
        for name in names
    }
    cib = pacemaker.query_cib()
    if cluster.requireFencing and (problem := pacemaker.fencing_problem(cib)):
        raise MicrovmError(
            f"{problem}: without fencing a VM can run on two nodes at once after a split; refusing",
            hint=f"add a fence device (stonith) and stonith-enabled=true, or set requireFencing = false in {file} "
            "(tests only)",
        )
    want = resources.wanted(host.config, {name: host.vms[name].config for name in names}, builds)
    return ClusterPlan(resources.diff(cib, want), builds, nodes(cib))


def apply(result: ClusterPlan, store: Store, report: Callable[[str], None]) -> None:
    """Copy the builds to the other nodes, then write the resources (added, changed, removed).

    A node that cannot be reached (down, in maintenance) does not hold the others up: the resources are
    written, its agent refuses to start a build it lacks (so the cluster runs the VM elsewhere), and the
    command fails at the end naming it, to be run again once it is back.
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
    for resource in result.diff.add:
        report(f"add resource {resource.id}")
        pacemaker.create("resources", resource.text())
    for resource, kept, why in result.diff.change:
        report(f"change resource {resource.id}: {'; '.join(why)}")
        pacemaker.replace("resources", resource.text(kept))
    for rid in result.diff.remove:
        report(f"remove resource {rid}")
        pacemaker.delete(ET.tostring(ET.Element("primitive", id=rid), encoding="unicode"))
    if missed:
        raise MicrovmError(
            f"the builds are not on {', '.join(missed)}: the cluster runs these VMs on the other nodes only",
            hint="run microvm cluster apply again once they are reachable",
        )
