"""Talking to systemd: whether it runs the host, and the VM's units through systemctl."""

from __future__ import annotations

from pathlib import Path

from .. import proc
from ..errors import MicrovmError

UNIT_DIR = Path("/etc/systemd/system")
RUNTIME_UNIT_DIR = Path("/run/systemd/system")  # gone at reboot
# the drop-ins of a VM the cluster runs: `host apply`'s (in UNIT_DIR) and the agent's (in RUNTIME_UNIT_DIR, for
# a VM no host file declares). systemd reads a unit's drop-ins in the order of their names, the last setting
# wins: these sort after every other drop-in of the VM (overrides.conf: unitOverrides), so Restart=no stays.
CLUSTER_DROPIN = "zz-cluster.conf"
AGENT_DROPIN = "zz-microvm-cluster.conf"


def unit(name: str) -> str:
    return f"microvm@{name}.service"


def cluster_managed(name: str) -> bool:
    """The cluster runs VM ``name`` (`host apply` or the cluster's agent gave its unit the cluster's drop-in):
    systemctl must not."""
    return (UNIT_DIR / f"{unit(name)}.d" / CLUSTER_DROPIN).exists() or agent_dropin(name).exists()


def agent_dropin(name: str) -> Path:
    """The cluster agent's runtime drop-in of VM ``name``'s unit."""
    return RUNTIME_UNIT_DIR / f"{unit(name)}.d" / AGENT_DROPIN


def running() -> bool:
    """systemd is PID 1 (its own test, sd_booted: /run/systemd/system exists)."""
    return Path("/run/systemd/system").is_dir()


def require(what: str, name: str) -> None:
    if not running():
        raise MicrovmError(
            f"cannot {what} {name!r}: systemd is not running here (PID 1 is not systemd), so no unit runs VMs",
            hint=f"run it in the foreground instead: microvm run {name}",
        )


def systemctl(*args: str, check: bool = True) -> str:
    return proc.run(["systemctl", *args], check=check).stdout


def active_state(name: str) -> str:
    """active, activating, deactivating, failed, inactive ... of VM ``name``'s unit."""
    return systemctl("show", "-P", "ActiveState", unit(name), check=False).strip()


def is_active(name: str) -> bool:
    """VM ``name``'s microvm@ unit is active."""
    return is_active_unit(unit(name))


def is_active_unit(unit_name: str) -> bool:
    return running() and proc.run(["systemctl", "is-active", "--quiet", unit_name], check=False).returncode == 0


def active_units(units: list[str]) -> set[str]:
    """Which of ``units`` are active, in one systemctl call (none without systemd)."""
    if not units or not running():
        return set()
    states = proc.run(["systemctl", "is-active", *units], check=False).stdout.split()
    return {u for u, state in zip(units, states, strict=False) if state == "active"}


def control(action: str, name: str) -> None:
    """``systemctl start|stop|restart microvm@NAME.service``."""
    require(action, name)
    systemctl(action, unit(name))
