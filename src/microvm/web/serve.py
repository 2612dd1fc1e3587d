"""Where ``microvm web`` listens, and who may ask.

- ``unix:PATH``: a unix socket of mode 0660 in group ``kvm`` (the VMs' group):
  the file's permissions are the authorisation, no token.
- ``127.0.0.1:PORT`` (any loopback address; the command's default): a token made at each
  start, printed once with the address that carries it.
- any other address: only with TLS (``--tls-cert``/``--tls-key``) and the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from ..errors import MicrovmError
from ..layout import HYPERVISOR_GROUP
from ..model.options import listen_address
from .app import create_app


@dataclass(frozen=True)
class Listen:
    unix: Path | None = None
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> Listen:
        """``unix:/path``, ``HOST:PORT`` or ``[V6]:PORT`` (as the host file's ``microvm.web.listen``)."""
        try:
            unix, host, port = listen_address(text)
        except ValueError as exc:
            raise MicrovmError(f"--listen: {exc}") from None
        return cls(Path(unix) if unix else None, host, port)

    @property
    def loopback(self) -> bool:
        return self.unix is None and ipaddress.ip_address(self.host).is_loopback


@dataclass(frozen=True)
class TLS:
    cert: Path
    key: Path


def check(listen: Listen, tls: TLS | None) -> None:
    """Refuse what would expose the VMs: another address without TLS."""
    if listen.unix is None and not listen.loopback and tls is None:
        raise MicrovmError(
            f"web: {listen.host} is reachable from other machines: it needs TLS",
            hint="give --tls-cert and --tls-key, or listen on 127.0.0.1 or a unix socket",
        )
    for path in (tls.cert, tls.key) if tls else ():
        if not path.is_file():
            raise MicrovmError(f"web: TLS file {path} does not exist")


def bind(listen: Listen, group: str = HYPERVISOR_GROUP) -> socket.socket:
    """The listening socket; a unix one is mode 0660 in ``group`` (a live one is never taken over)."""
    if listen.unix is None:
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError as exc:
            sock.close()
            raise MicrovmError(f"web: cannot listen on {listen.host}:{listen.port}: {exc.strerror}") from None
        sock.listen(128)
        return sock
    path = listen.unix
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
            probe.connect(os.fspath(path))
            raise MicrovmError(f"web: {path} is in use: another microvm web serves there")
        path.unlink()
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise MicrovmError(f"web: group {group!r} does not exist", hint="microvm host apply creates kvm") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)  # never reachable by others, not even between bind and chmod
    try:
        sock.bind(os.fspath(path))
    finally:
        os.umask(old)
    os.chown(path, -1, gid)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def serve(
    listen: Listen,
    *,
    state_dir: Path | None = None,
    tls: TLS | None = None,
    group: str = HYPERVISOR_GROUP,
    token_file: Path | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; print (once) the address to open, with the token when one is needed."""
    check(listen, tls)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    sock = bind(listen, group)
    token = None if listen.unix else secrets.token_urlsafe(24)
    app = create_app(state_dir, token, secure=tls is not None)
    config = uvicorn.Config(
        app,
        ssl_certfile=tls and os.fspath(tls.cert),
        ssl_keyfile=tls and os.fspath(tls.key),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    if listen.unix:
        print(f"microvm web: serving on {listen.unix}", flush=True)
    else:
        host, port = sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        address = f"{'https' if tls else 'http'}://{host}:{port}/?token={token}"
        if token_file is not None:
            token_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(address + "\n")
            print(f"microvm web: serving on {host}:{port}; the address with its token is in {token_file}", flush=True)
        else:
            print(f"microvm web: open {address}", flush=True)
    # uvicorn shuts down on SIGTERM, then raises it again for the handler it found: ours lets the socket be removed
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
    finally:
        sock.close()
        if listen.unix:
            listen.unix.unlink(missing_ok=True)
