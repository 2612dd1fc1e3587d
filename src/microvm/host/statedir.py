"""Where installed VMs keep their state: one directory per VM under the state directory.

Layout of ``<stateDir>/<name>/`` (as microvm.nix's, with ``flake`` renamed ``source``)::

    current         -> the runner in the store (switched atomically by create/update)
    booted          -> the runner the VM was started from (set at start, removed at stop)
    source          the source it is rebuilt from (`microvm update`), one line; or
    declared        the host file that declares it fully (`microvm host apply`); update refuses
    builds/<runner>.json  what `list` compares without rebuilding: the source's fingerprint when that
                    runner was built; written before ``current`` is switched to it, so that one link
                    switches the VM to a build and its record at once (a kill in between changes nothing)
    <volumes>, <name>.sock, <name>-console.sock, <name>-console.log, shares' sources ...

Commands that change a VM hold ``<stateDir>/.lock-<name>`` so two of them never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import MicrovmError
from ..layout import (
    CREDENTIALS_IMAGE,
    RUNNER_CONFIG,
    SYSTEM_STATE_DIR,
    VM_NAME_MAX,
    read_small,
    runner_config,
    saved_state_files,
)
from ..model.names import valid_name
from ..store import Store

HOST_DEFAULTS = Path("/etc/default/microvm")  # written by `microvm host apply`: the host file's stateDir
BOOKKEEPING = ("current", "booted", "source", "declared", "builds")  # ours, not the user's


def default_state_dir() -> Path:
    """``$MICROVM_STATE_DIR``; for root the stateDir `host apply` recorded, else /var/lib/microvms;
    for other users ~/.local/state/microvms.

    The record lets a host file move ``stateDir`` without every later command needing to be told.
    """
    if env := os.environ.get("MICROVM_STATE_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return recorded_state_dir() or SYSTEM_STATE_DIR
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "microvms"


def host_defaults(state_dir: Path, host_file: Path) -> str:
    """The text of HOST_DEFAULTS (a systemd EnvironmentFile, also readable by sh) for ``state_dir``."""
    return (
        f"# Written by `microvm host apply {host_file}`: where the microvm command finds the VMs.\n"
        f"MICROVM_STATE_DIR={state_dir}\n"
    )


def recorded_state_dir() -> Path | None:
    """MICROVM_STATE_DIR from HOST_DEFAULTS, if the file sets it."""
    try:
        lines = HOST_DEFAULTS.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        key, _, value = line.strip().partition("=")
        if key == "MICROVM_STATE_DIR" and value:
            return Path(value)
    return None


def vm_dir(name: str, state_dir: Path | None = None) -> Path:
    return (state_dir or default_state_dir()) / name


def owner_ids(user: str, group: str) -> tuple[int, int]:
    """(uid, gid) of a user and group name."""
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid


def switch_link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically: readers see the old or the new target, never none."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Replace ``path`` in one step; ``mode`` set before (an executable is never briefly not one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    if mode is not None:
        tmp.chmod(mode)
    os.replace(tmp, path)


def _socket_alive(path: Path) -> bool:
    """Something listens on the unix socket ``path`` (a stale file refuses connections).

    Without blocking: a hypervisor serving another client (an attached console) leaves new
    ones in its backlog, and a blocking connect to a full backlog would wait until it detaches.
    """
    if not path.is_socket():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        try:
            sock.connect(os.fspath(path))
            return True
        except BlockingIOError:
            return True  # its backlog is full: it listens, busy with a client
        except OSError:
            return False


# NamedTuples, not dataclasses, here and in the modules `list` and `status` load: importing
# dataclasses (inspect, ast, dis, tokenize) costs every short command ~8 ms.
class VMState(NamedTuple):
    """One VM's state directory."""

    name: str
    path: Path

    @classmethod
    def of(cls, name: str, state_dir: Path | None = None) -> VMState:
        """The state of VM ``name`` (a plain name: it becomes a directory and a systemd instance)."""
        try:
            valid_name(name)
        except ValueError as exc:
            raise MicrovmError(f"VM name: {exc}") from None
        if len(name) > VM_NAME_MAX:
            raise MicrovmError(f"VM name {name[:20]}... is {len(name)} characters long; at most {VM_NAME_MAX}")
        return cls(name, vm_dir(name, state_dir))

    # `list` asks these of every installed VM: plain strings, not pathlib objects, for the files' names
    def _target(self, link: str) -> Path | None:
        try:
            return Path(os.readlink(f"{self.path}/{link}"))
        except OSError:  # no link (or not a link): one system call each
            return None

    def _line(self, file: str) -> str | None:
        try:
            return read_small(f"{self.path}/{file}").decode().strip()
        except FileNotFoundError:
            return None

    @property
    def current(self) -> Path | None:
        return self._target("current")

    @property
    def booted(self) -> Path | None:
        return self._target("booted")

    def current_or_refuse(self, other: str) -> Path:
        """The current runner, for a command that took this VM's name where it also takes ``other``."""
        if (runner := self.current) is None:
            raise MicrovmError(f"{self.name!r} is neither {other} nor a VM installed in {self.path.parent}")
        return runner

    @property
    def installed(self) -> bool:
        return os.path.islink(f"{self.path}/current")  # what `current` reads, without building its Path

    @property
    def source(self) -> str | None:
        return self._line("source")

    @property
    def declared_by(self) -> str | None:
        """The host file of a fully declarative VM."""
        return self._line("declared")

    def _record_file(self, runner: Path) -> str:
        """Where the record of the build of ``runner`` is (a string: `list` reads it for every VM)."""
        return f"{self.path}/builds/{runner.name}.json"

    def build_record_of(self, runner: Path | None) -> dict[str, Any]:
        """The record of the build of ``runner`` (`list` has read ``current`` already: one link read less)."""
        if runner is None:
            return {}
        try:
            return json.loads(read_small(self._record_file(runner)))
        except (FileNotFoundError, ValueError):
            return {}

    @property
    def runner_missing(self) -> bool:
        """``current`` points at a runner that is no longer in the store (deleted by hand)."""
        return (runner := self.current) is not None and not (runner / RUNNER_CONFIG).exists()

    def rebuild_command(self) -> str:
        """What rebuilds the VM: its host file's apply when declared there, else an update from its source."""
        return (
            f"microvm host apply {self.declared_by}" if self.declared_by is not None else f"microvm update {self.name}"
        )

    def missing_runner_error(self) -> MicrovmError:
        return MicrovmError(
            f"VM {self.name!r}: its runner {self.current} is missing from the store",
            hint=f"rebuild it: {self.rebuild_command()}",
        )

    def config(self) -> dict[str, Any]:
        """The evaluated config of the current runner."""
        if (runner := self.current) is None:
            raise MicrovmError(f"VM {self.name!r} is not installed in {self.path.parent}")
        if self.runner_missing:
            raise self.missing_runner_error()
        return runner_config(runner)

    @property
    def saved_state(self) -> tuple[Path, Path]:
        """`microvm suspend`'s saved state, and its record of the runner that saved it."""

        state, saver = saved_state_files(self.name)
        return self.path / state, self.path / saver

    @property
    def resumable(self) -> bool:
        """A saved state that the current build resumes on its next start (another build boots afresh)."""
        saved, saver = saved_state_files(self.name)  # as saved_state, as strings: `list` asks every VM
        return os.path.exists(f"{self.path}/{saved}") and self._line(saver) == str(self.current)

    def console_files(self) -> tuple[Path, Path]:
        return self.path / f"{self.name}-console.sock", self.path / f"{self.name}-console.log"

    def running_here(self, config: dict[str, Any] | None = None, booted: Path | None = None) -> bool:
        """The booted hypervisor answers on its control or console socket (no systemd needed).

        ``config``: the booted runner's vm.json, and ``booted``, that runner, when the caller has read them
        already (`list`).
        """
        if (booted := booted or self.booted) is None:
            return False
        try:
            control = (runner_config(booted) if config is None else config).get("microvm", {}).get("socket")
        except (OSError, ValueError):  # the booted runner is gone from the store: its console socket still answers
            control = None
        sockets = [self.console_files()[0], *([self.path / control] if control else [])]
        return any(_socket_alive(s) for s in sockets)

    # --- changes ----------------------------------------------------------------

    def refuse_dropping_saved_state(self, runner: Path) -> None:
        """Refuse to switch to ``runner`` while `microvm suspend` saved a state only the current build resumes:
        the next start would boot afresh and the guest's running state (its RAM) would be lost."""
        if runner != self.current and self.resumable:
            raise MicrovmError(
                f"VM {self.name!r} is suspended: its saved state {self.saved_state[0]} resumes only on the build "
                f"that saved it, and switching to {runner} would boot it afresh instead",
                hint=f"resume it and shut it down first (microvm start {self.name}, then microvm stop {self.name}), "
                f"or delete {self.saved_state[0]} to give its state up",
            )

    def switch_current(self, runner: Path) -> None:
        """Switch to ``runner`` (and so to its build record) in one step; then drop the records no link uses."""
        self.refuse_dropping_saved_state(runner)
        Store(runner.parent).share(runner)  # built before `host apply` made the microvm group, perhaps
        switch_link(self.path / "current", runner)
        keep = {Path(self._record_file(r)).name for r in (runner, self.booted) if r is not None}
        for record in (self.path / "builds").glob("*.json"):
            if record.name not in keep:
                record.unlink(missing_ok=True)

    def mark_booted(self) -> None:
        if (current := self.current) is not None:
            switch_link(self.path / "booted", current)

    def clear_booted(self) -> None:
        (self.path / "booted").unlink(missing_ok=True)

    def record(self, runner: Path, *, source: str | None, declared_by: str | None, build: dict[str, Any]) -> None:
        """Write how ``runner`` was built, before ``current`` is switched to it; exactly one of
        ``source`` / ``declared_by`` is kept."""
        record = Path(self._record_file(runner))
        record.parent.mkdir(exist_ok=True)
        write_atomic(record, json.dumps(build, indent=1, sort_keys=True) + "\n")
        for name, value in (("source", source), ("declared", declared_by)):
            if value is None:
                (self.path / name).unlink(missing_ok=True)
            else:
                write_atomic(self.path / name, value + "\n")

    def data_files(self) -> list[Path]:
        """Volumes and share sources in the directory: user data that `remove` keeps by default.

        Without the runner's config, which files are data is unknown: everything but our own files is kept.
        """
        if self.runner_missing:
            return [p for p in self.path.iterdir() if p.name not in BOOKKEEPING and not p.is_socket()]
        mv = self.config().get("microvm", {})
        volumes = [v["image"] for v in mv.get("volumes", []) if v["image"] != CREDENTIALS_IMAGE]  # secrets: not kept
        paths = volumes + [s["source"] for s in mv.get("shares", [])]
        return [self.path / p for p in paths if (self.path / p).exists() and (self.path / p).is_relative_to(self.path)]

    def remove(self, keep_data: bool) -> list[Path]:
        """Delete the state directory, except volumes and share sources when ``keep_data``; return what is kept."""
        kept = self.data_files() if keep_data else []
        for entry in self.path.iterdir():
            if any(entry == k or k.is_relative_to(entry) for k in kept):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        if not kept:
            self.path.rmdir()
        return kept


@contextlib.contextmanager
def locked(name: str, state_dir: Path | None = None, wait: bool = True) -> Iterator[VMState]:
    """Hold the VM's lock while changing its state directory (other commands wait, or fail with ``wait=False``)."""
    state = VMState.of(name, state_dir)
    state.path.parent.mkdir(parents=True, exist_ok=True)
    with (state.path.parent / f".lock-{name}").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise MicrovmError(f"another microvm command is changing VM {name!r}; try again when it is done") from None
        yield state


def installed(state_dir: Path | None = None) -> list[VMState]:
    """Every installed VM (a directory with a ``current`` link), by name."""
    root = state_dir or default_state_dir()
    try:
        entries = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    states = [VMState(name, root / name) for name in entries]
    return [s for s in states if s.installed]


def installed_stamp(state_dir: Path | None = None) -> dict[str, Any]:
    """What a VM file's checks read of the installed VMs, cheaply: the state directory and each VM's current
    runner (a store path, so it names its config). `build`/`run`'s record of a build holds it (runner.fastpath)."""
    root = state_dir or default_state_dir()
    vms = {s.name: None if s.runner_missing else str(s.current) for s in installed(root)}
    return {"given": str(state_dir) if state_dir else None, "dir": str(root.absolute()), "vms": vms}


def installed_configs(state_dir: Path | None = None) -> dict:  # -> dict[str, VMConfig]
    """The config of every installed VM (its current runner's vm.json), by VM name.

    A VM whose recorded config no longer validates (written by another
    version) is left out rather than failing every command.
    """
    # late on purpose: pydantic; list and status read vm.json without it
    from pydantic import ValidationError

    from ..model.options import VMConfig

    found = {}
    for state in installed(state_dir):
        try:
            found[state.name] = VMConfig.model_validate(state.config())
        except (OSError, ValueError, ValidationError):
            continue
    return found


def gc_roots(state_dir: Path | None = None) -> list[Path]:
    """The store entries installed VMs use: every ``current`` and ``booted`` link's target."""
    return [link for s in installed(state_dir) for link in (s.current, s.booted) if link is not None]
