"""The host network's systemd units: its restoration at boot, and the bridge's dnsmasq."""

from __future__ import annotations

import os
from pathlib import Path

from ...layout import helper_argv
from ...model.options import HostConfig
from .. import systemd
from ..statedir import default_state_dir
from ..unitfile import command, render
from .dnsmasq import dnsmasq_argv, serves_anything
from .record import network_dir

RESTORE_UNIT = "microvm-network.service"
DNSMASQ_PREFIX = "microvm-dnsmasq-"
DNSMASQ_UNITS = f"{DNSMASQ_PREFIX}*.service"


def dhcp_unit_name(host: HostConfig) -> str:
    return f"{DNSMASQ_PREFIX}{host.network.basic.name}.service"


def network_units(host: HostConfig, state_dir: Path | None = None) -> dict[str, str]:
    """systemd units for the host network: its restoration at boot, and the bridge's dnsmasq if it serves."""
    network = host.network
    if not (network.basic.enable or network.routed.enable or network.bridges or network.vlans):
        return {}
    restore = command(*helper_argv("network-restore", str(state_dir or default_state_dir())))
    units = {
        RESTORE_UNIT: render(
            {
                "Unit": [
                    (
                        "Description",
                        "The microvm host network (bridge, addresses, NAT) as `microvm host apply` left it",
                    ),
                    ("After", "network.target"),
                    ("Before", "microvms.target"),
                ],
                "Service": [("Type", "oneshot"), ("RemainAfterExit", "yes"), ("ExecStart", restore)],
                "Install": [("WantedBy", "multi-user.target")],
            }
        )
    }
    if serves_anything(host):
        units[dhcp_unit_name(host)] = _dnsmasq_unit(host, state_dir)
    return units


def _dnsmasq_unit(host: HostConfig, state_dir: Path | None) -> str:
    return render(
        {
            "Unit": [
                ("Description", f"DHCP and router advertisements for the microvm bridge {host.network.basic.name}"),
                ("Wants", RESTORE_UNIT),
                ("After", f"network.target {RESTORE_UNIT}"),
                ("Before", "microvms.target"),
            ],
            "Service": [
                ("ExecStartPre", command("/bin/mkdir", "-p", network_dir(state_dir))),
                ("ExecStart", command(*dnsmasq_argv(host, state_dir))),
                ("Restart", "always"),
                ("RestartSec", "1"),
            ],
            "Install": [("WantedBy", "multi-user.target")],
        }
    )


def systemd_running() -> bool:
    """Whether dnsmasq can be a systemd unit: systemd is PID 1 and we are in its network namespace.

    Inside another namespace (``ip netns exec``) a unit would serve the wrong one, so dnsmasq runs as our daemon.
    """
    try:
        same_namespace = os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        same_namespace = False
    return systemd.running() and same_namespace
