"""Finding a backend by name: one module per name in :data:`microvm.model.names.HYPERVISORS`.

Its own module so that the interface (:mod:`.base`) can ask for the other backends (to suggest one
that can) without importing the package that imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

from ..errors import MicrovmError
from ..model.names import HYPERVISORS

if TYPE_CHECKING:
    from .base import Balloon, Control, Hypervisor, Suspend

C = TypeVar("C", "Control", "Balloon", "Suspend")


def get(name: str) -> Hypervisor:
    """The backend for ``name``: class ``Backend`` of the module named after it (``cloud-hypervisor``: ``cloud_hypervisor``)."""
    if name not in HYPERVISORS:
        raise MicrovmError(f"unknown hypervisor {name!r}; known: {', '.join(HYPERVISORS)}")
    return importlib.import_module(f"{__package__}.{name.replace('-', '_')}").Backend()


def available() -> list[Hypervisor]:
    """Every backend, in the order of HYPERVISORS."""
    return [get(name) for name in HYPERVISORS]


def capable(name: str, capability: type[C]) -> C:
    """The backend for ``name`` as its control side ``capability``; a clear error if it has none."""
    backend = get(name)
    if not isinstance(backend, capability):
        others = [b.name for b in available() if isinstance(b, capability)]
        raise MicrovmError(f"{name} has no {capability.what}", hint=f"hypervisors with one: {', '.join(others)}")
    return backend
