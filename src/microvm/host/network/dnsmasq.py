"""dnsmasq on the bridge: DHCPv4 with a fixed address per base VM, and router advertisements.

Supervised by the unit :mod:`.units` writes, or on a host without systemd run
as a daemon of ours (``microvm host network up``), found again by its pid file.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ... import proc
from ...control.process import stop_hard
from ...model.addresses import BASE_N_MAX, base_ipv4, base_mac, max_base_vms
from ...model.options import BasicNetwork, HostConfig
from ..plan import Change
from .record import network_dir

# dnsmasq hands these out; longer leases only delay noticing a VM that went away
LEASE_TIME = "1h"


def serves_dhcp(basic: BasicNetwork) -> bool:
    return basic.enable and basic.dhcp and bool(basic.ipv4Subnet)


def serves_ra(basic: BasicNetwork) -> bool:
    return basic.enable and basic.routerAdvertisements and bool(basic.ipv6Prefix)


def serves_anything(host: HostConfig) -> bool:
    return serves_dhcp(host.network.basic) or serves_ra(host.network.basic)


def dhcp_hosts(basic: BasicNetwork) -> str:
    """dnsmasq config with the host table: the MAC of every possible base VM -> its fixed address."""
    lines = [f"dhcp-host={base_mac(n)},{base_ipv4(basic, n)}" for n in range(min(max_base_vms(basic), BASE_N_MAX + 1))]
    return "".join(line + "\n" for line in lines)


def dhcp_hosts_path(basic: BasicNetwork, state_dir: Path | None = None) -> Path:
    return network_dir(state_dir) / f"{basic.name}.dhcp-hosts.conf"


def leases_path(bridge: str, state_dir: Path | None = None) -> Path:
    return network_dir(state_dir) / f"{bridge}.leases"


def dnsmasq_argv(host: HostConfig, state_dir: Path | None = None, foreground: bool = True) -> list[str]:
    """dnsmasq serving DHCPv4 (fixed addresses for base VMs) and router advertisements on the bridge only."""
    basic = host.network.basic
    argv = [
        proc.which("dnsmasq", purpose="for DHCP and router advertisements on the VM bridge"),
        "--conf-file=/dev/null",  # ignore /etc/dnsmasq.conf: this instance is ours alone
        f"--interface={basic.name}",
        "--bind-dynamic",  # only the bridge's addresses, even when it appears after dnsmasq starts
        "--except-interface=lo",
        "--no-hosts",
        "--no-ping",  # no 3 s ICMP probe per lease: the host table already avoids conflicts
        f"--dhcp-leasefile={leases_path(basic.name, state_dir)}",
        f"--pid-file={_pid_file(basic.name, state_dir)}" if not foreground else "--pid-file=",
    ]
    if foreground:
        argv.append("--keep-in-foreground")
    if serves_dhcp(basic):
        bridge = ipaddress.IPv4Interface(basic.ipv4Subnet)
        hosts = list(bridge.network.hosts())
        first, last = hosts[0], hosts[-1]
        argv += [
            f"--dhcp-range={first},{last},{bridge.network.netmask},{LEASE_TIME}",
            # a conf file, not --dhcp-hostsfile: dnsmasq reads it as root, before dropping to its user
            f"--conf-file={dhcp_hosts_path(basic, state_dir)}",
            "--dhcp-authoritative",
        ]
    if serves_ra(basic):
        argv += ["--enable-ra", f"--dhcp-range=::,constructor:{basic.name},ra-only"]
    return argv


def _pid_file(bridge: str, state_dir: Path | None) -> Path:
    return network_dir(state_dir) / f"{bridge}.dnsmasq.pid"


def daemon_pid(bridge: str, state_dir: Path | None = None) -> int | None:
    """The pid of our dnsmasq daemon for ``bridge``, if one runs."""
    try:
        pid = int(_pid_file(bridge, state_dir).read_text().strip())
        running = Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq"
    except (OSError, ValueError):
        return None
    return pid if running else None


def _daemon_argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]
    except OSError:
        return []


def daemon_changes(host: HostConfig, state_dir: Path | None = None) -> list[Change]:
    """Without systemd: (re)start our dnsmasq unless it runs as ``host`` asks, stop it when nothing is served."""
    if not serves_anything(host):
        return stop_daemon(host.network.basic.name, state_dir)
    pid = daemon_pid(host.network.basic.name, state_dir)
    if pid is not None and _daemon_argv(pid) == dnsmasq_argv(host, state_dir, foreground=False):
        return []
    return [StartDnsmasq(host, state_dir)]


def stop_daemon(bridge: str, state_dir: Path | None = None) -> list[Change]:
    """Stopping our dnsmasq daemon for ``bridge``, if one runs."""
    return [StopDnsmasq(bridge, state_dir)] if daemon_pid(bridge, state_dir) is not None else []


@dataclass
class StartDnsmasq(Change):
    """Run dnsmasq as a daemon (pid file in the network directory), replacing an outdated one of ours."""

    host: HostConfig
    state_dir: Path | None

    def describe(self) -> str:
        return f"start dnsmasq on {self.host.network.basic.name}"

    def apply(self) -> None:
        StopDnsmasq(self.host.network.basic.name, self.state_dir).apply()
        network_dir(self.state_dir).mkdir(parents=True, exist_ok=True)
        proc.run(dnsmasq_argv(self.host, self.state_dir, foreground=False))


@dataclass
class StopDnsmasq(Change):
    bridge: str
    state_dir: Path | None

    def describe(self) -> str:
        return f"stop dnsmasq on {self.bridge}"

    def apply(self) -> None:
        if (pid := daemon_pid(self.bridge, self.state_dir)) is not None:
            stop_hard(pid, grace=5)
        _pid_file(self.bridge, self.state_dir).unlink(missing_ok=True)
