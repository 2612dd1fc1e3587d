"""``ocf:microvm:vm``: the resource agent Pacemaker runs for each cluster VM (OCF resource agent API 1.1).

Pacemaker runs ``/usr/lib/ocf/resource.d/microvm/vm ACTION`` (a tiny script `host apply` installs that
execs ``python -m microvm.helpers ocf-agent ACTION``) with the resource's parameters in
``OCF_RESKEY_*`` and answers by the exit code. The VM runs in its usual unit ``microvm@NAME`` with a
runtime drop-in ``Restart=no``: restarting a cluster VM is Pacemaker's job, not systemd's. Why an
action failed goes to stderr, prefixed ``ocf-exit-reason:`` so Pacemaker shows it.
"""

from __future__ import annotations

import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..control.process import peer_pid, stop_hard
from ..errors import MicrovmError
from ..host import lifecycle, systemd
from ..host.statedir import VMState
from ..host.units import cluster_dropin
from ..hypervisors import Control, get
from ..layout import runner_config, written_paths
from ..model.problems import format_path
from ..remote.migrate import migrate
from ..remote.ssh import Remote
from ..store import Store
from . import pacemaker
from .resources import DEFAULT_TIMEOUT, OPERATIONS

# OCF exit codes
SUCCESS, ERR_GENERIC, ERR_ARGS, ERR_UNIMPLEMENTED, ERR_PERM, ERR_INSTALLED, ERR_CONFIGURED, NOT_RUNNING = range(8)

POLL = 0.2  # s between looks at a starting or stopping VM
MONITOR_MARGIN = 10.0  # s of the monitor's timeout not spent asking a hypervisor that does not answer
START_MARGIN = 5.0  # s before Pacemaker's start timeout at which start gives up
STRAY_GRACE = 10.0  # s a hypervisor running outside its unit gets to exit after its hard stop


class Failure(Exception):
    """An action's failure: its OCF exit code and why."""

    def __init__(self, code: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


@dataclass(frozen=True)
class Params:
    """The resource's parameters and the operation's meta attributes, from Pacemaker's environment.

    Only the name and the timeout are read for every action: a stop or a monitor must not fail (and so get
    the node fenced) over a parameter it does not use; validate() checks the others."""

    name: str
    env: Mapping[str, str]
    timeout: float  # s, the operation's

    @classmethod
    def of(cls, env: Mapping[str, str]) -> Params:
        """The name, which must be a VM name (Failure ERR_CONFIGURED), and the timeout (ms in Pacemaker's)."""
        name = env.get("OCF_RESKEY_name", "")
        if not name:
            raise Failure(ERR_CONFIGURED, "the parameter name (the VM's name) is not set")
        try:
            VMState.of(name)
        except MicrovmError as exc:
            raise Failure(ERR_CONFIGURED, exc.message) from None
        try:
            timeout = int(env.get("OCF_RESKEY_CRM_meta_timeout", "")) / 1000
        except ValueError:
            timeout = DEFAULT_TIMEOUT
        return cls(name, env, timeout)

    @property
    def build(self) -> Path | None:
        build = self.env.get("OCF_RESKEY_build")
        return Path(build) if build else None

    @property
    def shared_storage(self) -> Path | None:
        shared = self.env.get("OCF_RESKEY_shared_storage") or None
        if shared is not None and not shared.startswith("/"):
            raise Failure(ERR_CONFIGURED, f"shared_storage={shared!r} is not an absolute path")
        return Path(shared) if shared else None

    @property
    def require_fencing(self) -> bool:
        text = self.env.get("OCF_RESKEY_require_fencing", "true")
        if (fencing := pacemaker.boolean(text)) is None:
            valid = "true/false, yes/no, on/off, y/n, 1/0"
            raise Failure(ERR_CONFIGURED, f"require_fencing={text!r} is not a boolean (Pacemaker's: {valid})")
        return fencing

    @property
    def migrate_target(self) -> str | None:
        return self.env.get("OCF_RESKEY_CRM_meta_migrate_target") or None

    def stop_grace(self) -> float:
        """Seconds a graceful stop may take: the timeout less a margin for the hard stop after it."""
        return max(self.timeout - max(5.0, self.timeout / 10), self.timeout / 2)


# --- meta-data -------------------------------------------------------------------------


PARAMETERS = [
    # name, required, type, default, short, long
    (
        "name",
        True,
        "string",
        None,
        "VM name",
        "The name of the microvm VM (its microvm@NAME unit and state directory).",
    ),
    (
        "build",
        False,
        "string",
        None,
        "the VM's build (a runner in the store)",
        (
            "The runner store path the cluster runs. start installs it when it is in this node's store and "
            "differs from the installed one, and fails (not installed) naming what to run when it is not in "
            "the store. Empty: the installed build."
        ),
    ),
    (
        "shared_storage",
        False,
        "string",
        None,
        "directory every node mounts",
        "The VM's volumes and writable shares must be under it, and it must be a mount point on the node.",
    ),
    (
        "require_fencing",
        False,
        "boolean",
        "true",
        "refuse to run without fencing",
        (
            "validate-all and start fail when stonith-enabled is false or the cluster has no fence device: "
            "without fencing a VM can run on two nodes at once after a split. false for tests only."
        ),
    ),
]
# changed, these need no restart of the VM (reload-agent): they are checked at start, and the drop-in follows
RELOADABLE = frozenset({"shared_storage", "require_fencing"})


def metadata() -> str:
    """The agent's description for Pacemaker (``crm_resource --show-metadata ocf:microvm:vm``)."""
    agent = ET.Element("resource-agent", name="vm", version=__version__)
    ET.SubElement(agent, "version").text = "1.1"
    ET.SubElement(agent, "longdesc", lang="en").text = (
        "Runs a microvm VM (its unit microvm@NAME) as a cluster resource: started, stopped and monitored "
        "through the hypervisor's own state, live-migrated to another node with microvm's migration."
    )
    ET.SubElement(agent, "shortdesc", lang="en").text = "A microvm VM"
    parameters = ET.SubElement(agent, "parameters")
    for name, required, kind, default, short, long in PARAMETERS:
        attributes = {"name": name, "required": "1" if required else "0"}
        if name == "name":
            attributes |= {"unique-group": "name", "unique": "1"}  # OCF 1.1's, and 1.0's for older tools
        if name in RELOADABLE:
            attributes["reloadable"] = "1"
        parameter = ET.SubElement(parameters, "parameter", attributes)
        ET.SubElement(parameter, "longdesc", lang="en").text = long
        ET.SubElement(parameter, "shortdesc", lang="en").text = short
        ET.SubElement(parameter, "content", {"type": kind, **({"default": default} if default else {})})
    actions = ET.SubElement(agent, "actions")
    for name, (timeout, interval) in OPERATIONS.items():
        timing = {"timeout": f"{timeout}s", **({"interval": f"{interval}s", "depth": "0"} if interval else {})}
        ET.SubElement(actions, "action", name=name, **timing)
    ET.indent(agent)
    return '<?xml version="1.0"?>\n' + ET.tostring(agent, encoding="unicode") + "\n"


# --- the actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """A VM validate-all found fit to run here."""

    state: VMState
    runner: Path


def _runner(params: Params, state: VMState) -> Path:
    """The build to run: the parameter's, which must be in this node's store, else the installed one (not
    installed: ERR_INSTALLED, which keeps Pacemaker from trying this node again)."""
    if params.build is not None:
        if not (params.build / "bin" / "microvm-run").exists():
            raise Failure(
                ERR_INSTALLED,
                f"the build {params.build} of VM {params.name!r} is not in this node's store",
                hint="copy it here: microvm cluster apply HOSTFILE (or microvm copy --to NODE BUILD)",
            )
        return params.build
    if (current := state.current) is None or state.runner_missing:
        raise Failure(
            ERR_INSTALLED,
            f"VM {params.name!r} is not installed on this node (in {state.path.parent})",
            hint="declare it in the host file and run microvm host apply, or set the parameter build",
        )
    return current


def validate(params: Params) -> Checked:
    """Whether this node can run the VM: installed (or its build here), on shared storage, fenced."""
    state = VMState.of(params.name)
    shared, fencing = params.shared_storage, params.require_fencing  # bad parameters first: ERR_CONFIGURED
    if not systemd.running():
        raise Failure(ERR_INSTALLED, "systemd does not run this node (PID 1), so no unit can run the VM")
    runner = _runner(params, state)
    if shared is not None:
        outside = [
            f"{format_path(option)} = {path}"
            for option, path in written_paths(runner_config(runner)["microvm"], state.path)
            if not path.is_relative_to(shared)
        ]
        if outside:
            raise Failure(
                ERR_CONFIGURED,
                f"VM {params.name!r} writes outside the shared storage {shared}: {', '.join(outside)}",
                hint=f"put its volumes and writable shares under {shared}",
            )
        if not mounted(shared):
            raise Failure(
                ERR_INSTALLED,
                f"the shared storage {shared} is not a mount point on this node",
                hint="mount it (or set the parameter shared_storage to the mount point itself)",
            )
    if fencing and (problem := pacemaker.fencing_problem(pacemaker.query_cib())):
        raise Failure(
            ERR_CONFIGURED,
            f"{problem}: without fencing a VM can run on two nodes at once",
            hint="add a fence device and stonith-enabled=true (or require_fencing=false, for tests only)",
        )
    return Checked(state, runner)


def mounted(path: Path) -> bool:
    """Something is mounted at ``path`` (/proc/self/mountinfo: a bind mount of the same file system counts,
    which os.path.ismount misses)."""
    wanted = os.path.realpath(path)
    with open("/proc/self/mountinfo") as mounts:
        points = (line.split()[4] for line in mounts)
        return any(_unescape(point) == wanted for point in points)


def _unescape(field: str) -> str:
    """mountinfo writes blanks, tabs, newlines and backslashes as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _control(state: VMState) -> tuple[Control, Path] | None:
    """The booted build's backend and control socket, when it has one."""
    if (booted := state.booted) is None:
        return None
    mv = runner_config(booted)["microvm"]
    backend = get(mv["hypervisor"])
    return (backend, state.path / mv["socket"]) if isinstance(backend, Control) and mv.get("socket") else None


def probe(state: VMState, patience: float = 0.0) -> tuple[int, str]:
    """monitor's answer and why: running by the hypervisor's own state, cleanly stopped, or failed. A
    hypervisor that listens but does not answer is asked again for ``patience`` seconds."""
    unit = systemd.active_state(state.name)
    if unit == "inactive":
        if state.running_here():
            return ERR_GENERIC, f"VM {state.name!r} runs outside its unit {systemd.unit(state.name)}"
        return NOT_RUNNING, f"VM {state.name!r} is stopped"
    if unit != "active":
        return ERR_GENERIC, f"the unit {systemd.unit(state.name)} is {unit}"
    if state.booted is None:
        return ERR_GENERIC, f"VM {state.name!r} has no booted build though its unit is active"
    if (control := _control(state)) is not None:
        fault = _fault(*control, patience)
    else:
        fault = None if state.running_here() else f"the hypervisor of VM {state.name!r} does not answer"
    return (ERR_GENERIC, fault) if fault else (SUCCESS, f"VM {state.name!r} runs")


def _fault(backend: Control, socket: Path, patience: float) -> str | None:
    """The backend's fault, asking again for ``patience`` s while the hypervisor listens but does not answer:
    QMP serves one client at a time, so a `microvm list` or an answer slow under load is no failure (one would
    get the VM restarted). A state the hypervisor reports as a fault counts at once."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return backend.fault(socket)
        except MicrovmError as exc:
            if time.monotonic() + POLL >= deadline or not peer_pid(socket):
                return str(exc)
        time.sleep(POLL)


def _stop_stray(state: VMState) -> None:
    """Stop hard the VM's hypervisor that runs outside its unit (started by hand, or left behind): the cluster
    runs the VM elsewhere once stop succeeds. The backend's hard stop, else the process behind the console."""
    control = _control(state)
    if control is not None and (pid := peer_pid(control[1])):
        control[0].stop_hard(control[1], pid)
    elif pid := peer_pid(state.console_files()[0]):
        stop_hard(pid)


def monitor(params: Params) -> int:
    """0 running, 7 cleanly stopped, 1 failed (probe), within the operation's timeout less a margin."""
    state = VMState.of(params.name)
    code, why = probe(state, params.timeout - MONITOR_MARGIN)
    if code != SUCCESS:
        print(why, file=sys.stderr)
    return code


def _restart_off(params: Params) -> None:
    """The runtime drop-in of the VM's unit (gone at reboot, as Pacemaker's own): ``Restart=no``, and the
    shared storage writable (what `host apply` writes for a cluster VM, here for a VM it did not declare)."""
    dropin = systemd.agent_dropin(params.name)
    content = cluster_dropin(str(params.shared_storage) if params.shared_storage else None)
    if not dropin.exists() or dropin.read_text() != content:
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(content)
        systemd.systemctl("daemon-reload")


def start(params: Params) -> int:
    """Start the VM's unit (installing the build first) and wait until the hypervisor says it runs; give up
    a margin before Pacemaker's timeout, so the failure has its reason instead of being a timeout."""
    deadline = time.monotonic() + params.timeout - START_MARGIN
    checked = validate(params)
    state, name = checked.state, params.name
    code, why = probe(state)
    if code == SUCCESS:
        return SUCCESS
    if state.running_here() and systemd.active_state(name) == "inactive":  # never a second copy next to it
        raise Failure(
            ERR_GENERIC,
            why,
            hint=f"stop it (microvm run's terminal, or kill it), then: crm_resource --cleanup --resource microvm-{name}",
        )
    if state.current != checked.runner:
        lifecycle.install_built(name, checked.runner)
    _restart_off(params)
    systemd.systemctl("reset-failed", systemd.unit(name), check=False)
    systemd.systemctl("start", "--no-block", systemd.unit(name), check=False)
    seen = set()  # the unit's states so far: inactive is a failed start only once it has left it
    while (found := probe(state))[0] != SUCCESS:
        seen.add(unit := systemd.active_state(name))
        if unit == "failed" or (unit == "inactive" and len(seen) > 1) or time.monotonic() > deadline:
            late = f" within {params.timeout - START_MARGIN:g} s" if time.monotonic() > deadline else ""
            raise Failure(
                ERR_GENERIC, f"VM {name!r} did not start{late}: {found[1]}", hint=f"journalctl -u {systemd.unit(name)}"
            )
        time.sleep(POLL)
    return SUCCESS


def _until(done: Callable[[], bool], seconds: float) -> bool:
    """Whether ``done()`` came true within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def stop(params: Params) -> int:
    """Shut the guest down gracefully; kill it hard once the operation's timeout less a margin has passed. A
    hypervisor of the VM still running outside the unit is stopped hard too: success means none runs here."""
    name, unit = params.name, systemd.unit(params.name)

    def stopped() -> bool:
        return systemd.active_state(name) in ("inactive", "failed")

    systemd.systemctl("stop", "--no-block", unit, check=False)
    if not _until(stopped, params.stop_grace()):
        print(f"VM {name!r} did not shut down within {params.stop_grace():g} s: killing it", file=sys.stderr)
        systemd.systemctl("kill", "--signal=SIGKILL", unit, check=False)
        if not _until(stopped, params.timeout - params.stop_grace()):
            raise Failure(ERR_GENERIC, f"VM {name!r} is still {systemd.active_state(name)} after a hard kill")
    systemd.systemctl("reset-failed", unit, check=False)  # a VM killed hard is stopped, not failed
    state = VMState.of(name)
    if state.running_here():
        print(f"VM {name!r} runs outside its unit {unit}: stopping it hard", file=sys.stderr)
        _stop_stray(state)
        if not _until(lambda: not state.running_here(), STRAY_GRACE):
            raise Failure(ERR_GENERIC, f"VM {name!r} still runs outside its unit {unit} after a hard stop")
    return SUCCESS


def migrate_to(params: Params) -> int:
    """Live-migrate the VM to the node Pacemaker names (ssh to it: root's ssh config resolves the name)."""
    if not params.migrate_target:
        raise Failure(ERR_GENERIC, "no migration target (OCF_RESKEY_CRM_meta_migrate_target is unset)")
    validate(params)
    migration = migrate(params.name, Remote.parse(params.migrate_target), Store())
    print(
        f"VM {params.name!r} migrated to {params.migrate_target} in {migration.total_ms} ms "
        f"(downtime {migration.downtime_ms} ms)",
        file=sys.stderr,
    )
    return SUCCESS


def migrate_from(params: Params) -> int:
    """The target's half: the VM arrived and runs here; from now on Pacemaker restarts it, not systemd."""
    state = VMState.of(params.name)
    _restart_off(params)
    code, why = probe(state)
    if code != SUCCESS:
        raise Failure(ERR_GENERIC, f"VM {params.name!r} does not run here after the migration: {why}")
    return SUCCESS


def reload_agent(params: Params) -> int:
    """A reloadable parameter changed: check the VM against it and write the unit's drop-in for the next start;
    the VM runs on (a change of anything else is a restart: a shutdown and a boot)."""
    validate(params)
    _restart_off(params)
    return SUCCESS


def validate_all(params: Params) -> int:
    """Whether this node could run the VM (validate), without touching it: Pacemaker asks before a change."""
    validate(params)
    return SUCCESS


ACTIONS: dict[str, Callable[[Params], int]] = {
    "start": start,
    "stop": stop,
    "monitor": monitor,
    "migrate_to": migrate_to,
    "migrate_from": migrate_from,
    "validate-all": validate_all,
    "reload-agent": reload_agent,
}


def run(action: str, env: Mapping[str, str] | None = None) -> int:
    """Carry out one OCF ``action``; its exit code (reasons on stderr)."""
    if action == "meta-data":
        print(metadata(), end="")
        return SUCCESS
    if action not in ACTIONS:
        print(f"ocf-exit-reason:the action {action!r} is not implemented", file=sys.stderr)
        return ERR_UNIMPLEMENTED
    try:
        params = Params.of(os.environ if env is None else env)
    except Failure as exc:  # no VM of that name can run: stopped, for stop and monitor
        _reason(exc.message, exc.hint)
        return {"stop": SUCCESS, "monitor": NOT_RUNNING}.get(action, exc.code)
    try:
        return ACTIONS[action](params)
    except Failure as exc:
        _reason(exc.message, exc.hint)
        return exc.code
    except (MicrovmError, OSError) as exc:
        _reason(str(exc), None)
        return ERR_GENERIC


def _reason(message: str, hint: str | None) -> None:
    """The failure as Pacemaker shows it (the first line, ocf-exit-reason:), then the hint."""
    print(f"ocf-exit-reason:{message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
