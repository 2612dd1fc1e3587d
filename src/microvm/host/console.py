"""Running a VM in the foreground with its console in the terminal.

The hypervisor runs in its own session so the terminal's Ctrl-C reaches only
us: the first Ctrl-C shuts the guest down gracefully, a second stops it
hard. qemu's console is a unix socket with a log file: we print the log as it
grows (nothing is lost before we connect) and send keystrokes to the socket.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import proc
from ..control.process import connect_when_there
from ..errors import MicrovmError

if TYPE_CHECKING:
    from ..config.options import VMConfig


@contextlib.contextmanager
def _terminal_passthrough() -> Iterator[None]:
    """Keys go to the guest one by one, unechoed; Ctrl-C stays a signal for us."""
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@dataclass(frozen=True)
class Foreground:
    """What a foreground run needs to know of a built VM.

    Small and JSON-serialisable, so that ``microvm run`` of an unchanged VM can
    start it from a record (see :mod:`microvm.build.runstamp`) without
    evaluating the config again.
    """

    runner: Path
    hypervisor: str
    console: tuple[str, str] | None  # (socket, log file) in the state directory
    control: str | None  # the control socket in the state directory, if the hypervisor takes commands there
    virtiofs: bool  # virtiofs shares: their daemons are started from the config

    @classmethod
    def of(cls, vm: VMConfig, runner: Path, hypervisor: str | None = None) -> Foreground:
        from ..hypervisors import Feature, get

        backend = get(hypervisor or vm.microvm.hypervisor)
        control = vm.microvm.socket if backend.supports(Feature.CONTROL_SOCKET) else None
        virtiofs = any(share.proto == "virtiofs" for share in vm.microvm.shares)
        return cls(runner, backend.name, backend.console_socket(vm), control, virtiofs)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "runner": str(self.runner)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Foreground:
        console = tuple(data["console"]) if data["console"] else None
        return cls(Path(data["runner"]), data["hypervisor"], console, data["control"], data["virtiofs"])  # type: ignore[arg-type]


def run_foreground(plan: Foreground, workdir: Path, vm: VMConfig | None = None, shutdown_timeout: float = 60.0) -> int:
    """Run the VM in ``workdir`` with the console here; return the hypervisor's exit code.

    ``vm`` is needed only when the plan has virtiofs shares: their daemons are started from it.
    """
    console = plan.console
    workdir.mkdir(parents=True, exist_ok=True)
    if console:
        (workdir / console[1]).unlink(missing_ok=True)
    daemons: list[subprocess.Popen[bytes]] = []
    if plan.virtiofs:
        from . import virtiofsd

        assert vm is not None, "a VM with virtiofs shares is run from its config"
        daemons = virtiofsd.start(vm, workdir, runner=plan.runner)
    child = proc.spawn(
        [plan.runner / "bin" / "microvm-run"],
        cwd=workdir,
        start_new_session=console is not None,
        stdin=subprocess.DEVNULL if console else None,
    )
    interrupts = 0

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1 and plan.control:
            from ..hypervisors import get

            print("\r\nmicrovm: shutting down gracefully (Ctrl-C again to stop it now)", file=sys.stderr)
            args = (get(plan.hypervisor), workdir / plan.control, shutdown_timeout)
            threading.Thread(target=_shutdown, args=args, daemon=True).start()
        else:
            print("\r\nmicrovm: stopping the VM now", file=sys.stderr)
            child.kill()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        if console:
            log_path = workdir / console[1]
            with _terminal_passthrough():
                while not log_path.exists() and child.poll() is None:
                    time.sleep(0.005)

                def alive() -> bool:
                    return child.poll() is None

                def connect() -> socket.socket | None:
                    return connect_when_there(workdir / console[0], alive)

                with log_path.open("rb") if log_path.exists() else contextlib.nullcontext() as log:
                    _relay(alive, None, log, connect=connect)
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        if child.poll() is None:
            child.kill()
            child.wait()
        if daemons:
            from . import virtiofsd

            virtiofsd.stop(daemons)


def _shutdown(backend, control: Path, timeout: float) -> None:
    try:
        backend.shutdown(control, timeout)
    except Exception as exc:  # noqa: BLE001 - whatever failed is reported; a second Ctrl-C stops the VM
        print(f"\r\nmicrovm: graceful shutdown failed: {exc}", file=sys.stderr)


def _relay(
    alive: Callable[[], bool],
    sock: socket.socket | None,
    log: BinaryIO | None,
    detach: bytes = b"",
    connect: Callable[[], socket.socket | None] | None = None,
) -> None:
    """Copy the console log to stdout and stdin to the console socket while ``alive()``.

    What the socket sends is the same as the log and is discarded, but it
    must be read: qemu stops logging what it cannot write to a connected client.
    With ``connect``, the socket is opened only when there is something to
    type: a connected client costs qemu work for every byte the guest prints
    (a boot under TCG took about 0.2 s longer), and the log has it all anyway.
    With a ``detach`` key, typing it or the socket closing (the VM stopped) ends the relay.
    """
    out = sys.stdout.buffer
    stdin: int | None = sys.stdin.fileno()
    try:
        while True:
            finished = not alive() or (detach and sock is None)
            if log is not None and (data := log.read()):
                out.write(data)
                out.flush()
            elif finished:
                break
            watched = [fd for fd in (stdin, sock.fileno() if sock else None) if fd is not None]
            ready = select.select(watched, [], [], 0.02)[0] if watched else time.sleep(0.02) or []
            if sock is not None and sock.fileno() in ready and not sock.recv(65536):
                sock.close()
                sock = None
            if stdin is not None and stdin in ready:
                data = os.read(stdin, 4096)
                detached = bool(detach) and detach in data
                if detached:
                    data = data[: data.index(detach)]  # what was typed before the detach key still goes in
                if detached and not data:
                    break
                if not data:
                    stdin = None  # EOF on our stdin: stop forwarding
                else:
                    if sock is None and connect is not None:
                        sock, connect = connect(), None
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.sendall(data)
                if detached:
                    break
    finally:
        if sock is not None:
            sock.close()


DETACH_KEY = b"\x1d"  # Ctrl-]


def attach(name: str, sock_path: Path, log_path: Path, backlog: int = 4096) -> None:
    """Attach the terminal to the serial console of a VM running elsewhere (systemd): Ctrl-] detaches.

    Shows the end of the console log first, then what the guest prints, and
    sends keystrokes to it. Ends when the VM stops or on Ctrl-].
    """
    if not sock_path.is_socket():
        raise MicrovmError(
            f"{name!r} has no console socket {sock_path}",
            hint="it is not running, or its hypervisor has no console socket (qemu has one)",
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fspath(sock_path))
    except OSError as exc:
        sock.close()
        raise MicrovmError(f"cannot attach to the console of {name!r}: {exc}", hint="is it running?") from None
    print(f"microvm: console of {name}; Ctrl-] detaches", file=sys.stderr)
    with _terminal_passthrough(), log_path.open("rb") if log_path.exists() else contextlib.nullcontext() as log:
        if log is not None:
            log.seek(max(0, log.seek(0, os.SEEK_END) - backlog))
        _relay(lambda: True, sock, log, detach=DETACH_KEY)
