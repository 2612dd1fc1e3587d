"""``microvm migrate``: move a running VM to another host, live, through the SSH connection.

The source's qemu writes its migration stream into a pipe to ``ssh HOST microvm
migrate-receive``; there it goes into a FIFO that the target's unit opens as
the state to resume from (the path ``microvm suspend`` uses, from a pipe
instead of a file). No port is opened, and ssh encrypts the guest's memory.
The source stops only after the target says the VM runs there; until then any
failure leaves the VM running at the source.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from ..control.process import peer_pid
from ..errors import MicrovmError
from ..host import lifecycle, systemd
from ..host.statedir import VMState, write_atomic
from ..hypervisors import Feature, Migrate, Migration, get
from ..layout import runner_config
from ..store import Store
from .copy import copy_to, remote_lacks
from .ssh import Remote

READY = b"ready\n"
START_TIMEOUT = 120  # the target's unit prepares (taps, volumes) before its qemu reads the stream
T = TypeVar("T")


def _migratable(state: VMState) -> tuple[Path, dict[str, Any], Migrate]:
    """The running VM's build, config and backend, or why it cannot migrate."""
    booted = state.booted
    if booted is None or not (systemd.is_active(state.name) or state.running_here()):
        raise MicrovmError(f"VM {state.name!r} is not running here", hint=f"microvm start {state.name}")
    config = runner_config(booted)
    mv = config["microvm"]
    backend = get(mv["hypervisor"])
    if not isinstance(backend, Migrate):
        raise MicrovmError(
            f"VM {state.name!r}: {backend.name} cannot migrate", hint=backend.suggestion(Feature.MIGRATE)
        )
    if not mv.get("migratable"):
        raise MicrovmError(
            f"VM {state.name!r} is not migratable", hint="set microvm.migratable = true, then microvm -Ru NAME"
        )
    if not mv.get("socket"):
        raise MicrovmError(f"VM {state.name!r} has no control socket to migrate it through", hint="set microvm.socket")
    return booted, config, backend


def shared_paths(state: VMState, config: dict[str, Any], store: Store) -> list[tuple[str, Path]]:
    """(what, directory) of everything the VM writes that must be at the same path on the target.

    Volume images (their directory) and share sources; shares of the store are copied instead.
    """
    mv = config["microvm"]
    found = [(f"volume {v['image']}", (state.path / v["image"]).parent) for v in mv.get("volumes", [])]
    for share in mv.get("shares", []):
        source = state.path / share["source"]
        if store.owner_of(source) is None and source != store.root:
            found.append((f"share {share['tag']} ({share['source']})", source))
    return found


@contextmanager
def _markers(paths: list[tuple[str, Path]]) -> Iterator[list[tuple[str, Path]]]:
    """A new file in each directory, for the target to look for: it sees them only on shared storage."""
    token = secrets.token_hex(8)
    made: list[tuple[str, Path]] = []
    try:
        for what, directory in paths:
            marker = directory / f".microvm-migrate-{token}"
            marker.touch()
            made.append((what, marker))
        yield made
    finally:
        for _, marker in made:
            marker.unlink(missing_ok=True)


def migrate(name: str, remote: Remote, store: Store, copy: bool = True) -> Migration:
    """Move the running VM ``name`` to ``remote``; it then runs there under systemd and is stopped here."""
    state = VMState.of(name)
    booted, config, backend = _migratable(state)
    socket = state.path / config["microvm"]["socket"]
    if copy:
        copy_to(remote, str(booted), store)
    elif lacking := remote_lacks(remote, store, store.in_dependency_order([booted])):
        raise MicrovmError(
            f"{remote} lacks the build of {name} ({len(lacking)} store entries, e.g. {lacking[0]})",
            hint=f"microvm copy --to {remote} {booted}, or migrate without --no-copy",
        )
    with _markers(shared_paths(state, config, store)) as markers:
        read, write = os.pipe()
        args = ["migrate-receive", name, str(booted)]
        args += [f"--shared={what}={marker}" for what, marker in markers]
        try:
            receiver = remote.spawn(*args, stdin=read, stdout=subprocess.PIPE)
        finally:
            os.close(read)
        assert receiver.stdout is not None and receiver.stderr is not None
        if receiver.stdout.readline() != READY:
            os.close(write)
            _failed(remote, receiver, args)
    try:
        migration = backend.migrate(socket, write)
    except BaseException:
        receiver.kill()
        receiver.wait()
        raise
    finally:
        os.close(write)
    receiver.stdout.read()
    if receiver.wait() != 0:
        backend.continue_here(socket)
        _failed(remote, receiver, args, "the VM runs on here")
    # the target runs it: stop it here (the stop sees a migrated VM and only ends qemu)
    if systemd.is_active(name):
        systemd.control("stop", name)
    else:
        backend.shutdown(socket, timeout=30)
    return migration


def _failed(remote: Remote, receiver: subprocess.Popen[bytes], args: list[str], note: str | None = None) -> None:
    assert receiver.stderr is not None
    error = receiver.stderr.read().decode(errors="replace")
    failure = remote.failure(receiver.wait(), error, args)
    raise MicrovmError(f"{failure}{f' ({note})' if note else ''}", hint=failure.hint)


# --- the target's side (microvm migrate-receive) ------------------------------------


def receive(name: str, runner: Path, shared: list[tuple[str, Path]], stream: BinaryIO, out: BinaryIO) -> None:
    """Install ``runner`` as VM ``name``, start its unit resuming from a FIFO, feed it ``stream``.

    Says ``ready`` on ``out`` once its qemu is set up to read the FIFO; returns once the VM runs here.
    On failure the unit is stopped and the FIFO removed: the source runs on.
    """
    for what, marker in shared:
        if not marker.exists():
            raise MicrovmError(
                f"the VM's {what} is not on storage this host shares with the source: {marker.parent} here is "
                "another directory",
                hint="put volumes and shares on shared storage (NFS, Ceph) mounted at the same path on both hosts",
            )
    systemd.require("receive a migration of", name)
    if systemd.is_active(name):
        raise MicrovmError(f"VM {name!r} is already running on this host")
    state = lifecycle.install_built(name, runner).state
    saved, saver = state.saved_state
    owner = state.path.stat()
    saved.unlink(missing_ok=True)
    os.mkfifo(saved, 0o600)
    write_atomic(saver, f"{runner}\n")
    for path in (saved, saver):  # the runner reads them as the state directory's owner
        os.chown(path, owner.st_uid, owner.st_gid)
    try:
        systemd.systemctl("start", "--no-block", systemd.unit(name))
        fd = _until(lambda: _open_writer(saved), f"VM {name!r} did not start here to take the migration", name)
        try:
            # qemu listens on its control socket once it is set up, just before it reads the stream:
            # the source starts sending only then, so the target's start-up is not migration time
            control = state.path / runner_config(runner)["microvm"]["socket"]
            _until(lambda: peer_pid(control), f"VM {name!r} did not start here to take the migration", name)
            out.write(READY)
            out.flush()
            shutil.copyfileobj(stream, os.fdopen(fd, "wb", closefd=False), 1 << 20)
        finally:
            os.close(fd)
        # the resume helper removes the FIFO once the state is loaded; the unit is active once it runs
        _until(
            lambda: not saved.exists() and systemd.is_active(name),
            f"VM {name!r} did not resume here from the migration stream",
            name,
        )
    except BaseException:
        systemd.systemctl("stop", systemd.unit(name), check=False)
        raise
    finally:
        saved.unlink(missing_ok=True)
        saver.unlink(missing_ok=True)


def _until(check: Callable[[], T | None], failure: str, name: str, timeout: float = START_TIMEOUT) -> T:
    """Poll ``check`` until it returns something; fail if the VM's unit stops or time runs out."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline or systemd.active_state(name) not in ("active", "activating"):
            raise MicrovmError(failure)
        time.sleep(0.02)
    return found


def _open_writer(fifo: Path) -> int | None:
    """The FIFO opened for writing, once the VM's runner has opened it for reading."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        return None
    os.set_blocking(fd, True)
    return fd
