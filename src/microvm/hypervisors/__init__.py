"""Hypervisor backends, one module each, behind :class:`base.Hypervisor`."""

from __future__ import annotations

from .base import (
    Balloon,
    Control,
    Feature,
    GuestArtifacts,
    Hypervisor,
    Migrate,
    Migration,
    RunnerSpec,
    Suspend,
    separators,
)
from .registry import available, capable, get

__all__ = [
    "Balloon",
    "Control",
    "Feature",
    "GuestArtifacts",
    "Hypervisor",
    "Migrate",
    "Migration",
    "RunnerSpec",
    "Suspend",
    "available",
    "capable",
    "get",
    "separators",
]
