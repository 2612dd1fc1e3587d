"""Where VMs keep their state: one directory per VM under the state directory."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """``$MICROVM_STATE_DIR``, else /var/lib/microvms for root, else ~/.local/state/microvms."""
    if env := os.environ.get("MICROVM_STATE_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/microvms")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "microvms"


def vm_dir(name: str, state_dir: Path | None = None) -> Path:
    return (state_dir or default_state_dir()) / name
