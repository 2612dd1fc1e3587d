"""Pacemaker's own command-line tools (``cibadmin``, ``crm_node``, ``crm_mon``), each run through microvm.proc.

The cluster configuration (the CIB) is XML; these functions read it into ElementTree and leave the
decisions to pure functions that tests can feed a CIB of their own.
"""

from __future__ import annotations

import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import CommandError, MicrovmError

TRUE = frozenset({"true", "on", "yes", "y", "1"})  # Pacemaker's booleans (crm_is_true)
FALSE = frozenset({"false", "off", "no", "n", "0"})
PREFIX = "microvm-"  # the ids of our resources: microvm-NAME


def boolean(text: str) -> bool | None:
    """A Pacemaker boolean's value, None when ``text`` is none."""
    lowered = text.strip().lower()
    return True if lowered in TRUE else False if lowered in FALSE else None


def _xml(argv: list[str], what: str) -> ET.Element:
    return _parse(_run(argv, what), argv[0], what)


def _run(argv: list[str], what: str) -> str:
    try:
        return proc.run(argv).stdout
    except CommandError as exc:
        raise MicrovmError(
            f"cannot read {what} from Pacemaker: {exc}", hint="is this node in a running cluster?"
        ) from None


def _parse(text: str, tool: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise MicrovmError(f"{tool} gave no readable XML for {what}: {exc}") from None


def query_cib() -> ET.Element:
    """The whole live CIB (or the file ``$CIB_file`` names, as every Pacemaker tool does)."""
    return _xml(["cibadmin", "--query"], "the cluster configuration")


def fencing_problem(cib: ET.Element) -> str | None:
    """Why the cluster cannot fence a node (so a VM could run twice after a split), None when it can: a fence
    device not disabled (``target-role=Stopped``), or diskless SBD (a non-zero ``stonith-watchdog-timeout``)."""
    if boolean(_property(cib, "stonith-enabled", "true")) is False:
        return "fencing is disabled in this cluster (the property stonith-enabled is false)"
    if not re.fullmatch(r"\s*[+-]?0*(\.0*)?\s*[a-z]*\s*", _property(cib, "stonith-watchdog-timeout", "0")):
        return None  # a node that loses quorum is reset by its watchdog (SBD without a disk)
    devices = list(cib.iterfind(".//resources//primitive[@class='stonith']"))
    if not devices:
        return "this cluster has no fence device (no stonith resource)"
    if all(_meta(device).get("target-role", "").lower() == "stopped" for device in devices):
        return f"every fence device of this cluster is disabled (target-role=Stopped: {', '.join(d.get('id', '') for d in devices)})"
    return None


def _property(cib: ET.Element, name: str, default: str) -> str:
    """A cluster property's value (the last set that names it)."""
    value = default
    for pair in cib.iterfind(f"./configuration/crm_config/cluster_property_set/nvpair[@name='{name}']"):
        value = pair.get("value", default)
    return value


def _meta(element: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in element.iterfind("./meta_attributes/nvpair")}


def node_names(cib: ET.Element) -> list[str]:
    """The names of the cluster's nodes, as its configuration knows them."""
    return [name for node in cib.iterfind("./configuration/nodes/node") if (name := node.get("uname", ""))]


def local_node() -> str:
    """This node's name in the cluster (``crm_node -n``); where no cluster runs (a ``CIB_file``), the host
    name, which is also Pacemaker's default node name."""
    found = proc.run(["crm_node", "-n"], check=False)
    return found.stdout.strip() if found.returncode == 0 else os.uname().nodename


def vm_nodes() -> dict[str, list[str]]:
    """Where the cluster runs each of its VMs (no node: stopped), by VM name, from one ``crm_mon`` call."""
    status = _xml(["crm_mon", "--one-shot", "--output-as=xml"], "where the cluster runs its resources")
    return {rid.removeprefix(PREFIX): nodes for rid, nodes in running_on(status).items() if rid.startswith(PREFIX)}


def running_on(status: ET.Element) -> dict[str, list[str]]:
    """crm_mon's XML -> resource id -> the nodes it is active on (none while stopped)."""
    return {
        resource.get("id", ""): [node.get("name", "") for node in resource.iterfind("node")]
        for resource in status.iterfind(".//resources//resource")
    }


def cleanup(rid: str, node: str) -> None:
    """Forget the failed operations of resource ``rid`` on ``node`` (``crm_resource --cleanup``): a start that
    failed there (its build missing) keeps the resource off the node until then, however the cause went."""
    try:
        proc.run(["crm_resource", "--cleanup", "--resource", rid, "--node", node])
    except CommandError as exc:
        raise MicrovmError(
            f"cannot clean up the failures of {rid} on {node}: {exc}",
            hint=f"crm_resource --cleanup --resource {rid} --node {node}",
        ) from None


OLD_DATA = 103  # cibadmin's exit code (pcmk_err_old_data) for a patch made from a CIB that changed since


class CibChanged(MicrovmError):
    """The CIB changed between reading it and writing the change made from it."""


@dataclass(frozen=True)
class Draft:
    """A copy of the CIB, written to in a file: the change becomes one patch (:func:`transaction`)."""

    cib: ET.Element  # as it was read
    env: dict[str, str]  # CIB_file: the copy, for the cibadmin calls that write the change into it

    def create(self, section: str, xml: str) -> None:
        """Add an object (a ``microvm-*`` primitive or constraint) to a section; cibadmin fails when its id
        exists, so an object of the same id someone else made in the meantime is never overwritten."""
        self._write(["--create", "--scope", section, "--xml-text", xml], xml)

    def replace(self, section: str, xml: str) -> None:
        """Replace the object of the same id in a section, leaving the rest of the section as it is."""
        self._write(["--replace", "--scope", section, "--xml-text", xml], xml)

    def delete(self, xml: str) -> None:
        """Delete the object matching ``xml`` (tag and id): only ours, never a look-alike of others."""
        self._write(["--delete", "--xml-text", xml], xml)

    def _write(self, args: list[str], xml: str) -> None:
        try:
            proc.run(["cibadmin", *args], env=self.env)
        except CommandError as exc:
            raise MicrovmError(
                f"Pacemaker refused the change {xml}: {exc}; nothing was written to the cluster",
                hint="microvm cluster plan shows the whole change",
            ) from None


def transaction(edit: Callable[[Draft], None]) -> None:
    """Make ``edit``'s changes to a fresh copy of the CIB and push them as one patch: one transition (a new
    resource never exists before the constraints that place it), and refused (CibChanged) when the CIB
    changed since it was read, so a change made meanwhile (a resource disabled by hand) is never undone."""
    with tempfile.TemporaryDirectory(prefix="microvm-cib-") as tmp:
        before, after, patch = (Path(tmp) / name for name in ("before.xml", "after.xml", "patch.xml"))
        text = _run(["cibadmin", "--query"], "the cluster configuration")
        before.write_text(text)
        after.write_text(text)
        edit(Draft(_parse(text, "cibadmin", "the cluster configuration"), {"CIB_file": str(after)}))
        diff = proc.run(["crm_diff", "--original", before, "--new", after], check=False)
        if diff.returncode == 0:  # no difference
            return
        if diff.returncode != 1:
            raise CommandError(
                ["crm_diff", "--original", str(before), "--new", str(after)], diff.returncode, diff.stderr
            )
        patch.write_text(diff.stdout)
        pushed = proc.run(["cibadmin", "--patch", "--xml-file", patch], check=False)
        if pushed.returncode == OLD_DATA:
            raise CibChanged("the cluster configuration changed while this change was made from it")
        if pushed.returncode != 0:
            raise MicrovmError(
                f"Pacemaker refused the change: {pushed.stderr.strip()}; nothing was written to the cluster",
                hint="microvm cluster plan shows the whole change",
            )
