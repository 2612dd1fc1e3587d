"""Tell systemd when a VM is ready (``microvm.host.useNotifySockets``: ``microvm@`` is Type=notify).

The runner calls this (``python -m microvm.helpers ready-...``) before it execs
the hypervisor, and only when systemd gave it a ``$NOTIFY_SOCKET``:

``ready-now``
    The VM has no readiness port: it is ready as its hypervisor starts.
``ready-forward SOCKET --pid PID``
    In the background (PID: the runner's shell, which becomes the
    hypervisor): connect to the hypervisor's end of the guest's readiness
    port (a unix socket that qemu serves) and pass on what the guest writes
    there, one message per line. Only ``READY=1`` and ``STATUS=...``
    go through: a guest must not set the unit's main PID or anything else.
    Ends when the hypervisor closes the socket, or exits before serving it.

Each message is followed by ``BARRIER=1`` and we wait until systemd has read
it: systemd attributes a message to a unit by its sender's PID, so a sender
that exits too soon is not heard (``systemd-notify``'s race).

Run by the runner on every start under systemd: keep its imports small.
"""

from __future__ import annotations

import os
import select
import socket
import sys
from array import array
from pathlib import Path

from ..control.process import connect_when_there
from ..errors import MicrovmError

BARRIER_TIMEOUT = 5.0  # seconds to wait for systemd to read a message
MAX_STATUS = 200


def notify(message: str, notify_socket: str) -> None:
    """Send ``message`` to systemd's notify socket and wait until systemd has read it."""
    address = "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket
    read_end, write_end = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
            sock.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [write_end]))])
        os.close(write_end)
        write_end = -1
        # systemd closes its copy of the write end once it has processed everything sent before
        select.select([read_end], [], [], BARRIER_TIMEOUT)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def accepted(line: bytes) -> str | None:
    """The notify message a guest's line stands for, or None when the guest may not send it."""
    text = line.decode("utf-8", "replace").strip()
    if text == "READY=1":
        return text
    if text.startswith("STATUS=") and text.isprintable():
        return text[: len("STATUS=") + MAX_STATUS]
    return None


def systemd_socket() -> str:
    """``$NOTIFY_SOCKET``, which systemd sets for a Type=notify service."""
    if notify_socket := os.environ.get("NOTIFY_SOCKET"):
        return notify_socket
    raise MicrovmError("NOTIFY_SOCKET is not set: not started by systemd as a Type=notify service")


def now() -> None:
    """The VM is ready now (it has no readiness port)."""
    notify("READY=1", systemd_socket())


def forward(port: Path, pid: int) -> None:
    """Pass the guest's lines from its readiness ``port`` on to systemd until the hypervisor (``pid``) closes it."""
    notify_socket = systemd_socket()
    sock = connect_when_there(port, lambda: os.getppid() == pid)  # None: the hypervisor is gone
    if sock is None:
        return
    pending = b""
    with sock:
        while chunk := sock.recv(4096):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if (message := accepted(line)) is not None:
                    notify(message, notify_socket)
                elif line.strip():
                    print(f"microvm: ignored from the guest's readiness port: {line[:80]!r}", file=sys.stderr)
