"""What the option model shares with the layers below it that must not load pydantic.

The hypervisor control helpers (``bin/microvm-shutdown`` and friends) import the
backends, and the backends need these: importing :mod:`microvm.model.options`
would cost them ~100 ms of pydantic at every VM stop.
"""

from __future__ import annotations

import os
import re
from typing import Literal, get_args

# The one list of hypervisor names; microvm.hypervisors has a module for each (dashes as underscores).
Hypervisor = Literal["qemu", "cloud-hypervisor", "firecracker", "crosvm", "kvmtool", "stratovirt", "alioth"]
HYPERVISORS: tuple[str, ...] = get_args(Hypervisor)


def host_arch() -> str:
    """This machine's CPU architecture, spelt as ``guest.arch``."""
    machine = os.uname().machine  # as platform.machine(), without importing platform (start-up time)
    return "aarch64" if machine in ("aarch64", "arm64") else machine


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # used with fullmatch: `$` also matches before a final newline


def valid_name(value: str) -> str:
    """A name that becomes a file name and a systemd instance (VMs, volumes, interfaces)."""
    if not NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit (no '/', spaces or shell characters)"
        )
    return value
