"""The resources a host file asks the cluster for, and how they differ from the cluster's configuration.

Each cluster VM is one primitive ``microvm-NAME`` of ``ocf:microvm:vm``, and its ``preferNodes``, ``after``
and ``apartFrom`` are constraints ``microvm-NAME..prefers..NODE``, ``microvm-NAME..after..OTHER`` and
``microvm-A..apart..B`` (``..`` is in no VM name: no id of ours can be another's). Only primitives with
that id prefix and that agent, and constraints with that prefix and a ``..``, are ever compared, written
or removed: everything else in the CIB is the administrator's. A resource is rewritten from the CIB's own
element with only what microvm sets overwritten: meta attributes set by hand (``target-role``, ...), op
attributes (``on-fail``, ``OCF_CHECK_LEVEL``), ops microvm did not write, utilization and rules are kept.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..model.options import INFINITY, HostConfig, VMConfig
from .pacemaker import PREFIX

AGENT = {"class": "ocf", "provider": "microvm", "type": "vm"}
MINE = ("allow-migrate", "resource-stickiness")  # the meta attributes microvm sets; the others are kept
PARAMS = ("name", "build", "shared_storage", "require_fencing")  # the parameters microvm sets
PREFERENCE = 10  # the score of the last of a VM's preferNodes, 10 more for each before it: below the stickiness
SEP = ".."  # between the names in a constraint's id: no VM name has it
REFERENCES = ("rsc", "with-rsc", "first", "then")  # the attributes by which a constraint names a resource
DEFAULT_TIMEOUT = 150  # s, an action's when nothing else says (host.startupTimeout's default)
# the agent's operations: timeout and interval (0: not recurring), in s. The agent's meta-data advertises them;
# the resources take the monitor's and migrate_from's (start, stop and migrate_to follow the host's startupTimeout)
OPERATIONS = {
    "start": (DEFAULT_TIMEOUT, 0),
    "stop": (DEFAULT_TIMEOUT, 0),
    "monitor": (30, 10),
    "migrate_to": (DEFAULT_TIMEOUT, 0),
    "migrate_from": (60, 0),
    "meta-data": (5, 0),
    "validate-all": (30, 0),
    "reload-agent": (30, 0),
}
MARGIN = 30  # s beyond the VM's own start timeout: the units the VM needs, the agent's own checks


@dataclass(frozen=True)
class Resource:
    """What microvm sets on one resource: its parameters, its meta attributes, its operations' timings."""

    id: str
    params: dict[str, str]
    meta: dict[str, str]
    ops: dict[tuple[str, str], str]  # (name, interval) -> timeout
    section = "resources"
    tag = "primitive"

    @property
    def what(self) -> str:
        return f"resource {self.id}"

    def explain(self) -> str:
        return f"VM {self.params['name']}"

    def differences(self, new: Resource) -> list[str]:
        """What ``new`` changes in this resource (as it is in the CIB), nothing when it is the same."""
        found = _changed(self.params, new.params) + _changed(self.meta, new.meta, "meta ")
        for name, interval in sorted(self.ops.keys() | new.ops.keys()):
            a, b = self.ops.get((name, interval)), new.ops.get((name, interval))
            if a != b:
                found.append(f"op {name} {interval} timeout {a or '(none)'} -> {b or '(none)'}")
        return found

    def xml(self, live: ET.Element | None = None) -> ET.Element:
        """The primitive: a new one, or ``live`` (the CIB's) with only what microvm sets overwritten."""
        primitive = ET.Element("primitive", {"id": self.id, **AGENT}) if live is None else copy.deepcopy(live)
        _set_pairs(primitive, "instance_attributes", f"{self.id}-instance_attributes", self.params, PARAMS)
        _set_pairs(primitive, "meta_attributes", f"{self.id}-meta_attributes", self.meta, MINE)
        if (operations := primitive.find("operations")) is None:
            operations = ET.SubElement(primitive, "operations")
        for op in operations.findall("op"):  # ours no longer wanted (migrate_* of a VM no longer migratable)
            key = (op.get("name", ""), op.get("interval", ""))
            if op.get("id") == _op_id(self.id, *key) and key not in self.ops:
                operations.remove(op)
        for (name, interval), timeout in self.ops.items():
            found = [op for op in operations.iterfind("op") if (op.get("name"), op.get("interval")) == (name, interval)]
            op = found[0] if found else ET.SubElement(operations, "op", id=_op_id(self.id, name, interval), name=name)
            op.set("interval", interval)
            op.set("timeout", timeout)
        return primitive

    def text(self, live: ET.Element | None = None) -> str:
        return ET.tostring(self.xml(live), encoding="unicode")


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
            ("monitor", f"{OPERATIONS['monitor'][1]}s"): f"{OPERATIONS['monitor'][0]}s",
        }
        meta = {"resource-stickiness": str(cluster.stickiness)}
        if vms[name].microvm.migratable:
            meta["allow-migrate"] = "true"
            ops |= {("migrate_to", "0s"): slow, ("migrate_from", "0s"): f"{OPERATIONS['migrate_from'][0]}s"}
        found[PREFIX + name] = Resource(PREFIX + name, params, meta, ops)
    return found


def _op_id(rid: str, name: str, interval: str) -> str:
    """The id microvm gives an op it writes (how it knows its own from others')."""
    return f"{rid}-{name}-interval-{interval}"


def _set_pairs(element: ET.Element, tag: str, block_id: str, values: dict[str, str], names: tuple[str, ...]) -> None:
    """Make the nvpairs ``names`` of ``element``'s ``tag`` blocks the ``values``: set, added (to the first block,
    made when there is none) or removed (one of ``names`` not in ``values``); the other nvpairs stay."""
    blocks = element.findall(tag)
    for block in blocks:
        for pair in block.findall("nvpair"):
            if pair.get("name") in names and pair.get("name") not in values:
                block.remove(pair)
    for name, value in values.items():
        found = [pair for block in blocks for pair in block.iterfind("nvpair") if pair.get("name") == name]
        if not found and not blocks:
            blocks = [ET.SubElement(element, tag, id=block_id)]
        pair = found[0] if found else ET.SubElement(blocks[0], "nvpair", id=f"{block_id}-{name}", name=name)
        pair.set("value", value)


def _pairs(element: ET.Element, tag: str) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for block in element.iterfind(tag) for p in block.iterfind("nvpair")}


def ours(cib: ET.Element) -> dict[str, tuple[Resource, ET.Element]]:
    """The ``microvm-*`` primitives of the agent in a CIB (top level of ``resources``): each as a Resource
    (what microvm sets on it), and its element."""
    found = {}
    for primitive in cib.iterfind("./configuration/resources/primitive"):
        rid = primitive.get("id", "")
        if not rid.startswith(PREFIX) or any(primitive.get(k) != v for k, v in AGENT.items()):
            continue
        meta = {k: v for k, v in _pairs(primitive, "meta_attributes").items() if k in MINE}
        ops = {  # those microvm wrote (by their ids): others' stay as they are
            key: op.get("timeout", "")
            for op in primitive.iterfind("./operations/op")
            if op.get("id") == _op_id(rid, *(key := (op.get("name", ""), op.get("interval", ""))))
        }
        found[rid] = (Resource(rid, _pairs(primitive, "instance_attributes"), meta, ops), primitive)
    return found


@dataclass(frozen=True)
class Constraint:
    """One constraint microvm sets: its element (``rsc_location``, ``rsc_order``, ``rsc_colocation``) and
    attributes, and what it means in words."""

    tag: str
    id: str
    attrs: dict[str, str]  # all but the id
    meaning: str = ""
    section = "constraints"

    @property
    def what(self) -> str:
        return f"constraint {self.id}"

    def explain(self) -> str:
        return self.meaning

    def differences(self, new: Constraint) -> list[str]:
        return _changed({"element": self.tag, **self.attrs}, {"element": new.tag, **new.attrs})

    def text(self, live: ET.Element | None = None) -> str:
        """The element (all of it microvm's: nothing of the live one to keep)."""
        return ET.tostring(ET.Element(self.tag, {"id": self.id, **self.attrs}), encoding="unicode")


def _changed(before: dict[str, str], after: dict[str, str], what: str = "") -> list[str]:
    keys = sorted(before.keys() | after.keys())
    return [
        f"{what}{k} {before.get(k, '(unset)')} -> {after.get(k, '(unset)')}"
        for k in keys
        if before.get(k) != after.get(k)
    ]


def constraints(host: HostConfig) -> dict[str, Constraint]:
    """The constraints of the host file's cluster VMs, by id: their ``preferNodes`` (a location of a positive
    score per node, the first the highest), ``after`` (a mandatory order: the other one starts first and stops
    last) and ``apartFrom`` (a colocation of -INFINITY, one per pair: Pacemaker places its ``with-rsc`` first, so
    with too few nodes the VM that names the other is the one left stopped, of two naming each other the first
    by name)."""
    found: dict[str, Constraint] = {}

    def add(tag: str, cid: str, attrs: dict[str, str], meaning: str) -> None:
        found[PREFIX + cid] = Constraint(tag, PREFIX + cid, attrs, meaning)

    for name, declared in sorted(host.microvm.vms.items()):
        if not declared.cluster:
            continue
        for i, node in enumerate(declared.preferNodes):
            score = str(PREFERENCE * (len(declared.preferNodes) - i))
            add("rsc_location", f"{name}{SEP}prefers{SEP}{node}", {"rsc": PREFIX + name, "node": node, "score": score},
                f"{name} prefers {node}: score {score}")  # fmt: skip
        for other in declared.after:
            attrs = {"first": PREFIX + other, "then": PREFIX + name, "kind": "Mandatory"}
            add("rsc_order", f"{name}{SEP}after{SEP}{other}", attrs, f"{other} starts before {name}, stops after it")
        for other in declared.apartFrom:
            mutual = other in host.microvm.vms and name in host.microvm.vms[other].apartFrom
            yields, wins = sorted((name, other)) if mutual else (name, other)
            attrs = {"rsc": PREFIX + yields, "with-rsc": PREFIX + wins, "score": f"-{INFINITY}"}
            first, second = sorted((name, other))  # one id for the pair, whichever names the other
            add("rsc_colocation", f"{first}{SEP}apart{SEP}{second}", attrs,
                f"{yields} never on {wins}'s node; {wins} is placed first")  # fmt: skip
    return found


def ours_constraints(cib: ET.Element) -> dict[str, Constraint]:
    """The constraints microvm wrote in a CIB: its prefix and ``..`` in their ids."""
    return {
        element.get("id", ""): Constraint(
            element.tag, element.get("id", ""), {k: v for k, v in element.items() if k != "id"}
        )
        for element in cib.iterfind("./configuration/constraints/*")
        if element.get("id", "").startswith(PREFIX) and SEP in element.get("id", "")
    }


def named_by_others(cib: ET.Element, rid: str) -> list[ET.Element]:
    """The constraints not of microvm that name resource ``rid`` (Pacemaker refuses to delete it under them:
    ``crm_resource --move`` and ``--ban`` leave such constraints)."""
    mine = ours_constraints(cib)
    return [
        element
        for element in cib.iterfind("./configuration/constraints/*")
        if element.get("id", "") not in mine
        and any(
            value == rid and (key in REFERENCES or (part.tag == "resource_ref" and key == "id"))
            for part in element.iter()
            for key, value in part.items()
        )
    ]


Item = Resource | Constraint


@dataclass
class Diff:
    """The change to the CIB: resources and constraints to add, to rewrite (with what differs), to remove."""

    add: list[Item] = field(default_factory=list)
    change: list[tuple[Item, ET.Element | None, list[str]]] = field(default_factory=list)  # new, live, why
    remove: list[Item] = field(default_factory=list)  # as they are in the CIB

    def __bool__(self) -> bool:
        return bool(self.add or self.change or self.remove)

    def only(self, kind: type) -> Diff:
        """The part of the change to items of ``kind`` (resources or constraints)."""
        return Diff(
            [i for i in self.add if isinstance(i, kind)],
            [c for c in self.change if isinstance(c[0], kind)],
            [i for i in self.remove if isinstance(i, kind)],
        )

    def describe(self) -> list[str]:
        lines = [f"add {item.what} ({item.explain()})" for item in self.add]
        lines += [f"change {item.what}: " + "; ".join(why) + _restarts(item, why) for item, _, why in self.change]
        for item in self.remove:
            lines.append(f"remove {item.what}" + (" (the cluster stops it)" if isinstance(item, Resource) else ""))
        return lines


def _restarts(item: Item, why: list[str]) -> str:
    """What a change costs the running VM: a new build is a restart (the agent reloads only shared_storage and
    require_fencing)."""
    if isinstance(item, Resource) and any(reason.startswith("build ") for reason in why):
        return f" (Pacemaker restarts VM {item.params['name']}: a shutdown and a boot)"
    return ""


def diff(cib: ET.Element, want: dict[str, Item]) -> Diff:
    """What makes the CIB's resources and constraints of ours the ``want``\\ ed ones (by id)."""
    result = Diff()
    live_resources = ours(cib)
    elements = {rid: element for rid, (_, element) in live_resources.items()}
    live: dict[str, Item] = {rid: resource for rid, (resource, _) in live_resources.items()}
    live |= ours_constraints(cib)
    for rid, item in want.items():
        if rid not in live:
            result.add.append(item)
        elif why := live[rid].differences(item):  # the same id: the same kind (constraints' ids have "..")
            result.change.append((item, elements.get(rid), why))
    result.remove = [live[rid] for rid in sorted(set(live) - set(want))]
    return result
