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
    return importlib.import_module(f".{MODULES[name]}", __name__).Backend()


def available() -> list[Hypervisor]:
    """Every backend, in the order of MODULES."""
    return [get(name) for name in MODULES]


__all__ = ["Feature", "GuestArtifacts", "Hypervisor", "RunnerSpec", "available", "get"]
