"""Register running VMs with systemd-machined (``microvm.registerWithMachined``).

The runner's ``bin/microvm-register`` and ``bin/microvm-unregister`` call these;
``microvm@``'s ExecStartPost/ExecStopPost run them privileged. machined then
lists the VM (``machinectl list``) under its unit and stops that unit on
``machinectl terminate``. The calls go through ``busctl`` (org.freedesktop.machine1,
``RegisterMachineWithNetwork``), which bus-activates machined when it is not running.
"""

from __future__ import annotations

from pathlib import Path

from .. import proc

DESTINATION = ("org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager")
SERVICE = "microvm"  # the machine's "service" field: who registered it


def register_argv(name: str, uuid: str, pid: int, ifindexes: list[int]) -> list[str]:
    """busctl's arguments for ``RegisterMachineWithNetwork(name, id, service, class, leader, root, ifindexes)``."""
    id_bytes = [str(b) for b in bytes.fromhex(uuid)]
    return [
        "call",
        *DESTINATION,
        "RegisterMachineWithNetwork",
        "sayssusai",
        name,
        str(len(id_bytes)),
        *id_bytes,
        SERVICE,
        "vm",
        str(pid),
        "/",
        str(len(ifindexes)),
        *map(str, ifindexes),
    ]


def _ifindex(interface: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{interface}/ifindex").read_text())
    except OSError:
        return None  # not created (yet): machined just does not show it


def register(name: str, uuid: str, pid: int, interface: list[str]) -> None:
    """Register VM ``name`` whose hypervisor is ``pid``, with its host ``interface``s (taps)."""
    ifindexes = [i for i in map(_ifindex, interface) if i is not None]
    proc.run([proc.which("busctl"), *register_argv(name, uuid, pid, ifindexes)])


def unregister(name: str) -> None:
    """Drop the registration (the unit is stopping already); nothing if machined does not know it."""
    proc.run([proc.which("busctl"), "call", *DESTINATION, "UnregisterMachine", "s", name], check=False)
