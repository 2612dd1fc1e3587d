"""The resources a host file asks the cluster for, and how they differ from the cluster's configuration.

Each cluster VM is one primitive ``microvm-NAME`` of ``ocf:microvm:vm``. Only primitives with that id
prefix and that agent are ever compared, written or removed: everything else in the CIB is the
administrator's. Meta attributes set on a resource by hand (``target-role``, ``is-managed``, ...)
are kept when it is rewritten.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..model.options import HostConfig, VMConfig
from .pacemaker import PREFIX

AGENT = {"class": "ocf", "provider": "microvm", "type": "vm"}
MONITOR_INTERVAL = 10  # s
MONITOR_TIMEOUT = 30  # s
MARGIN = 30  # s beyond the VM's own start timeout: the units the VM needs, the agent's own checks


@dataclass(frozen=True)
class Resource:
    """What microvm sets on one resource: its parameters, its meta attributes, its operations' timings."""

    id: str
    params: dict[str, str]
    meta: dict[str, str]
    ops: dict[tuple[str, str], str]  # (name, interval) -> timeout

    def xml(self, kept_meta: dict[str, str] | None = None) -> ET.Element:
        """The primitive, with the meta attributes ``kept_meta`` (set by hand) besides ours."""
        primitive = ET.Element("primitive", {"id": self.id, **AGENT})
        for tag, suffix, values in (
            ("instance_attributes", "instance_attributes", self.params),
            ("meta_attributes", "meta_attributes", {**(kept_meta or {}), **self.meta}),
        ):
            if values:
                block = ET.SubElement(primitive, tag, id=f"{self.id}-{suffix}")
                for name, value in values.items():
                    ET.SubElement(block, "nvpair", id=f"{self.id}-{suffix}-{name}", name=name, value=value)
        operations = ET.SubElement(primitive, "operations")
        for (name, interval), timeout in self.ops.items():
            attributes = {"id": f"{self.id}-{name}-interval-{interval}", "name": name, "interval": interval}
            ET.SubElement(operations, "op", attributes | {"timeout": timeout})
        return primitive

    def text(self, kept_meta: dict[str, str] | None = None) -> str:
        return ET.tostring(self.xml(kept_meta), encoding="unicode")


def wanted(host: HostConfig, vms: dict[str, VMConfig], builds: dict[str, Path]) -> dict[str, Resource]:
    """The resources of the host file's cluster VMs, by id: ``vms`` their configs, ``builds`` their runners,
    by VM name. A VM that is not ``migratable`` is moved by a stop and a start (no allow-migrate)."""
    cluster = host.cluster
    slow = f"{host.microvm.host.startupTimeout + MARGIN}s"
    found = {}
    for name, build in sorted(builds.items()):
        params = {"name": name, "build": str(build)}
        if cluster.sharedStorage:
            params["shared_storage"] = cluster.sharedStorage
        params["require_fencing"] = "true" if cluster.requireFencing else "false"
        ops = {
            ("start", "0s"): slow,
            ("stop", "0s"): slow,
            ("monitor", f"{MONITOR_INTERVAL}s"): f"{MONITOR_TIMEOUT}s",
        }
        meta = {}
        if vms[name].microvm.migratable:
            meta["allow-migrate"] = "true"
            ops |= {("migrate_to", "0s"): slow, ("migrate_from", "0s"): "60s"}
        found[PREFIX + name] = Resource(PREFIX + name, params, meta, ops)
    return found


def _pairs(element: ET.Element, tag: str) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for block in element.iterfind(tag) for p in block.iterfind("nvpair")}


def ours(cib: ET.Element) -> dict[str, tuple[Resource, dict[str, str]]]:
    """The ``microvm-*`` primitives of the agent in a CIB (top level of ``resources``): each as a Resource,
    and the meta attributes set on it by others."""
    found = {}
    for primitive in cib.iterfind("./configuration/resources/primitive"):
        rid = primitive.get("id", "")
        if not rid.startswith(PREFIX) or any(primitive.get(k) != v for k, v in AGENT.items()):
            continue
        meta = _pairs(primitive, "meta_attributes")
        ops = {
            (op.get("name", ""), op.get("interval", "")): op.get("timeout", "")
            for op in primitive.iterfind("./operations/op")
        }
        mine = {k: v for k, v in meta.items() if k == "allow-migrate"}
        others = {k: v for k, v in meta.items() if k != "allow-migrate"}
        found[rid] = (Resource(rid, _pairs(primitive, "instance_attributes"), mine, ops), others)
    return found


@dataclass
class Diff:
    """The change to the CIB: resources to add, to rewrite (with what differs), to remove."""

    add: list[Resource] = field(default_factory=list)
    change: list[tuple[Resource, dict[str, str], list[str]]] = field(default_factory=list)  # new, kept meta, why
    remove: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.add or self.change or self.remove)

    def describe(self) -> list[str]:
        lines = [f"add resource {r.id} (VM {r.params['name']})" for r in self.add]
        for resource, _, why in self.change:
            lines.append(f"change resource {resource.id}: " + "; ".join(why))
        lines += [f"remove resource {rid} (the cluster stops it)" for rid in self.remove]
        return lines


def _differences(old: Resource, new: Resource) -> list[str]:
    found = []
    for what, before, after in (("", old.params, new.params), ("meta ", old.meta, new.meta)):
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                found.append(f"{what}{key} {before.get(key, '(unset)')} -> {after.get(key, '(unset)')}")
    for name, interval in sorted(old.ops.keys() | new.ops.keys()):
        a, b = old.ops.get((name, interval)), new.ops.get((name, interval))
        if a != b:
            found.append(f"op {name} {interval} timeout {a or '(none)'} -> {b or '(none)'}")
    return found


def diff(cib: ET.Element, want: dict[str, Resource]) -> Diff:
    """What makes the CIB's ``microvm-*`` resources the ``want``\\ ed ones."""
    live = ours(cib)
    result = Diff()
    for rid, resource in want.items():
        if rid not in live:
            result.add.append(resource)
        elif why := _differences(live[rid][0], resource):
            result.change.append((resource, live[rid][1], why))
    result.remove = sorted(set(live) - set(want))
    return result
