"""The control side of the backends against API servers on unix sockets.

The REST ones are stand-ins serving the documented request/response shapes
(cloud-hypervisor's OpenAPI description, firecracker's swagger) from a thread
in this process. QMP is spoken by a real qemu: StratoVirt's QMP is qemu's
(docs/qmp.md), so its backend is driven against qemu itself.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import EventListener

from microvm.control import http
from microvm.errors import MicrovmError
from microvm.hypervisors import Balloon, Control, Feature, Suspend, available, capable, get, qmp

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


@dataclass
class Qemu:
    """A qemu serving QMP on ``control``, and on ``watch`` for a test to see its events."""

    process: subprocess.Popen[bytes]
    control: Path
    watch: Path

    def events(self, names: tuple[str, ...], action: Any) -> list[str]:
        """The events ``names`` (each once, in the order qemu sends them) while ``action()`` runs, or up to 5 s after."""

        async def watched() -> list[str]:
            async with qmp.session(self.watch) as client:
                listener = EventListener(names)
                with client.listen(listener):
                    await asyncio.to_thread(action)
                    return [(await asyncio.wait_for(listener.get(), 5))["event"] for _ in names]

        return asyncio.run(watched())


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Qemu]:
    """qemu with a balloon device and no guest running (-S): every QMP command answers, nothing boots."""
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    control, watch = tmp_path / "qmp.sock", tmp_path / "watch.sock"
    argv = [binary, "-M", "microvm", "-accel", "tcg", "-S", "-m", "256", "-nodefaults", "-display", "none"]
    argv += ["-device", "virtio-balloon-device"]
    argv += ["-qmp", f"unix:{control},server=on,wait=off", "-qmp", f"unix:{watch},server=on,wait=off"]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (control.exists() and watch.exists()):
        assert process.poll() is None and time.monotonic() < deadline, "qemu did not start"
        time.sleep(0.02)
    yield Qemu(process, control, watch)
    process.kill()
    process.wait()


def test_stratovirt_powerdown_reaches_qmp(qemu: Qemu) -> None:
    assert qemu.events(("POWERDOWN",), lambda: get("stratovirt").request_shutdown(qemu.control)) == ["POWERDOWN"]


def test_stratovirt_balloon_over_qmp(qemu: Qemu) -> None:
    # the guest is not running, so it gives nothing back: qemu reports all 256 MB, a balloon of 0
    assert capable("stratovirt", Balloon).balloon(qemu.control, 64, 256) == 0


def test_stratovirt_balloon_refused_by_qmp_is_an_error(qemu: Qemu) -> None:
    # a balloon larger than the guest is a target below zero, which qemu refuses
    with pytest.raises(qmp.CommandError, match="balloon"):
        capable("stratovirt", Balloon).balloon(qemu.control, 300, 256)


def test_stratovirt_stop_hard_quits(qemu: Qemu) -> None:
    capable("stratovirt", Control).stop_hard(qemu.control, qemu.process.pid)
    assert qemu.process.wait(timeout=10) == 0


def test_qemu_powerdown_continues_a_paused_guest_first(qemu: Qemu) -> None:
    qmp.execute(qemu.control, "cont")
    qmp.execute(qemu.control, "stop")
    events = qemu.events(("RESUME", "POWERDOWN"), lambda: get("qemu").request_shutdown(qemu.control))
    assert events == ["RESUME", "POWERDOWN"]
    assert qmp.execute(qemu.control, "query-status")["status"] == "running"


def test_qmp_unreachable_names_the_socket(tmp_path: Path) -> None:
    with pytest.raises(qmp.Unreachable, match="none.sock"):
        qmp.execute(tmp_path / "none.sock", "query-status")


class RefusingQMP(socketserver.BaseRequestHandler):
    """A StratoVirt whose machine has no power button: it refuses system_powerdown (as microvm.nix saw).

    As StratoVirt's (machine_manager/src/socket.rs, qmp_response.rs): a request is the JSON that
    arrived, with or without a newline; a reply carries the request's id.
    """

    def handle(self) -> None:
        server: Any = self.server
        greeting = {
            "QMP": {"version": {"qemu": {"micro": 1, "minor": 0, "major": 5}, "package": ""}, "capabilities": []}
        }
        self.request.sendall(json.dumps(greeting).encode() + b"\n")
        pending, decoder = "", json.JSONDecoder()
        while data := self.request.recv(65536):
            pending = (pending + data.decode()).lstrip()
            while pending:
                try:
                    command, end = decoder.raw_decode(pending)
                except ValueError:
                    break  # the rest of the request is still on its way
                pending = pending[end:].lstrip()
                server.seen.append(command["execute"])
                reply: dict[str, Any] = {"return": {}}
                if command["execute"] == "system_powerdown":
                    reply = {"error": {"class": "GenericError", "desc": "not supported"}}
                self.request.sendall(json.dumps({**reply, "id": command.get("id")}).encode() + b"\n")


def test_stratovirt_powerdown_refused_quits(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    server: Any = Server(str(path), RefusingQMP)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        get("stratovirt").request_shutdown(path)
    finally:
        server.shutdown()
        server.server_close()
    assert server.seen == ["qmp_capabilities", "system_powerdown", "qmp_capabilities", "quit"]


@pytest.mark.parametrize("backend", available(), ids=lambda b: b.name)
def test_control_side_is_what_the_features_say(backend: Any) -> None:
    assert isinstance(backend, Control) == backend.supports(Feature.CONTROL_SOCKET)
    assert isinstance(backend, Suspend) == backend.supports(Feature.SUSPEND)


@pytest.mark.parametrize("hypervisor", ["kvmtool", "alioth"])
def test_no_control_side_without_a_control_socket(hypervisor: str) -> None:
    with pytest.raises(MicrovmError, match=f"{hypervisor} has no control socket") as info:
        capable(hypervisor, Control)
    assert "qemu" in str(info.value.hint)


def test_qemu_fault_is_qmps_run_state(qemu: Qemu) -> None:
    """The cluster's monitor: a guest qemu keeps but that will not run on is a fault, paused or not yet
    started is not; a qemu that stopped answering raises, within the timeout (the caller may ask again)."""
    backend = capable("qemu", Control)
    assert backend.fault(qemu.control) is None  # prelaunch (-S)
    qmp.execute(qemu.control, "cont")
    assert backend.fault(qemu.control) is None
    qmp.execute(qemu.control, "migrate", {"uri": "exec:cat > /dev/null"})  # sent away: qemu is left postmigrate
    deadline = time.monotonic() + 30
    while qmp.execute(qemu.control, "query-migrate").get("status") != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert backend.fault(qemu.control) == "qemu reports the VM postmigrate"
    qemu.process.send_signal(signal.SIGSTOP)
    began = time.monotonic()
    try:
        with pytest.raises(MicrovmError, match="no answer within 5 s"):
            backend.fault(qemu.control)
    finally:
        qemu.process.send_signal(signal.SIGCONT)
    assert time.monotonic() - began < 8
    qemu.process.kill()
    qemu.process.wait()
    with pytest.raises(MicrovmError, match="cannot connect to the QMP socket"):
        backend.fault(qemu.control)
