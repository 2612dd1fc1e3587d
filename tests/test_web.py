"""`microvm web` without VMs running: where it listens, the token, the unit, and the console fan-out.

The server runs for real (`microvm web` as a process); the console hub is fed by
a real log file and a real unix socket. The page in a browser and with booted
VMs: test_web_browser.py; the load on one console: test_web_load.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_vm
from test_units import needs_systemd_analyze, verify

from microvm.config import load_host
from microvm.errors import ConfigErrors, MicrovmError
from microvm.host import apply as host_apply
from microvm.host import statedir, units
from microvm.model.options import WebOptions
from microvm.store import Store
from microvm.web import console, serve


@contextlib.contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`microvm web ARGS` running; the line it printed first (the address, with the token if any)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "microvm", "web", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("microvm web: "), line + process.stderr.read()
        yield process, line.strip()
    finally:
        process.terminate()
        process.wait(timeout=30)


def get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def address(line: str) -> tuple[str, str]:
    """(base URL, token) of `microvm web: open http://HOST:PORT/?token=TOKEN`."""
    found = re.search(r"(https?://[^/]+)/\?token=(\S+)", line)
    assert found, line
    return found.group(1), found.group(2)


def test_every_request_needs_the_token_and_changes_are_logged() -> None:
    with serving("--listen", "127.0.0.1:0") as (process, line):
        base, token = address(line)
        assert get(f"{base}/api/vms")[0] == 401
        assert get(f"{base}/api/vms", "wrong")[0] == 401
        assert get(f"{base}/", "wrong")[0] == 401
        assert get(f"{base}/api/vms/alpha/start", method="POST")[0] == 401
        assert get(f"{base}/api/vms", token) == (200, "[]")
        assert get(f"{base}/api/vms/alpha/start", token, "POST")[0] == 404
        forged = urllib.request.Request(f"{base}/api/vms/alpha/stop", method="POST", headers={"Origin": "http://evil"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=30)
        assert refused.value.code == 403  # another site's page: refused before the token is even looked at
        status, body = get(f"{base}/api/vms/no!good/start", token, "POST")
        assert status == 409 and "not a valid name" in json.loads(body)["error"]
        # the token once in the address: a strict same-site cookie, and the address without it
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(f"{base}/?token={token}", timeout=30) as page:
            assert page.url == f"{base}/" and "<title>microvm</title>" in page.read().decode()
        assert opener.open(f"{base}/api/vms", timeout=30).read() == b"[]"  # with the cookie alone
        # a WebSocket without the token, or from another site with it, is closed before it opens
        assert asyncio.run(_console_refused(base, {})) == 1008
        assert (
            asyncio.run(_console_refused(base, {"Authorization": f"Bearer {token}", "Origin": "http://evil"})) == 1008
        )
    log = process.stderr.read()
    assert "GET /api/vms refused: no token" in log and "POST /api/vms/alpha/start refused: no token" in log
    assert "start no!good failed" in log and "console refused: no token" in log
    assert "console refused: other origin http://evil" in log


async def _console_refused(base: str, headers: dict[str, str]) -> int | None:
    import websockets

    url = base.replace("http", "ws", 1) + "/api/vms/alpha/console"
    try:
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.recv()
    except websockets.InvalidStatus as exc:
        return 1008 if exc.response.status_code == 403 else exc.response.status_code
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    return None


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl (to make a certificate)")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert]
        + ["-subj", "/CN=127.0.0.1", "-days", "1"],
        check=True,
        capture_output=True,
    )
    with serving("--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)) as (_, line):
        base, token = address(line)
        assert base.startswith("https://")
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False  # the certificate names 127.0.0.1 as its CN only
        plain = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        bearer = urllib.request.Request(f"{base}/api/vms", headers={"Authorization": f"Bearer {token}"})
        with plain.open(bearer, timeout=30) as answer:
            assert answer.read() == b"[]"
        request = urllib.request.Request(f"{base}/?token={token}")
        redirect = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as seen:
            redirect.open(request, timeout=30)
        cookie = seen.value.headers["set-cookie"]
        assert seen.value.code == 303 and "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    half = subprocess.run(
        [sys.executable, "-m", "microvm", "web", "--tls-cert", str(cert)], capture_output=True, text=True, check=False
    )
    assert half.returncode == 1 and "--tls-cert and --tls-key go together" in half.stderr


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs) -> None:
        return None


def test_unix_socket_is_for_the_group_only(tmp_path: Path) -> None:
    path = tmp_path / "run" / "web.sock"
    with serving("--listen", f"unix:{path}", "--group", "root") as (_, line):
        assert line == f"microvm web: serving on {path}"
        mode = path.stat()
        assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_gid == grp.getgrnam("root").gr_gid
        with socket.socket(socket.AF_UNIX) as sock:  # no token on the socket: its permissions authorise
            sock.connect(str(path))
            sock.sendall(b"GET /api/vms HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"[]")
        with pytest.raises(MicrovmError, match="in use: another microvm web"):
            serve.bind(serve.Listen.parse(f"unix:{path}"), "root")
    assert not path.exists()


def test_listen_addresses_and_tls_beyond_loopback(tmp_path: Path) -> None:
    assert serve.Listen.parse("127.0.0.1:8480") == serve.Listen(None, "127.0.0.1", 8480)
    assert serve.Listen.parse("[::1]:80") == serve.Listen(None, "::1", 80)
    assert serve.Listen.parse("unix:/run/w.sock") == serve.Listen(Path("/run/w.sock"))
    for bad in ("localhost:80", "127.0.0.1", "127.0.0.1:99999", "unix:rel.sock"):
        with pytest.raises(MicrovmError, match="unix:/PATH"):
            serve.Listen.parse(bad)
    with pytest.raises(MicrovmError, match="needs TLS"):
        serve.check(serve.Listen.parse("0.0.0.0:8480"), None)
    serve.check(serve.Listen.parse("[::1]:8480"), None)
    refused = subprocess.run(
        [sys.executable, "-m", "microvm", "web", "--listen", "0.0.0.0:8480"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1 and "needs TLS" in refused.stderr and "Traceback" not in refused.stderr
    host = write_vm(tmp_path, "[microvm.web]\nenable = true\nlisten = '0.0.0.0:8480'\n", "host.toml")
    with pytest.raises(ConfigErrors) as error:
        load_host(host)
    assert (
        "host.toml" in str(error.value) and "microvm.web" in str(error.value) and "tlsCertificate" in str(error.value)
    )


@needs_systemd_analyze
def test_host_apply_writes_the_web_unit_and_removes_it(tmp_path: Path) -> None:
    unit_dir = tmp_path / "units"
    state = tmp_path / "vms"
    host = write_vm(tmp_path, f"[microvm]\nstateDir = '{state}'\n[microvm.web]\nenable = true\n", "host.toml")
    plan = host_apply.plan(load_host(host), Store(tmp_path / "store"), unit_dir)
    assert f"write {unit_dir / units.WEB}" in [c.describe() for c in plan.changes]
    plan.apply()
    unit = (unit_dir / units.WEB).read_text()
    assert f"-m microvm web --listen unix:/run/microvm/web.sock --group kvm --token-file {units.WEB_TOKEN}" in unit
    assert f"MICROVM_STATE_DIR={state}" in unit
    assert (unit_dir / "multi-user.target.wants" / units.WEB).is_symlink()
    result = verify(unit_dir / units.WEB)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    host.write_text(f"[microvm]\nstateDir = '{state}'\n")
    removal = [c.describe() for c in host_apply.plan(load_host(host), Store(tmp_path / "store"), unit_dir).changes]
    assert f"remove {unit_dir / units.WEB}" in removal
    tls = WebOptions(listen="192.0.2.1:443", tlsCertificate="/etc/c.pem", tlsKey="/etc/k.pem")
    assert "--tls-cert /etc/c.pem --tls-key /etc/k.pem" in units.web_service(tls, state, tmp_path)


def test_a_busy_console_socket_still_counts_as_running(tmp_path: Path) -> None:
    """A hypervisor serving one console client leaves the next in its backlog: the probe must not wait there.

    (`list` and the page hung while a console was attached to a VM run without systemd.)
    """
    path = tmp_path / "console.sock"
    with socket.socket(socket.AF_UNIX) as listening, socket.socket(socket.AF_UNIX) as attached:
        listening.bind(str(path))
        listening.listen(0)  # as busy as qemu's chardev with a client: one more waits, the next blocks
        attached.connect(str(path))
        answers: list[bool] = []
        probe = threading.Thread(target=lambda: answers.extend(statedir._socket_alive(path) for _ in range(3)))
        probe.start()
        probe.join(5)
        assert answers == [True, True, True]
    assert not statedir._socket_alive(path)  # nobody listens: a stale file


# --- the console hub: a real log file and a real console socket ------------------


def test_console_fans_out_to_many_viewers_and_types_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(_fan_out(tmp_path, monkeypatch))


async def _fan_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, sock_path = tmp_path / "vm-console.log", tmp_path / "vm-console.sock"
    log.write_bytes(b"x" * (console.BACKLOG + 10) + b"before\n")
    typed: list[bytes] = []
    connections = 0

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while data := await reader.read(100):
            typed.append(data)
            writer.write(b"echoed on the socket, also in the log\n")  # the hub must read and drop this
        writer.close()

    server = await asyncio.start_unix_server(guest, path=str(sock_path))
    hub = console.ConsoleHub(sock_path, log)
    viewers = [hub.join() for _ in range(20)]
    assert all(backlog.endswith(b"before\n") and len(backlog) == console.BACKLOG for _, backlog in viewers)
    lines = b"".join(b"line %d\n" % i for i in range(5000))
    with log.open("ab") as f:
        for start in range(0, len(lines), 7000):
            f.write(lines[start : start + 7000])
            f.flush()
            await asyncio.sleep(0.001)
    late, late_backlog = hub.join()  # joins mid-stream: backlog then queue, no gap, no repeat

    async def received(viewer: console.Viewer, least: int) -> bytes:
        data = b""
        while len(data) < least or not viewer.queue.empty():
            data += await asyncio.wait_for(viewer.queue.get(), 10)
        return data

    assert all([await received(v, len(lines)) == lines for v, _ in viewers])
    assert (late_backlog + await received(late, 0)).endswith(lines[-1000:])  # the hub has read all by now
    for keys in (b"echo hello\n", b"l", b"s", b"\n"):  # each batch on a connection of its own, in order
        await hub.send(keys)
    await asyncio.sleep(0.2)
    assert b"".join(typed) == b"echo hello\nls\n" and connections == 4
    # a viewer that does not keep up is cut off (its queue is bounded), the others go on
    monkeypatch.setattr(console, "QUEUE", 8)  # its queue: 8 chunks (the others have the default)
    stalled, _ = hub.join()
    with log.open("ab") as f:
        for _ in range(20):
            f.write(b"y" * 100 + b"\n")
            f.flush()
            await asyncio.sleep(console.POLL * 3)
            for viewer, _ in viewers:
                while not viewer.queue.empty():
                    viewer.queue.get_nowait()
    await asyncio.sleep(0.2)
    assert stalled.dropped and not any(v.dropped for v, _ in viewers)
    assert stalled.queue.qsize() <= 8
    # a fresh boot empties the log: the hub starts again from its beginning
    log.write_bytes(b"booted again\n")
    await asyncio.sleep(0.2)
    tail = b""
    while not viewers[0][0].queue.empty():
        tail += viewers[0][0].queue.get_nowait()
    assert tail.endswith(b"booted again\n")
    for viewer, _ in [*viewers, (late, b""), (stalled, b"")]:
        await hub.leave(viewer)
    await asyncio.sleep(0.1)
    assert hub._log is None and hub._follow is None
    server.close()


def test_page_libraries_are_installed() -> None:
    """scripts/setup.sh's `npm ci` put xterm.js where the page loads it from."""
    static = Path(serve.__file__).parent / "static"
    lock = json.loads((static / "package-lock.json").read_text())
    for package in ("@xterm/xterm", "@xterm/addon-fit"):
        installed = json.loads((static / "node_modules" / package / "package.json").read_text())
        assert installed["version"] == lock["packages"][f"node_modules/{package}"]["version"]
    page = (static / "index.html").read_text()
    for src in re.findall(r'(?:src|href)="/static/([^"]+)"', page):
        assert (static / src).is_file(), src
    assert shutil.which("chromium") and shutil.which("chromedriver")
