"""Hypervisor backends, one module each, behind :class:`base.Hypervisor`."""

from __future__ import annotations

import importlib

from ..errors import MicrovmError
from .base import Feature, GuestArtifacts, Hypervisor, RunnerSpec

# hypervisor name -> module defining class ``Backend``
MODULES = {
    "qemu": "qemu",
    "cloud-hypervisor": "cloud_hypervisor",
    "firecracker": "firecracker",
    "crosvm": "crosvm",
    "kvmtool": "kvmtool",
    "stratovirt": "stratovirt",
    "alioth": "alioth",
}


def get(name: str) -> Hypervisor:
    """The backend for ``name``."""
    if name not in MODULES:
        raise MicrovmError(f"unknown hypervisor {name!r}; known: {', '.join(MODULES)}")
    try:
        module = importlib.import_module(f".{MODULES[name]}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{MODULES[name]}":
            raise
        raise MicrovmError(f"hypervisor {name!r} is not available in this version of microvm") from None
    return module.Backend()


def available() -> list[Hypervisor]:
    """Every backend this version has."""
    found = []
    for name in MODULES:
        try:
            found.append(get(name))
        except MicrovmError:
            continue
    return found


__all__ = ["Feature", "GuestArtifacts", "Hypervisor", "RunnerSpec", "available", "get"]
