"""What `list` and `status` print: a table on a terminal (states coloured as microvm.nix's ``microvm -l``),
the same table in plain text otherwise, or JSON (the shape is in docs/guide.md).

Light on purpose: the fast dispatch (:mod:`microvm.cli.fast`) runs these
without loading typer, rich or pydantic.
"""

from __future__ import annotations

import json
import sys

from ..errors import MicrovmError
from ..host import lifecycle, systemd
from ..host.statedir import VMState, default_state_dir
from ..layout import OCF_AGENT
from .colour import paint, use_colour

# microvm.nix's colours: a VM's name by whether it runs, its state by what it needs
STATE_COLOURS = {
    "current": "green", "stale": "yellow", "suspended": "yellow", "outdated": "red", "not booted": "red", "missing": "red",
}  # fmt: skip
COLUMNS = ("NAME", "STATE", "HYPERVISOR", "VCPU", "MEM", "ADDRESSES", "UPTIME", "NEXT")


def uptime(seconds: float | None) -> str:
    """``42s``, ``5m03s``, ``2h05m``, ``3d04h``: two units are enough to tell VMs apart."""
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit}{(s % size) // sub_size:02d}{sub}"
    return f"{s}s"


def name_colour(vm: lifecycle.Status) -> str:
    return "green" if vm.running else "yellow" if vm.booted else "red"


def row(vm: lifecycle.Status, nodes: bool) -> list[tuple[str, str | None]]:
    """The table's cells of one VM, each with its colour (and its cluster node, on a cluster node)."""
    mem = f"{vm.mem} MB" if vm.mem is not None else "-"
    node = [(vm.node or ("stopped" if vm.node == "" else "-"), None)] if nodes else []
    return [
        (vm.name, name_colour(vm)),
        (vm.state, STATE_COLOURS.get(vm.state)),
        (vm.hypervisor or "-", None),
        (str(vm.vcpu) if vm.vcpu is not None else "-", None),
        (mem, None),
        (", ".join(vm.addresses) or "-", None),
        (uptime(vm.uptime), None),
        *node,
        (vm.command or "", "bold"),
    ]


def table(vms: list[lifecycle.Status], colour: bool) -> str:
    """Aligned columns; the colour codes are added after padding so they do not count as width."""
    nodes = any(vm.node is not None for vm in vms)
    columns = [*COLUMNS[:-1], "NODE", COLUMNS[-1]] if nodes else COLUMNS
    rows = [[(c, "dim") for c in columns], *(row(vm, nodes) for vm in vms)]
    widths = [max(len(r[i][0]) for r in rows) for i in range(len(columns))]
    lines = []
    for cells in rows:
        padded = [
            paint(text, hue, colour) + " " * (w - len(text)) for (text, hue), w in zip(cells, widths, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def cluster_nodes() -> dict[str, list[str]]:
    """Where the cluster runs its VMs, by name: one crm_mon call, only on a cluster node (where `host apply`
    installed the resource agent); elsewhere no process and no import more."""
    if not OCF_AGENT.exists():
        return {}
    # late on purpose: only a cluster node loads the cluster's module (list stays fast elsewhere)
    from ..cluster.pacemaker import vm_nodes

    try:
        return vm_nodes()
    except MicrovmError as exc:
        print(f"microvm: cannot tell where the cluster runs its VMs: {exc.message}", file=sys.stderr)
        return {}


def with_nodes(vms: list[lifecycle.Status]) -> list[lifecycle.Status]:
    """``vms`` with the node of each cluster VM; one the cluster runs elsewhere needs nothing done here."""
    if not (placed := cluster_nodes()):
        return vms
    return [
        vm._replace(node=", ".join(placed[vm.name]), **({} if vm.running else {"advice": None, "command": None}))
        if vm.name in placed
        else vm
        for vm in vms
    ]


def list_command(as_json: bool) -> None:
    vms = with_nodes(lifecycle.list_vms())
    if as_json:
        print(json.dumps([vm.to_json() for vm in vms], indent=1))
    elif not vms:
        print(f"no VMs installed in {default_state_dir()}", file=sys.stderr)
    else:
        print(table(vms, use_colour(sys.stdout)))


def status_command(name: str, as_json: bool) -> None:
    state = VMState.of(name)
    if not state.installed:
        raise MicrovmError(f"VM {name!r} is not installed in {state.path.parent}")
    (vm,) = with_nodes([lifecycle.status(state)])
    if as_json:
        print(json.dumps(vm.to_json(), indent=1))
        return
    on = use_colour(sys.stdout)
    state_text = paint(vm.state, STATE_COLOURS.get(vm.state), on)
    summary = f"{paint(name, name_colour(vm), on)}: {'running' if vm.running else 'stopped'}, {state_text}"
    summary += f" ({vm.next_step})" if vm.next_step else ""
    fields = {
        "hypervisor": f"{vm.hypervisor or '-'}, {vm.vcpu or '-'} vCPU, {vm.mem or '-'} MB",
        "addresses": ", ".join(vm.addresses) or "-",
        "uptime": uptime(vm.uptime),
        "current": str(vm.current),
        "booted": str(vm.booted_runner or "-"),
        "source": vm.source or "-",
        **({"node": vm.node or "(stopped by the cluster)"} if vm.node is not None else {}),
    }
    print("\n".join([summary, *(f"{key}: {value}" for key, value in fields.items())]))
    if systemd.running():
        print(systemd.systemctl("status", "--no-pager", "--lines=5", systemd.unit(name), check=False), end="")


def error(exc: MicrovmError) -> None:
    """``error: MESSAGE`` on stderr, red on a terminal (no rich: errors of the fast commands stay fast)."""
    print(f"{paint('error:', 'red', use_colour(sys.stderr))} {exc}", file=sys.stderr)
