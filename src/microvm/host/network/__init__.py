"""The host network for VMs (see :mod:`.planning`), one module per job.

- :mod:`.record`: what the last apply left in ``<stateDir>/.network.json``;
- :mod:`.netlink`: pyroute2 helpers, shared with the runner's tap helpers;
- :mod:`.items`: the pieces of host state the network adds and removes;
- :mod:`.planning`: what the host file asks for, as a :class:`microvm.host.plan.Plan`;
- :mod:`.dnsmasq`: DHCP and router advertisements on the bridge;
- :mod:`.units`: the systemd units (restoration at boot, dnsmasq);
- :mod:`.restore`: what microvm-network.service runs at boot (the ``network-restore`` helper).
"""

from .netlink import add_address, iproute, link_index, link_kind
from .planning import down_plan, plan_network, restore_plan, up_plan
from .record import bridge_for_tap, recorded_routed, tap_script
from .units import network_units

__all__ = [
    "add_address",
    "bridge_for_tap",
    "down_plan",
    "iproute",
    "link_index",
    "link_kind",
    "network_units",
    "plan_network",
    "recorded_routed",
    "restore_plan",
    "tap_script",
    "up_plan",
]
