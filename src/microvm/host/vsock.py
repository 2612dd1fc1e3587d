"""``microvm ssh NAME``: SSH into a guest over vsock (``microvm.vsock.ssh``), no network needed.

ssh reaches the guest through a ProxyCommand, the ``vsock-proxy`` helper: an
AF_VSOCK connection to the guest's context id, or, on cloud-hypervisor and
firecracker (whose vsock device is a unix socket on the host), that socket's
``CONNECT <port>`` handshake (their docs/vsock.md). Neither needs socat nor a
systemd new enough for ``ssh vsock/<cid>`` (systemd-ssh-proxy, v256).
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import threading
from pathlib import Path

from ..errors import MicrovmError
from ..hypervisors import get
from ..layout import helper_argv
from .statedir import VMState

SSH_PORT = 22


def ssh_argv(state: VMState, args: list[str]) -> list[str]:
    """The ssh command line for VM ``state``: root unless ``args`` give ``-l``; ``args`` go after the host.

    Host keys are not checked, as in microvm.nix: vsock reaches only local guests, which make new keys
    whenever their state is new.
    """
    mv = state.config().get("microvm", {})
    vsock = mv.get("vsock", {})
    if vsock.get("cid") is None or not vsock.get("ssh", {}).get("enable"):
        raise MicrovmError(
            f"VM {state.name!r} has no SSH server on vsock",
            hint="set microvm.vsock.cid and microvm.vsock.ssh.enable = true, then update it",
        )
    if mux := get(mv.get("hypervisor", "qemu")).vsock_socket:
        where = ["--mux", str(state.path / mux)]
    else:
        where = ["--cid", str(vsock["cid"])]
    proxy = shlex.join(helper_argv("vsock-proxy", "--port", str(SSH_PORT), *where))
    login = [] if "-l" in args else ["-l", "root"]
    options = ["-o", f"ProxyCommand={proxy}", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    return ["ssh", *options, *login, state.name, *args]


def connect(port: int, cid: int | None = None, mux: Path | None = None) -> socket.socket:
    """A stream connected to the guest's vsock ``port``, directly (``cid``) or through the hypervisor's ``mux``."""
    try:
        if cid is not None:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.connect((cid, port))
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(os.fspath(mux))
        sock.sendall(f"CONNECT {port}\n".encode())
        answer = b""
        while not answer.endswith(b"\n"):
            if not (chunk := sock.recv(1)):
                break
            answer += chunk
    except OSError as exc:
        raise MicrovmError(f"cannot reach vsock port {port} of the guest: {exc}", hint="is the VM running?") from None
    if not answer.startswith(b"OK "):
        raise MicrovmError(f"{mux} refused CONNECT {port}: {answer.decode(errors='replace').strip() or 'closed'}")
    return sock


def proxy(port: int, cid: int | None = None, mux: Path | None = None) -> None:
    """Join our stdin/stdout to the guest's vsock ``port`` until either side closes."""
    sock = connect(port, cid, mux)

    def upstream() -> None:
        while data := os.read(sys.stdin.fileno(), 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    while data := sock.recv(65536):
        os.write(sys.stdout.fileno(), data)
