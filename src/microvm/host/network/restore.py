"""What microvm-network.service runs at boot (``python -m microvm.helpers network-restore STATE_DIR``)."""

from __future__ import annotations

from pathlib import Path

from .planning import restore_plan


def restore(state_dir: Path | None) -> None:
    """Bring back the bridge, addresses, NAT and DHCP that the last ``up``/``host apply`` recorded."""
    restore_plan(state_dir).apply(print)
