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


def installed_configs(state_dir: Path | None = None) -> dict:  # -> dict[str, VMConfig]
    """The config of every installed VM (``<stateDir>/*/current/share/microvm/vm.json``), by VM name.

    A VM whose recorded config no longer validates (written by another
    version) is left out rather than failing every command.
    """
    import json

    from pydantic import ValidationError

    from ..config.options import VMConfig

    found = {}
    for record in sorted((state_dir or default_state_dir()).glob("*/current/share/microvm/vm.json")):
        try:
            found[record.parents[3].name] = VMConfig.model_validate(json.loads(record.read_text()))
        except (OSError, ValueError, ValidationError):
            continue
    return found
