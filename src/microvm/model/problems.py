"""What a check finds: a problem with the option path it is about.

Here, below the backends and the config layer, so that both can yield them:
a backend's own check (:meth:`microvm.hypervisors.base.Hypervisor.check`) and
the cross-option rules of :mod:`microvm.config.checks`. The loader attaches the
file that set the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OptionPath = tuple[str | int, ...]


def format_path(path: OptionPath) -> str:
    """``("microvm", "interfaces", 1, "mac")`` -> ``microvm.interfaces[1].mac``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if part.replace("-", "").replace("_", "").isalnum() else f'"{part}"'
            out += f".{text}" if out else text
    return out


@dataclass(frozen=True)
class Problem:
    path: OptionPath
    message: str
    severity: Literal["error", "warning"] = "error"
    hint: str | None = None
