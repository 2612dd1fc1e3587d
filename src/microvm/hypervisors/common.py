"""Small helpers the non-qemu backends share: disk order, macvtap fds, shell lines.

Conventions (see ``docs/research/hypervisors.md`` section 0): the hypervisor
runs in the VM's state directory, so relative paths pass through unchanged;
the read-only system image is always the first virtio-blk disk (/dev/vda),
then the volumes in order.
"""

from __future__ import annotations

import os
import shlex
import string
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import MicrovmError
from .base import GuestArtifacts, RunnerSpec, separators

if TYPE_CHECKING:
    from ..model.options import Interface, VMConfig

MIB = 1024 * 1024
# First file descriptor the runner opens for macvtap queues (as the qemu backend: clear of stdio
# and of the descriptors a shell script commonly uses).
FIRST_FD = 10


@dataclass(frozen=True)
class Disk:
    """One virtio-blk disk in guest order."""

    name: str  # vda, vdb, ... (what the guest sees)
    path: str
    read_only: bool
    serial: str | None = None
    direct: bool = False
    image_type: str = "raw"  # microvm.volumes[].imageType
    backing: bool = False  # a qcow2 overlay over a backing file


def disks(vm: VMConfig, guest: GuestArtifacts) -> list[Disk]:
    """The system image (if any) first, then every volume in order."""
    found: list[Disk] = []
    if guest.root_image is not None:
        found.append(Disk("", os.fspath(guest.root_image), True))
    found += [
        Disk("", v.image, v.readOnly, v.serial, v.direct, v.imageType, v.backingFile is not None)
        for v in vm.microvm.volumes
    ]
    return [replace(d, name=_drive_name(i)) for i, d in enumerate(found)]


def _drive_name(index: int) -> str:
    letters = string.ascii_lowercase
    return "vd" + (letters[index] if index < 26 else letters[index // 26 - 1] + letters[index % 26])


def cmdline(guest: GuestArtifacts) -> str:
    return " ".join(guest.cmdline)


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


def true_false(flag: bool) -> str:
    return "true" if flag else "false"


def plain(value: str, what: str, hypervisor: str) -> str:
    """``value`` for a ``key=value,key=value`` argument; refuse separators it cannot escape.

    ``microvm check`` refuses such option values (``Hypervisor.plain_options``); this still
    guards the paths the build chooses (the system image).
    """
    if bad := separators(value):
        raise MicrovmError(
            f"{hypervisor} cannot take {what} {value!r}: it contains {' '.join(map(repr, bad))}, "
            "which separates its options",
            hint="rename the file or directory",
        )
    return value


def open_macvtap(spec: RunnerSpec, iface: Interface, count: int = 1) -> list[int]:
    """Have the runner open ``count`` descriptors on the macvtap's character device; return their numbers.

    Each ``(fd, target)`` in :attr:`RunnerSpec.fds` is rendered by the runner
    as ``exec FD<>"TARGET"``: the target is expanded by the shell inside double
    quotes (interface ids are restricted to ``[A-Za-z0-9_.-]``, so nothing else
    in it is special). Each open of ``/dev/tapN`` is one queue of the macvtap.
    """
    target = f"/dev/tap$(cat /sys/class/net/{iface.id}/ifindex)"
    first = FIRST_FD + len(spec.fds)
    numbers = list(range(first, first + count))
    spec.fds += [(fd, target) for fd in numbers]
    return numbers


def remove_stale_socket(path: str) -> str:
    """Shell line removing a socket left by a previous run (the hypervisor refuses to bind over it)."""
    return f"rm -f -- {shlex.quote(path)}"
