"""A minimal HTTP/1.1 client over a unix socket, for hypervisor REST APIs.

cloud-hypervisor (``PUT /api/v1/vm.power-button``, ``docs/api.md``) and
firecracker (``PUT /actions``, ``src/firecracker/swagger/firecracker.yaml``)
both serve JSON over HTTP on a unix socket; the standard library's
:class:`http.client.HTTPConnection` only needs a different ``connect``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MicrovmError


class ApiError(MicrovmError):
    """The API answered with a non-2xx status."""

    def __init__(self, method: str, path: str, status: int, text: str) -> None:
        super().__init__(f"{method} {path} failed with HTTP {status}: {text or '(no message)'}")
        self.status = status
        self.text = text


class UnixHTTPConnection(http.client.HTTPConnection):
    """``HTTPConnection`` to ``http://localhost`` through the unix socket ``path``."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = os.fspath(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Response:
    status: int
    body: Any  # parsed JSON, the raw text when it is not JSON, or None when empty


def _error_text(body: Any) -> str:
    """The API's own message: firecracker ``fault_message``, else the body."""
    if isinstance(body, dict):
        for key in ("fault_message", "error", "message"):
            if key in body:
                return str(body[key])
        return json.dumps(body)
    return "" if body is None else str(body).strip()


def request(
    socket_path: str | os.PathLike[str] | Path,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: float = 10.0,
) -> Response:
    """Send one request; return the response, or raise :class:`ApiError` on a non-2xx status.

    Connection problems raise :class:`MicrovmError` naming the socket.
    """
    conn = UnixHTTPConnection(socket_path, timeout=timeout)
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=payload, headers=headers)
        answer = conn.getresponse()
        raw = answer.read().decode(errors="replace")
        status = answer.status
    except (OSError, http.client.HTTPException) as exc:
        raise MicrovmError(f"cannot talk to {os.fspath(socket_path)} ({method} {path}): {exc}") from exc
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(raw) if raw.strip() else None
    except json.JSONDecodeError:
        parsed = raw
    if not 200 <= status < 300:
        raise ApiError(method, path, status, _error_text(parsed))
    return Response(status, parsed)
