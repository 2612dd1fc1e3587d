"""Tell systemd when a VM is ready (``microvm.host.useNotifySockets``: ``microvm@`` is Type=notify).

The runner calls this before it execs the hypervisor, and only when systemd
gave it a ``$NOTIFY_SOCKET``:

``now``
    The VM has no readiness port: it is ready as its hypervisor starts.
``forward SOCKET --pid PID``
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

import argparse
import os
import select
import socket
import sys
from array import array
from pathlib import Path

from ..control.process import connect_when_there

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


def forward(path: Path, notify_socket: str, parent: int) -> None:
    """Pass the guest's lines from ``path`` on to systemd until the hypervisor (``parent``) closes it."""
    sock = connect_when_there(path, lambda: os.getppid() == parent)  # None: the hypervisor is gone
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microvm.runner.ready", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("now", help="the VM is ready now")
    fwd = sub.add_parser("forward", help="pass on what the guest says on its readiness port")
    fwd.add_argument("socket", type=Path, help="the hypervisor's socket of the readiness port")
    fwd.add_argument("--pid", type=int, required=True, help="the hypervisor's PID (our parent)")
    args = parser.parse_args(argv)
    notify_socket = os.environ.get("NOTIFY_SOCKET")
    if not notify_socket:
        parser.error("NOTIFY_SOCKET is not set: not started by systemd as a Type=notify service")
    if args.action == "now":
        notify("READY=1", notify_socket)
    else:
        forward(args.socket, notify_socket, args.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
