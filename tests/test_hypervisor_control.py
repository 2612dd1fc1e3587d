"""The control side of the backends against stand-in API servers on unix sockets.

These serve the documented request/response shapes (cloud-hypervisor's
OpenAPI description, firecracker's swagger, StratoVirt's docs/qmp.md) from a
thread in this process; no hypervisor binary is involved.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from microvm.control import http
from microvm.errors import MicrovmError
from microvm.hypervisors import get

MIB = 1024 * 1024


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # (method, path) -> (status, body); requests are recorded in ``seen``
    routes: dict[tuple[str, str], tuple[int, Any]]
    seen: list[tuple[str, str, Any]]


class Handler(BaseHTTPRequestHandler):
    server: Server

    def address_string(self) -> str:  # unix sockets have no client address
        return "unix"

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.seen.append((self.command, self.path, body))
        status, answer = self.server.routes.get((self.command, self.path), (404, {"fault_message": "no route"}))
        data = b"" if answer is None else (answer if isinstance(answer, bytes) else json.dumps(answer).encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_PATCH = _handle


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Path, Server]]:
    path = tmp_path / "api.sock"
    server = Server(str(path), Handler)
    server.routes, server.seen = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, server
    server.shutdown()
    server.server_close()


def test_http_returns_parsed_json(api: tuple[Path, Server]) -> None:
    path, server = api
    server.routes[("GET", "/x")] = (200, {"a": 1})
    assert http.request(path, "GET", "/x").body == {"a": 1}


def test_http_raises_the_api_error_text(api: tuple[Path, Server]) -> None:
    path, server = api
    server.routes[("PUT", "/actions")] = (400, {"fault_message": "The requested operation is not supported"})
    with pytest.raises(http.ApiError, match="HTTP 400: The requested operation is not supported") as info:
        http.request(path, "PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    assert info.value.status == 400


def test_http_plain_text_error(api: tuple[Path, Server]) -> None:
    path, server = api
    server.routes[("PUT", "/api/v1/vm.power-button")] = (405, b"VM not booted")
    with pytest.raises(http.ApiError, match="VM not booted"):
        http.request(path, "PUT", "/api/v1/vm.power-button")


def test_http_no_server_names_the_socket(tmp_path: Path) -> None:
    with pytest.raises(MicrovmError, match="missing.sock"):
        http.request(tmp_path / "missing.sock", "GET", "/")


def test_cloud_hypervisor_power_button(api: tuple[Path, Server]) -> None:
    path, server = api
    server.routes[("PUT", "/api/v1/vm.power-button")] = (204, None)
    get("cloud-hypervisor").request_shutdown(path)
    assert server.seen == [("PUT", "/api/v1/vm.power-button", None)]


def test_cloud_hypervisor_balloon(api: tuple[Path, Server]) -> None:
    path, server = api
    server.routes[("PUT", "/api/v1/vm.resize")] = (204, None)
    server.routes[("GET", "/api/v1/vm.info")] = (200, {"config": {"balloon": {"size": 256 * MIB}}})
    assert get("cloud-hypervisor").balloon(path, 256, 1024) == 256
    assert ("PUT", "/api/v1/vm.resize", {"desired_balloon": 256 * MIB}) in server.seen


def test_firecracker_ctrl_alt_del(api: tuple[Path, Server]) -> None:
    path, server = api
    server.routes[("PUT", "/actions")] = (204, None)
    get("firecracker").request_shutdown(path)
    assert server.seen == [("PUT", "/actions", {"action_type": "SendCtrlAltDel"})]


def test_firecracker_balloon(api: tuple[Path, Server]) -> None:
    path, server = api
    server.routes[("PATCH", "/balloon")] = (204, None)
    server.routes[("GET", "/balloon/statistics")] = (200, {"target_mib": 100, "actual_mib": 96})
    assert get("firecracker").balloon(path, 100, 512) == 96
    assert ("PATCH", "/balloon", {"amount_mib": 100}) in server.seen


class QMP(socketserver.StreamRequestHandler):
    """A QMP server as docs/qmp.md describes: greeting, capabilities, commands."""

    def handle(self) -> None:
        server: Any = self.server
        self.wfile.write(b'{"QMP":{"version":{"qemu":{"micro":1,"minor":0,"major":5}},"capabilities":[]}}\n')
        for line in self.rfile:
            command = json.loads(line)
            server.seen.append(command)
            reply = server.replies.get(command["execute"], {"return": {}})
            self.wfile.write(b'{"event":"STOP","data":{}}\n' + json.dumps(reply).encode() + b"\n")


@pytest.fixture
def qmp(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    path = tmp_path / "qmp.sock"
    server: Any = Server(str(path), QMP)
    server.seen, server.replies = [], {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield path, server
    server.shutdown()
    server.server_close()


def test_stratovirt_powerdown(qmp: tuple[Path, Any]) -> None:
    path, server = qmp
    get("stratovirt").request_shutdown(path)
    assert [c["execute"] for c in server.seen] == ["qmp_capabilities", "system_powerdown"]


def test_stratovirt_powerdown_refused_quits(qmp: tuple[Path, Any]) -> None:
    path, server = qmp
    server.replies["system_powerdown"] = {"error": {"class": "GenericError", "desc": "not supported"}}
    get("stratovirt").request_shutdown(path)
    assert [c["execute"] for c in server.seen][-1] == "quit"


def test_stratovirt_balloon_takes_guest_memory(qmp: tuple[Path, Any]) -> None:
    path, server = qmp
    server.replies["query-balloon"] = {"return": {"actual": 768 * MIB}}
    assert get("stratovirt").balloon(path, 256, 1024) == 256
    assert {"execute": "balloon", "arguments": {"value": 768 * MIB}} in server.seen


@pytest.mark.parametrize("hypervisor", ["kvmtool", "alioth"])
def test_no_api_shutdown_without_process_is_an_error(tmp_path: Path, hypervisor: str) -> None:
    with pytest.raises(MicrovmError, match="no shutdown API"):
        get(hypervisor).shutdown(tmp_path / "none.sock", 1)
