"""QMP, the control protocol of qemu and StratoVirt, through QEMU's own ``qemu.qmp`` client.

One way for both backends: :func:`session` is a negotiated connection for a
sequence of commands (qemu's suspend, resume, balloon), :func:`execute` runs one
command from synchronous code. ``qemu.qmp`` is imported when a command runs, not
with the backend: it costs ~20 ms on top of asyncio, and building or checking a
VM never needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MicrovmError

if TYPE_CHECKING:
    from qemu.qmp import QMPClient


class Unreachable(MicrovmError):
    """Nothing serves QMP on the socket (yet)."""


class CommandError(MicrovmError):
    """The QMP server answered a command with an error."""


@contextlib.asynccontextmanager
async def session(socket: Path) -> AsyncIterator[QMPClient]:
    """A negotiated QMP connection to ``socket``, closed on the way out, also when the server
    hung up first (after ``quit``, or when it exited)."""
    from qemu.qmp import QMPClient, QMPError  # late on purpose: see the module's docstring

    client = QMPClient("microvm")
    try:
        await client.connect(str(socket))
    except (OSError, QMPError) as exc:
        raise Unreachable(f"cannot connect to the QMP socket {socket}: {exc}", hint="is the VM running?") from None
    try:
        yield client
    finally:
        with contextlib.suppress(EOFError):
            await client.disconnect()


def execute(socket: Path, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Run one QMP command in a session of its own; its ``return`` value."""
    return asyncio.run(_execute(socket, command, arguments, timeout))


async def _execute(socket: Path, command: str, arguments: dict[str, Any] | None, timeout: float) -> Any:
    from qemu.qmp import ExecuteError, QMPError  # late on purpose: see the module's docstring

    async def connected() -> Any:
        async with session(socket) as client:
            return await client.execute(command, arguments)

    try:  # the timeout covers the greeting too: a stopped hypervisor accepts the connection, then says nothing
        return await asyncio.wait_for(connected(), timeout)
    except ExecuteError as exc:
        raise CommandError(f"QMP {command} on {socket}: {exc.error.error.class_}: {exc.error.error.desc}") from None
    except TimeoutError:
        raise MicrovmError(f"QMP {command} on {socket}: no answer within {timeout:g} s") from None
    except (QMPError, OSError, EOFError) as exc:
        raise MicrovmError(f"QMP {command} on {socket}: the connection failed: {exc!r}") from None
