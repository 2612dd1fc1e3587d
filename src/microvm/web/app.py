"""The ASGI application: the page, the JSON API behind it, and the console WebSocket.

Each action is the host function its command calls (``microvm start`` ... ``update``),
run in a worker thread; every one is logged with who asked and how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketClose, WebSocketDisconnect

from ..errors import MicrovmError
from ..host import lifecycle
from ..host.statedir import VMState
from ..store import Store
from .console import ConsoleHub

STATIC = Path(__file__).parent / "static"
COOKIE = "microvm_web_token"
LIST_FRESH = 1.0  # seconds a look at the VMs serves every page asking
log = logging.getLogger("microvm.web")


def _update(name: str, state_dir: Path | None) -> str:
    change = lifecycle.update(name, Store(), state_dir)
    lines = [f"{name}: {'updated' if change.changed else 'no change'}", *change.diff()]
    if change.state.booted not in (None, change.state.current):
        lines.append(f"restart to boot it: microvm restart {name}")
    return "\n".join(lines)


def _suspend(name: str, state_dir: Path | None) -> str:
    return f"{name}: suspended to {lifecycle.suspend(name, state_dir)}"


def _systemctl(action: str) -> Callable[[str, Path | None], str]:
    def run(name: str, state_dir: Path | None) -> str:
        lifecycle.control(action, name, state_dir)
        return f"{name}: {action} done"

    return run


# The buttons: what `microvm start|stop|restart|suspend|update NAME` do.
ACTIONS: dict[str, Callable[[str, Path | None], str]] = {
    **{action: _systemctl(action) for action in ("start", "stop", "restart")},
    "suspend": _suspend,
    "update": _update,
}


def describe(vm: lifecycle.Status) -> dict[str, Any]:
    """One VM as the page shows it: ``list``'s state plus what its build declares."""
    return {
        "name": vm.name,
        "running": vm.running,
        "state": vm.state,
        "current": vm.state == "current",
        "next": vm.next_step,
        "source": vm.source,
        "addresses": vm.addresses,
        "node": socket.gethostname(),
        "hypervisor": vm.hypervisor,
        "vcpu": vm.vcpu,
        "mem": vm.mem,
        "uptime": round(vm.uptime) if vm.uptime is not None else None,
    }


def _error(exc: MicrovmError, status: int = 409) -> JSONResponse:
    return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=status)


def _who(conn: HTTPConnection) -> str:
    return f"{conn.client.host}:{conn.client.port}" if conn.client else "unix socket"


class Authorise:
    """Every request carries the token (header, cookie, or once in the address), else 401 / close 1008.

    A page opened with ``?token=`` gets it as a strict same-site cookie and is
    sent to the address without it. Whatever it carries, a request from a page
    of another site may neither change anything nor open a console (403 / close
    1008): a unix socket forwarded to a local port needs no token at all.
    """

    def __init__(self, app: ASGIApp, token: str | None, secure: bool) -> None:
        self.app, self.token, self.secure = app, token, secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if conn.url.path == "/favicon.ico":  # browsers ask for it even on a refusal: the one thing anyone gets
            await FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")(scope, receive, send)
            return
        websocket = scope["type"] == "websocket"
        what = "console" if websocket else f"{scope['method']} {conn.url.path}"
        origin = conn.headers.get("origin")
        changes = websocket or scope["method"] not in ("GET", "HEAD")
        if changes and origin and urlsplit(origin).netloc != conn.headers.get("host"):
            await self._refuse(scope, receive, send, f"{_who(conn)}: {what} refused: other origin {origin}", 403)
            return
        in_address = conn.query_params.get("token", "")
        if self.token is not None:
            given = [
                conn.headers.get("authorization", "").removeprefix("Bearer "),
                conn.cookies.get(COOKIE, ""),
                in_address,
            ]
            if not any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given):
                await self._refuse(scope, receive, send, f"{_who(conn)}: {what} refused: no token", 401)
                return
            if in_address and not websocket:
                rest = {k: v for k, v in conn.query_params.items() if k != "token"}
                response = RedirectResponse(conn.url.path + (f"?{urlencode(rest)}" if rest else ""), status_code=303)
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", secure=self.secure)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, why: str, status: int) -> None:
        log.warning("%s", why)
        if scope["type"] == "websocket":
            await WebSocketClose(code=1008)(scope, receive, send)
            return
        answer = {
            401: "a token is needed: the address `microvm web` printed when it started has it\n",
            403: "refused: a page of another site may not change anything here\n",
        }
        await PlainTextResponse(answer[status], status_code=status)(scope, receive, send)


def create_app(state_dir: Path | None = None, token: str | None = None, secure: bool = False) -> ASGIApp:
    """The whole site; ``token`` None: the listening socket's permissions are the authorisation."""
    hubs: dict[str, ConsoleHub] = {}

    def installed_state(name: str) -> VMState:
        state = VMState.of(name, state_dir)
        if not state.installed:
            raise LookupError(name)
        return state

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    # The list, looked at most once a LIST_FRESH however many pages ask (each look probes every VM's sockets).
    listing: dict[str, Any] = {"at": -LIST_FRESH, "vms": []}
    looking = asyncio.Lock()

    async def vms(request: Request) -> Response:
        async with looking:
            if time.monotonic() - listing["at"] >= LIST_FRESH:
                listing["vms"] = await run_in_threadpool(lambda: [describe(s) for s in lifecycle.list_vms(state_dir)])
                listing["at"] = time.monotonic()
        return JSONResponse(listing["vms"])

    async def one(request: Request) -> Response:
        try:
            state = installed_state(request.path_params["name"])
        except MicrovmError as exc:
            return _error(exc, 400)
        except LookupError:
            return JSONResponse({"error": "no such VM"}, status_code=404)
        return JSONResponse(await run_in_threadpool(lambda: describe(lifecycle.status(state))))

    async def action(request: Request) -> Response:
        name, verb = request.path_params["name"], request.path_params["action"]
        if verb not in ACTIONS:
            return JSONResponse({"error": f"no action {verb!r}; one of {', '.join(ACTIONS)}"}, status_code=404)
        try:
            installed_state(name)
            message = await run_in_threadpool(ACTIONS[verb], name, state_dir)
        except MicrovmError as exc:
            log.info("%s: %s %s failed: %s", _who(request), verb, name, exc.message)
            return _error(exc)
        except LookupError:
            return JSONResponse({"error": "no such VM"}, status_code=404)
        listing["at"] = -LIST_FRESH  # the next list shows what the action did
        log.info("%s: %s %s: %s", _who(request), verb, name, message.splitlines()[0])
        return JSONResponse({"message": message})

    async def console_log(request: Request) -> Response:
        try:
            state = installed_state(request.path_params["name"])
        except (MicrovmError, LookupError):
            return PlainTextResponse("no such VM\n", status_code=404)
        path = state.console_files()[1]
        if not path.exists():
            return PlainTextResponse("", headers={"Cache-Control": "no-store"})
        return FileResponse(path, media_type="text/plain; charset=utf-8", headers={"Cache-Control": "no-store"})

    async def console(websocket: WebSocket) -> None:
        name = websocket.path_params["name"]
        try:
            state = installed_state(name)
        except (MicrovmError, LookupError):
            await websocket.close(code=1008)
            return
        await websocket.accept()
        hub = hubs.get(name) or hubs.setdefault(name, ConsoleHub(*state.console_files()))
        viewer, backlog = hub.join()
        log.info("%s: console %s opened (%d viewers)", _who(websocket), name, len(hub.viewers))

        async def typed() -> None:  # ends when the browser goes
            while (message := await websocket.receive())["type"] != "websocket.disconnect":
                text = message.get("text")
                await hub.send(text.encode() if text is not None else message.get("bytes") or b"")

        keys = asyncio.get_running_loop().create_task(typed())
        try:
            if backlog:
                await websocket.send_bytes(backlog)
            while not keys.done() and (data := await _next(viewer.queue, keys)) is not None:
                await websocket.send_bytes(data)
            if viewer.dropped:
                await websocket.close(code=1013, reason="fell behind the console: reconnect")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the browser went away
        finally:
            keys.cancel()
            await hub.leave(viewer)
            log.info("%s: console %s closed", _who(websocket), name)

    routes = [
        Route("/", page),
        Route("/api/vms", vms),
        Route("/api/vms/{name}", one),
        Route("/api/vms/{name}/log", console_log),
        Route("/api/vms/{name}/{action}", action, methods=["POST"]),
        WebSocketRoute("/api/vms/{name}/console", console),
        Mount("/static", StaticFiles(directory=STATIC, follow_symlink=False)),
    ]
    return Authorise(Starlette(routes=routes), token, secure)


async def _next(queue: asyncio.Queue[bytes | None], keys: asyncio.Task[None]) -> bytes | None:
    """The viewer's next chunk, or None once the browser closed (the key reader ended)."""
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait([getter, keys], return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await getter
    return None
