"""What the runner's bin/microvm-shutdown and -balloon, and its resume helper, do (``microvm.helpers``).

Kept free of the CLI's imports so the scripts start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MicrovmError
from ..hypervisors import Balloon, Control, Suspend, capable
from .ready import notify


def shutdown(hypervisor: str, socket: Path, timeout: float) -> None:
    """Shut the VM down gracefully, then hard after ``timeout`` seconds."""
    capable(hypervisor, Control).shutdown(socket, timeout)


def balloon(hypervisor: str, socket: Path, size: int, mem: int) -> int:
    """Set the balloon of a guest of ``mem`` MB to ``size`` MB; the size reached."""
    return capable(hypervisor, Balloon).balloon(socket, size, mem)


def resume(hypervisor: str, socket: Path, state: Path, saved_by: Path, pid: int) -> None:
    """Delete the saved state once it is loaded (before the VM runs on: it is good for one resume
    only), let the VM run (``pid``: the hypervisor, our parent), and tell systemd it is ready when
    systemd waits for that."""

    def loaded() -> None:
        for path in (state, saved_by):
            path.unlink(missing_ok=True)

    if not capable(hypervisor, Suspend).finish_resume(socket, lambda: os.getppid() == pid, loaded):
        raise MicrovmError(f"the VM did not resume from {state}")
    if notify_socket := os.environ.get("NOTIFY_SOCKET"):
        notify("READY=1", notify_socket)
