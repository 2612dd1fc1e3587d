"""Running a VM in the foreground with its console in the terminal.

The hypervisor runs in its own session so the terminal's Ctrl-C reaches only
us: the first Ctrl-C shuts the guest down gracefully, a second stops it
hard. Every other signal that ends a program (SIGTERM from kill or a service
manager, SIGHUP when the terminal goes away, SIGQUIT) does the same, and if we
are killed outright (SIGKILL) the kernel stops the hypervisor and virtiofsd
(:func:`microvm.proc.die_with_parent`). qemu's console is a unix socket with a
log file: we print the log as it grows (nothing is lost before we connect) and
send keystrokes to the socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import proc
from ..control.process import connect_when_there
from ..layout import CREDENTIALS_IMAGE, runner_config
from . import privileges
from .terminal import relay, terminal_passthrough

if TYPE_CHECKING:
    from ..model.options import VMConfig

# The signals that end a program by default: each shuts the guest down, as Ctrl-C does.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Foreground(NamedTuple):
    """What a foreground run needs to know of a built VM.

    Small and JSON-serialisable, so that ``microvm run`` of an unchanged VM can
    start it from a record (see :mod:`microvm.runner.fastpath`) without
    evaluating the config again. Not a dataclass: importing dataclasses would cost that start ~8 ms.
    """

    runner: Path
    hypervisor: str
    console: tuple[str, str] | None  # (socket, log file) in the state directory
    control: str | None  # the control socket in the state directory, if the hypervisor takes commands there
    virtiofs: bool  # virtiofs shares: their daemons are started from the config
    as_root: bool  # run as root when we are: microvm.runAsRoot, or qemu drops to microvm.user itself

    @classmethod
    def of(cls, vm: VMConfig, runner: Path, hypervisor: str | None = None) -> Foreground:
        from ..hypervisors import Control, get  # late on purpose: the fast path runs without the backends

        backend = get(hypervisor or vm.microvm.hypervisor)
        control = vm.microvm.socket if isinstance(backend, Control) else None
        virtiofs = any(share.proto == "virtiofs" for share in vm.microvm.shares)
        as_root = vm.microvm.runAsRoot or vm.microvm.user is not None
        return cls(runner, backend.name, backend.console_socket(vm), control, virtiofs, as_root)

    def to_json(self) -> dict[str, Any]:
        return {**self._asdict(), "runner": str(self.runner)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Foreground:
        console = tuple(data["console"]) if data["console"] else None
        return cls(
            Path(data["runner"]), data["hypervisor"], console, data["control"], data["virtiofs"], data["as_root"]
        )  # type: ignore[arg-type]


def run_foreground(plan: Foreground, workdir: Path, vm: VMConfig | None = None, shutdown_timeout: float = 60.0) -> int:
    """Run the VM in ``workdir`` with the console here; return the hypervisor's exit code.

    ``vm`` is needed only when the plan has virtiofs shares: their daemons are started from it.
    Started as root, the hypervisor runs as an unprivileged user unless the plan says root
    (see :mod:`microvm.runner.privileges`); virtiofsd stays root.
    """
    console = plan.console
    workdir.mkdir(parents=True, exist_ok=True)
    if console:
        (workdir / console[1]).unlink(missing_ok=True)
    user, groups, env = None, [], None
    if os.geteuid() == 0 and not plan.as_root and not os.environ.get(privileges.ROOT_ENV):
        if files := runner_config(plan.runner).get("microvm", {}).get("credentialFiles"):
            from . import credentials  # late on purpose: tarfile, only for a VM with secrets (start-up speed)

            # root reads the host's private files; the unprivileged runner then uses the disk made here
            credentials.pack(workdir / CREDENTIALS_IMAGE, [f"{n}={workdir / p}" for n, p in files.items()])
            env = {credentials.PACKED_ENV: "1"}
        *user, groups = privileges.drop_to(plan.runner, workdir)
    daemons: list[subprocess.Popen[bytes]] = []
    if plan.virtiofs:
        from . import virtiofsd  # late on purpose: it loads the option model; only virtiofs shares need it

        assert vm is not None, "a VM with virtiofs shares is run from its config"
        daemons = virtiofsd.start(vm, workdir, runner=plan.runner)
    child = proc.spawn(
        [plan.runner / "bin" / "microvm-run"],
        cwd=workdir,
        start_new_session=console is not None,
        stdin=subprocess.DEVNULL if console else None,
        user=tuple(user) if user else None,
        groups=groups,
        env=env,
    )
    interrupts = 0

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1 and plan.control:
            from ..hypervisors import Control, capable  # late on purpose: only a signal needs the backend

            again = "Ctrl-C" if signum == signal.SIGINT else "signal"
            _say(f"microvm: shutting down gracefully ({again} again to stop it now)")
            args = (capable(plan.hypervisor, Control), workdir / plan.control, shutdown_timeout)
            threading.Thread(target=_shutdown, args=args, daemon=True).start()
        else:
            _say("microvm: stopping the VM now")
            child.kill()

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        if console:
            log_path = workdir / console[1]
            with terminal_passthrough():
                while not log_path.exists() and child.poll() is None:
                    time.sleep(0.005)

                def alive() -> bool:
                    return child.poll() is None

                def connect() -> socket.socket | None:
                    return connect_when_there(workdir / console[0], alive)

                with log_path.open("rb") if log_path.exists() else contextlib.nullcontext() as log:
                    try:
                        relay(alive, None, log, connect=connect)
                    except OSError:
                        pass  # the terminal is gone (SIGHUP): the guest still shuts down, unseen
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if child.poll() is None:
            child.kill()
            child.wait()
        if daemons:
            from . import virtiofsd  # late on purpose: it loads the option model; only virtiofs shares need it

            virtiofsd.stop(daemons)


def _say(message: str) -> None:
    """Tell the terminal, if there still is one (after SIGHUP there is not)."""
    with contextlib.suppress(OSError):
        print(f"\r\n{message}", file=sys.stderr, flush=True)


def _shutdown(backend, control: Path, timeout: float) -> None:
    try:
        backend.shutdown(control, timeout)
    except Exception as exc:  # noqa: BLE001 - whatever failed is reported; a second Ctrl-C stops the VM
        _say(f"microvm: graceful shutdown failed: {exc}")
