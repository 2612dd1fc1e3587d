"""qemu's control through QMP (docs/qmp.md): the power button, suspend and resume, migration, the balloon.

Apart from :mod:`.qemu` so that asyncio and the QMP client load only where QMP is
spoken: building, checking and running a VM never need them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import MicrovmError
from . import qmp
from .base import Migration

if TYPE_CHECKING:
    from qemu.qmp import QMPClient

T = TypeVar("T")
MiB = 1024 * 1024
# QMP run states of a guest that will not run on by itself (paused, in-migrate and the like are fine).
FAULTED = frozenset({"internal-error", "io-error", "shutdown", "guest-panicked", "watchdog", "postmigrate"})
SUSPEND_FD = "microvm-suspend"  # the name qemu knows the passed state file by (QMP getfd)


async def request_shutdown(socket: Path) -> None:
    """The power button; a paused guest is continued first so it can react. A saved VM
    (`microvm suspend`) must not run on: its state is on disk, so qemu just ends."""
    async with qmp.session(socket) as client:
        status = (await client.execute("query-status"))["status"]
        if status == "postmigrate":
            await client.execute("quit")
            return
        if status == "paused":
            await client.execute("cont")
        await client.execute("system_powerdown")


async def suspend(socket: Path, state: Path) -> None:
    """Stop the vCPUs, then migrate to the file (through a descriptor we pass: qemu, which may run
    as another user, never opens it). The migration stream keeps the paused run state, so
    the resumed VM waits for `cont` (see finish_resume)."""
    from qemu.qmp import ExecuteError  # late on purpose, as in .qmp: only control commands need qemu.qmp

    partial = state.with_name(f".{state.name}.partial")
    async with qmp.session(socket) as client:
        if (await client.execute("query-status"))["status"] != "running":
            raise MicrovmError(f"the VM on {socket} is not running (paused or already saved)")
        await client.execute("stop")
        try:
            # qemu's default cap (128 MiB/s) is for live migration over a network, not for a file
            await client.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                client.send_fd_scm(fd)
                await client.execute("getfd", {"fdname": SUSPEND_FD})
                await client.execute("migrate", {"uri": f"fd:{SUSPEND_FD}"})
                if error := await _migration_end(client, lambda: True):
                    raise MicrovmError(f"qemu could not save the VM: {error}")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, state)
        except (MicrovmError, ExecuteError) as exc:
            partial.unlink(missing_ok=True)
            await client.execute("cont")  # as it was: running
            if isinstance(exc, ExecuteError):
                raise MicrovmError(f"qemu could not save the VM: {exc}") from None
            raise


MIGRATE_FD = "microvm-migrate"  # the pipe to the target (through ssh), as qemu knows it
DOWNTIME_LIMIT_MS = 300


async def migrate(socket: Path, fd: int) -> Migration:
    """Live migration into ``fd``: RAM is sent while the guest runs, then the rest with the guest
    stopped for at most about DOWNTIME_LIMIT_MS. A failed migration lets the guest run on here."""
    from qemu.qmp import ExecuteError  # late on purpose, as in .qmp: only control commands need qemu.qmp

    async with qmp.session(socket) as client:
        if (await client.execute("query-status"))["status"] != "running":
            raise MicrovmError(f"the VM on {socket} is not running (paused, saved or migrated)")
        try:
            # the default cap (128 MiB/s) would make the link, not the guest, the limit
            limits = {"max-bandwidth": 1 << 40, "downtime-limit": DOWNTIME_LIMIT_MS}
            await client.execute("migrate-set-parameters", limits)
            client.send_fd_scm(fd)
            await client.execute("getfd", {"fdname": MIGRATE_FD})
            await client.execute("migrate", {"uri": f"fd:{MIGRATE_FD}"})
        except ExecuteError as exc:
            raise MicrovmError(f"qemu could not start the migration: {exc}") from None
        if error := await _migration_end(client, lambda: True):
            await _continue_paused(client)
            raise MicrovmError(f"the migration failed: {error}")
        info = await client.execute("query-migrate")
        return Migration(info.get("total-time", 0), info.get("downtime", 0), info.get("ram", {}).get("transferred", 0))


async def _continue_paused(client: QMPClient) -> None:
    if (await client.execute("query-status"))["status"] in ("paused", "postmigrate"):
        await client.execute("cont")


async def continue_(socket: Path) -> None:
    async with qmp.session(socket) as client:
        await _continue_paused(client)


async def _migration_end(client: QMPClient, alive: Callable[[], bool]) -> str | None:
    """Wait for the migration (out to a file, or in from one) to end: None when it completed, else
    why not (qemu's reason, or that the hypervisor went away: ``alive()`` turned false)."""
    while alive():
        info = await client.execute("query-migrate")
        status = info.get("status")  # none yet before an incoming migration starts
        if status == "completed":
            return None
        if status in ("failed", "cancelled"):
            return info.get("error-desc", f"migration {status}")
        await asyncio.sleep(0.02)
    return "qemu exited"


async def finish_resume(socket: Path, alive: Callable[[], bool], loaded: Callable[[], None]) -> bool:
    """Wait for the incoming migration to complete, then continue the paused VM."""
    while alive():
        try:
            async with qmp.session(socket) as client:
                if await _migration_end(client, alive) is not None:
                    return False
                loaded()
                await client.execute("cont")
                return True
        except qmp.Unreachable:  # not serving its socket yet
            await asyncio.sleep(0.02)
    return False


async def balloon(socket: Path, target: int) -> int:
    """Ask for ``target`` bytes of guest memory; return the guest's actual memory once it settles."""
    from qemu.qmp import EventListener  # late on purpose, as in .qmp: only control commands need qemu.qmp

    loop = asyncio.get_running_loop()
    async with qmp.session(socket) as client:
        listener = EventListener(("BALLOON_CHANGE",))
        with client.listen(listener):
            await client.execute("balloon", {"value": target})
            actual = (await client.execute("query-balloon"))["actual"]
            deadline = loop.time() + 10
            while actual != target and (remaining := deadline - loop.time()) > 0:
                try:
                    actual = (await asyncio.wait_for(listener.get(), remaining))["data"]["actual"]
                except TimeoutError:
                    break
        return actual


def run(work: Coroutine[Any, Any, T]) -> T:
    """One of the coroutines below, from synchronous code."""
    return asyncio.run(work)


def fault(socket: Path) -> str | None:
    """Why the guest behind ``socket`` will not run on by itself, or None (see Qemu.fault); MicrovmError when
    qemu does not answer within 5 s."""
    status = qmp.execute(socket, "query-status", timeout=5)["status"]
    return f"qemu reports the VM {status}" if status in FAULTED else None
