"""Installed VMs: create, update, install (declared), remove, list, diff.

Every change builds first (into the store, which never changes existing
entries), then records the build and switches ``current`` atomically last,
all under the VM's lock: a failed or interrupted command leaves the old VM
as it was.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import MicrovmError
from ..layout import HYPERVISOR_GROUP, HYPERVISOR_USER, NETWORK_RECORD, RUNNER_PACKAGES, runner_config
from ..model.addresses import config_addresses
from ..store import Store
from . import sources, systemd
from .statedir import VMState, default_state_dir, installed, locked, owner_ids, write_atomic

if TYPE_CHECKING:
    from ..config import LoadedVM

Progress = Callable[[str], None]


class Change(NamedTuple):  # not a dataclass: see microvm.host.statedir.VMState
    """What an install or update did to one VM."""

    state: VMState
    old: Path | None
    new: Path

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def diff(self) -> list[str]:
        return diff_runners(self.old, self.new) if self.old else []


def _build(store: Store, loaded: LoadedVM, progress: Progress | None) -> Path:
    # late on purpose: list/status import this module and need no pydantic or builders
    from ..runner.build import build_vm

    return build_vm(store, loaded.config, progress=progress).runner


def service_owner() -> tuple[int, int] | None:
    """(uid, gid) of the ``microvm`` user and ``kvm`` group that run VMs under systemd, when we are root and they exist.

    The VM's state directory belongs to them: the hypervisor writes its sockets, volumes and ``booted`` there.
    """
    if os.geteuid() != 0:
        return None
    try:
        return owner_ids(HYPERVISOR_USER, HYPERVISOR_GROUP)
    except KeyError:
        return None


def _install(
    state: VMState,
    runner: Path,
    *,
    source: str | None,
    declared_by: str | None,
    fingerprint: dict[str, Any],
    owner: tuple[int, int] | None,
) -> Change:
    old = state.current
    state.refuse_dropping_saved_state(runner)  # before the build's record is written
    state.path.mkdir(parents=True, exist_ok=True)
    if owner := owner or service_owner():
        os.chown(state.path, *owner)
    state.record(
        runner, source=source, declared_by=declared_by, build={"runner": str(runner), "fingerprint": fingerprint}
    )
    state.switch_current(runner)
    return Change(state, old, runner)


def create(
    name: str,
    source_url: str,
    store: Store,
    state_dir: Path | None = None,
    progress: Progress | None = None,
    owner: tuple[int, int] | None = None,
    update_source: str | None = None,
) -> Change:
    """Build VM ``name`` from a source and install it; refuses an installed VM (volumes left by remove are reused).

    ``update_source`` is recorded for later updates instead of the source (microvm.nix's ``updateFlake``).
    """
    source = sources.Source.parse(source_url)
    recorded = sources.Source.parse(update_source).url if update_source else source.url
    with locked(name, state_dir) as state:
        if state.installed:
            raise MicrovmError(f"VM {name!r} already exists in {state.path}", hint=f"microvm update {name}")
        with sources.evaluate(source, name, store, state.path.parent) as evaluated:
            runner = _build(store, evaluated.loaded, progress)
        fingerprint = evaluated.fingerprint if recorded == source.url else {}  # {}: outdated until updated
        return _install(state, runner, source=recorded, declared_by=None, fingerprint=fingerprint, owner=owner)


def update(name: str, store: Store, state_dir: Path | None = None, progress: Progress | None = None) -> Change:
    """Rebuild VM ``name`` from its recorded source and switch ``current`` to it."""
    with locked(name, state_dir) as state:
        if not state.installed:
            raise MicrovmError(f"VM {name!r} is not installed in {state.path.parent}", hint=f"microvm create {name}")
        if state.declared_by is not None:
            raise MicrovmError(
                f"VM {name!r} is declared fully in {state.declared_by}; it is updated with the host",
                hint=f"microvm host apply {state.declared_by}",
            )
        if state.source is None:
            raise MicrovmError(f"VM {name!r} has no recorded source in {state.path}")
        source = sources.Source.parse(state.source)
        with sources.evaluate(source, name, store, state.path.parent) as evaluated:
            runner = _build(store, evaluated.loaded, progress)
        return _install(
            state, runner, source=source.url, declared_by=None, fingerprint=evaluated.fingerprint, owner=None
        )


def install_built(name: str, runner: Path, state_dir: Path | None = None) -> Change:
    """Install a runner built on another host (microvm deploy, migrate, the cluster's start): create the VM on
    first use, switch it after."""
    if not (runner / "bin" / "microvm-run").exists():
        raise MicrovmError(f"{runner} is not a VM runner (no bin/microvm-run)", hint="copy it here first")
    with locked(name, state_dir) as state:
        if state.declared_by is not None and systemd.cluster_managed(name):
            # the cluster picks the build of a VM the host file declares for it (its resource's, or a migration's)
            old = state.current
            if old != runner:
                state.switch_current(runner)
            return Change(state, old, runner)
        if state.declared_by is not None:
            raise MicrovmError(
                f"VM {name!r} is declared fully in {state.declared_by}; it is updated with the host",
                hint=f"microvm host apply {state.declared_by}",
            )
        # no source here to compare with: never "outdated" (changed_since sees no files: unknown)
        return _install(state, runner, source=None, declared_by=None, fingerprint={"deployed": True}, owner=None)


def install_declared(
    loaded: LoadedVM, runner: Path, host_file: Path, state_dir: Path, owner: tuple[int, int] | None = None
) -> Change:
    """Install a VM built from a host file's ``config`` (re-installed on every apply; update refuses it)."""
    fingerprint = sources.files_fingerprint(loaded.files)
    with locked(loaded.name, state_dir) as state:
        return _install(state, runner, source=None, declared_by=str(host_file), fingerprint=fingerprint, owner=owner)


def remove(name: str, state_dir: Path | None = None, keep_data: bool = True) -> list[Path]:
    """Uninstall VM ``name``; refuses while it runs. Returns the data kept (volumes, share sources)."""
    with locked(name, state_dir, wait=False) as state:
        if not state.installed:
            raise MicrovmError(f"VM {name!r} is not installed in {state.path.parent}")
        if systemd.is_active(name) or state.running_here():
            raise MicrovmError(f"VM {name!r} is running", hint=f"stop it first: microvm stop {name}")
        return state.remove(keep_data)


def control(action: str, name: str, state_dir: Path | None = None) -> None:
    """``systemctl start|stop|restart microvm@NAME.service``, once the name is valid and, to start, its runner
    is still in the store (said here, not by a unit that fails)."""
    state = VMState.of(name, state_dir)
    if systemd.cluster_managed(name):
        verb = {"start": "enable", "stop": "disable", "restart": "restart"}[action]
        raise MicrovmError(
            f"VM {name!r} is run by the cluster: {action} it there, or the cluster undoes it (or runs it twice)",
            hint=f"pcs resource {verb} microvm-{name}, or crm resource {action} microvm-{name}",
        )
    if action != "stop" and state.runner_missing:
        raise state.missing_runner_error()
    systemd.control(action, name)


# --- list ---------------------------------------------------------------------


class Status(NamedTuple):
    """A VM's state as `microvm list` shows it (microvm.nix's states and advice)."""

    name: str
    running: bool
    booted: bool
    state: str  # current | outdated | stale | suspended | not booted | missing
    advice: str | None = None  # what to do ...
    command: str | None = None  # ... with which command
    source: str | None = None
    addresses: tuple[str, ...] = ()  # what the guest has or gets on this host
    hypervisor: str | None = None  # of the current build (None: its vm.json is unreadable)
    vcpu: int | None = None
    mem: int | None = None  # MB
    uptime: float | None = None  # seconds since it was started, while it runs
    current: Path | None = None
    booted_runner: Path | None = None
    node: str | None = None  # a cluster VM: the nodes the cluster runs it on ("" while it is stopped)

    @property
    def next_step(self) -> str | None:
        return f"{self.advice}: {self.command}" if self.advice else None

    def to_json(self) -> dict[str, Any]:
        """The shape `list --json` and `status --json` print (docs/guide.md)."""
        return {
            "name": self.name,
            "state": self.state,
            "running": self.running,
            "hypervisor": self.hypervisor,
            "vcpu": self.vcpu,
            "mem": self.mem,
            "addresses": list(self.addresses),
            "uptime": None if self.uptime is None else round(self.uptime, 1),
            "advice": self.advice,
            "command": self.command,
            "source": self.source,
            "current": str(self.current) if self.current else None,
            "booted": str(self.booted_runner) if self.booted_runner else None,
            "node": self.node,
        }


def host_bridge(state_dir: Path | None = None) -> dict[str, Any] | None:
    """The host's ``network.basic`` as the last apply recorded it (read as JSON: no option model)."""
    try:
        return json.loads((state_dir or default_state_dir()).joinpath(NETWORK_RECORD).read_text()).get("basic")
    except (FileNotFoundError, ValueError):
        return None


def status(state: VMState, active: bool | None = None, bridge: dict[str, Any] | None = None) -> Status:
    """Decide without building: compare links and the recorded source fingerprint.

    Reads the current build's vm.json as plain JSON; ``active`` (systemd's
    view) and ``bridge`` (:func:`host_bridge`) are passed in by `list`, which
    asks for every VM at once.
    """
    current, booted_runner = state.current, state.booted
    booted = booted_runner is not None
    try:
        config = runner_config(current)  # type: ignore[arg-type]  # installed: current is set
    except (OSError, ValueError):
        config = None  # a runner gone from the store: its state still shows
    running = (systemd.is_active(state.name) if active is None else active) or (
        booted and state.running_here(config if booted_runner == current else None, booted_runner)
    )
    source, declared_by = state.source, state.declared_by
    outdated = sources.changed_since(source, state.build_record_of(current).get("fingerprint", {}))
    verdict: tuple[str, str | None, str | None]
    if config is None and state.runner_missing:  # its vm.json was read: the runner is there
        verdict = ("missing", "its runner is gone from the store, rebuild it", state.rebuild_command())
    elif not booted and state.resumable:  # before outdated: an update waits until it was resumed and shut down
        verdict = ("suspended", "resume with", f"microvm start {state.name}")
    elif outdated and declared_by:
        verdict = ("outdated", "apply the host", f"microvm host apply {declared_by}")
    elif outdated:
        verdict = ("outdated", "rebuild and reboot", f"microvm -Ru {state.name}")
    elif not booted:
        verdict = ("not booted", "start with", f"microvm start {state.name}")
    elif booted_runner != current:
        verdict = ("stale", "restart with", f"microvm restart {state.name}")
    else:
        verdict = ("current", None, None)
    uptime = max(0.0, time.time() - (state.path / "booted").lstat().st_mtime) if running and booted else None
    hypervisor = vcpu = mem = None
    addresses: tuple[str, ...] = ()
    try:
        options = config["microvm"]  # type: ignore[index]  # None: TypeError, below
        hypervisor, vcpu, mem = options.get("hypervisor"), options.get("vcpu"), options.get("mem")
        addresses = tuple(config_addresses(config, host_bridge(state.path.parent) if bridge is None else bridge))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # a runner written by another version, or gone: its state still shows
    return Status(
        state.name, running, booted, *verdict, source=source or declared_by, addresses=addresses,
        hypervisor=hypervisor, vcpu=vcpu, mem=mem, uptime=uptime, current=current, booted_runner=booted_runner,
    )  # fmt: skip


def list_vms(state_dir: Path | None = None) -> list[Status]:
    """Every installed VM's status; systemd is asked once for all of them."""
    states = installed(state_dir)
    active = systemd.active_units([systemd.unit(s.name) for s in states])
    bridge = host_bridge(state_dir) or {}
    return [status(s, systemd.unit(s.name) in active, bridge) for s in states]


# --- diff ---------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else key))
        return flat
    return {prefix: value}


def _kernel(runner: Path) -> str | None:
    """The kernel store entry the runner uses, without its hash (e.g. kernel-6.1.0-56-cloud-amd64)."""
    refs = runner / ".references"
    names = [Path(line).name for line in refs.read_text().splitlines()] if refs.exists() else []
    return next((n.split("-", 1)[1] for n in names if n.split("-", 1)[-1].startswith("kernel-")), None)


def _packages(runner: Path) -> dict[str, str]:
    path = runner / RUNNER_PACKAGES
    return json.loads(path.read_text()) if path.exists() else {}


class Diff(NamedTuple):
    kernel: tuple[str | None, str | None] | None
    options: dict[str, tuple[Any, Any]]
    packages: dict[str, tuple[str | None, str | None]]


def compare(old: Path, new: Path) -> Diff:
    """What differs between two runners: kernel, options (vm.json), packages (packages.json when recorded)."""
    kernel = (_kernel(old), _kernel(new))
    before, after = (_flatten(runner_config(r)) for r in (old, new))
    options = {
        k: (before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)
    }
    pkgs_old, pkgs_new = _packages(old), _packages(new)
    packages = {
        p: (pkgs_old.get(p), pkgs_new.get(p))
        for p in sorted(pkgs_old.keys() | pkgs_new.keys())
        if pkgs_old.get(p) != pkgs_new.get(p)
    }
    return Diff(kernel if kernel[0] != kernel[1] else None, options, packages)


def diff_runners(old: Path, new: Path) -> list[str]:
    """The diff as lines for the terminal."""
    diff = compare(old, new)
    lines = []
    if diff.kernel:
        lines.append(f"kernel: {diff.kernel[0]} -> {diff.kernel[1]}")
    for name, (a, b) in diff.packages.items():
        lines.append(f"package {name}: {a or '(none)'} -> {b or '(removed)'}")
    for option, (a, b) in diff.options.items():
        lines.append(f"{option}: {_show(a)} -> {_show(b)}")
    return lines


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value)


def suspend(name: str, state_dir: Path | None = None) -> Path:
    """Save a running VM's whole state to disk and stop it; its next start resumes it where it was
    (libvirt's managed save). The disks stay as they were: nothing runs between the two.

    Returns the saved state. On failure the VM runs on and nothing is saved.
    """
    # late on purpose: list/status import this module and need no pydantic or builders
    from ..hypervisors import Feature, Suspend, get

    with locked(name, state_dir) as state:
        booted, under_systemd = state.booted, systemd.is_active(name)
        if booted is None or not (under_systemd or state.running_here()):
            raise MicrovmError(f"VM {name!r} is not running", hint=f"microvm start {name}")
        mv = runner_config(booted)["microvm"]
        backend = get(mv["hypervisor"])
        if not isinstance(backend, Suspend):
            raise MicrovmError(
                f"VM {name!r}: {backend.name} cannot suspend a VM to disk", hint=backend.suggestion(Feature.SUSPEND)
            )
        if not mv.get("socket"):
            raise MicrovmError(f"VM {name!r} has no control socket to suspend it through", hint="set microvm.socket")
        saved, saver = state.saved_state
        write_atomic(saver, f"{booted}\n")
        try:
            backend.suspend(state.path / mv["socket"], saved)
        except BaseException:
            saver.unlink(missing_ok=True)
            raise
        owner = state.path.stat()
        for path in (saved, saver):  # the runner reads them as the state directory's owner
            os.chown(path, owner.st_uid, owner.st_gid)
        if under_systemd:
            systemd.control("stop", name)  # microvm-shutdown ends a saved VM at once
        else:
            backend.shutdown(state.path / mv["socket"], timeout=10)
    return saved


def run_installed(name: str, state_dir: Path | None = None) -> int:
    """Run an installed VM in the foreground (console here), with ``booted`` set while it runs."""
    # late on purpose: list/status import this module and need no pydantic or builders
    from ..model.options import VMConfig
    from ..runner.foreground import Foreground, run_foreground

    state = VMState.of(name, state_dir)
    runner = state.current_or_refuse("a VM file")
    if systemd.is_active(name) or state.running_here():
        raise MicrovmError(f"VM {name!r} is already running", hint=f"attach to it: microvm console {name}")
    config = VMConfig.model_validate(state.config())
    state.mark_booted()
    try:
        return run_foreground(Foreground.of(config, runner), state.path, config)
    finally:
        state.clear_booted()
