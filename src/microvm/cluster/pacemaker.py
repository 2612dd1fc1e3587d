"""Pacemaker's own command-line tools (``cibadmin``, ``crm_node``, ``crm_mon``), each run through microvm.proc.

The cluster configuration (the CIB) is XML; these functions read it into ElementTree and leave the
decisions to pure functions that tests can feed a CIB of their own.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

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
    try:
        return ET.fromstring(proc.run(argv).stdout)
    except CommandError as exc:
        raise MicrovmError(
            f"cannot read {what} from Pacemaker: {exc}", hint="is this node in a running cluster?"
        ) from None
    except ET.ParseError as exc:
        raise MicrovmError(f"{argv[0]} gave no readable XML for {what}: {exc}") from None


def query_cib() -> ET.Element:
    """The whole live CIB (or the file ``$CIB_file`` names, as every Pacemaker tool does)."""
    return _xml(["cibadmin", "--query"], "the cluster configuration")


def fencing_problem(cib: ET.Element) -> str | None:
    """Why the cluster cannot fence a node (so a VM could run twice after a split), None when it can."""
    value = "true"
    for pair in cib.iterfind("./configuration/crm_config/cluster_property_set/nvpair[@name='stonith-enabled']"):
        value = pair.get("value", "true")
    if boolean(value) is False:
        return "fencing is disabled in this cluster (the property stonith-enabled is false)"
    if cib.find(".//resources//primitive[@class='stonith']") is None:
        return "this cluster has no fence device (no stonith resource)"
    return None


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


def create(section: str, xml: str) -> None:
    """Add an object (a ``microvm-*`` primitive) to a section of the CIB; fails when its id exists."""
    _write(["--create", "--scope", section, "--xml-text", xml])


def replace(section: str, xml: str) -> None:
    """Replace the object of the same id in a section of the CIB, leaving the rest of the section as it is."""
    _write(["--replace", "--scope", section, "--xml-text", xml])


def delete(xml: str) -> None:
    """Delete the object matching ``xml`` (tag and id)."""
    _write(["--delete", "--xml-text", xml])


def _write(args: list[str]) -> None:
    try:
        proc.run(["cibadmin", *args])
    except CommandError as exc:
        raise MicrovmError(f"Pacemaker refused the change: {exc}") from None
