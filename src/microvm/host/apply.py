"""``microvm host apply``: make this host what a host file declares (our ``nixos-rebuild switch``).

Planning builds every fully declared VM (into the store: changes nothing
else) and compares what is on disk with what should be; the result is a
:class:`~microvm.host.plan.Plan` (see there). The host network's plan is a
part of it.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from ..config import LoadedHost, LoadedVM
from ..errors import ConfigError, ConfigErrors
from ..layout import OCF_AGENT
from ..runner import privileges
from ..runner.build import build_vm
from ..store import PRIVATE_GROUP, Store
from . import lifecycle, network, statedir, systemd, units
from .network.units import DNSMASQ_PREFIX, DNSMASQ_UNITS
from .plan import (
    DEFAULT_UNIT_DIR,
    Change,
    Group,
    Plan,
    RemoveFile,
    Systemctl,
    activation_changes,
    unit_file_changes,
    write_if_changed,
)
from .statedir import VMState, owner_ids
from .unitfile import HEADER, generated


@dataclass
class EnsureGroup(Change):
    name: str

    def describe(self) -> str:
        return f"create system group {self.name}"

    def apply(self) -> None:
        privileges.create_group(self.name)


@dataclass
class EnsureUser(Change):
    name: str
    group: str
    home: Path

    def describe(self) -> str:
        return f"create system user {self.name} (group {self.group})"

    def apply(self) -> None:
        privileges.create_user(self.name, self.group, self.home)


@dataclass
class EnsureDir(Change):
    path: Path
    owner: tuple[str, str]
    mode: int = 0o755

    def describe(self) -> str:
        return f"create {self.path} (owner {':'.join(self.owner)})"

    def apply(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=self.mode)
        os.chown(self.path, *owner_ids(*self.owner))


@dataclass
class InstallDeclared(Change):
    """Switch a fully declared VM to its new build (the diff is shown first)."""

    loaded: LoadedVM
    runner: Path
    host_file: Path
    state_dir: Path
    owner: tuple[str, str]

    def describe(self) -> str:
        old = VMState.of(self.loaded.name, self.state_dir).current
        lines = [f"{'update' if old else 'install'} VM {self.loaded.name}: {self.runner}"]
        lines += [f"    {line}" for line in (lifecycle.diff_runners(old, self.runner) if old else [])]
        return "\n".join(lines)

    def apply(self) -> None:
        lifecycle.install_declared(self.loaded, self.runner, self.host_file, self.state_dir, owner_ids(*self.owner))


@dataclass
class CreateFromSource(Change):
    """A source-deployed VM is created once; afterwards it is `microvm update`'s."""

    name: str
    source: str
    update_source: str | None
    store: Store
    state_dir: Path
    owner: tuple[str, str]

    def describe(self) -> str:
        return f"create VM {self.name} from {self.source}"

    def apply(self) -> None:
        owner = owner_ids(*self.owner)
        lifecycle.create(
            self.name, self.source, self.store, self.state_dir, owner=owner, update_source=self.update_source
        )


def _owned(state_dir: Path) -> bool:
    try:
        return pwd.getpwuid(state_dir.stat().st_uid).pw_name == units.USER
    except (FileNotFoundError, KeyError):
        return False


def _system_changes(state_dir: Path) -> list[Change]:
    """The ``kvm`` and ``microvm`` groups, the ``microvm`` user, and the state directory they own."""
    changes: list[Change] = []
    for group in (units.GROUP, PRIVATE_GROUP):
        try:
            grp.getgrnam(group)
        except KeyError:
            changes.append(EnsureGroup(group))
    try:
        pwd.getpwnam(units.USER)
    except KeyError:
        changes.append(EnsureUser(units.USER, units.GROUP, state_dir))
    if not _owned(state_dir):
        changes.append(EnsureDir(state_dir, (units.USER, units.GROUP)))
    return changes


@dataclass
class _VMPlan:
    changes: list[Change] = field(default_factory=list)
    installs: dict[str, list[str]] = field(default_factory=dict)  # name -> how install-microvm-NAME installs it
    to_restart: list[str] = field(default_factory=list)  # installed VMs that changed, with restartIfChanged


def _vm_changes(host: LoadedHost, store: Store, state_dir: Path, say: Callable[[str], None]) -> _VMPlan:
    """Build the fully declared VMs; install those that changed, create the source-deployed ones missing."""
    owner = (units.USER, units.GROUP)
    result = _VMPlan()
    for name, declared in host.config.microvm.vms.items():
        state = VMState.of(name, state_dir)
        if name in host.vms:
            built = build_vm(store, host.vms[name].config, progress=lambda step, n=name: say(f"building {n}: {step}"))
            if not declared.cluster:  # a cluster VM's build is the resource's: the agent's start installs it
                result.installs[name] = ["--runner", str(built.runner)]
            if state.current != built.runner or state.declared_by != str(host.loaded.file):
                state.refuse_dropping_saved_state(built.runner)  # before anything is applied
                result.changes.append(InstallDeclared(host.vms[name], built.runner, host.loaded.file, state_dir, owner))
                if state.current is not None and declared.restartIfChanged and not declared.cluster:
                    result.to_restart.append(name)
        else:
            source, update = declared.source or "", declared.updateSource
            result.installs[name] = ["--source", source, *(["--update-source", update] if update != source else [])]
            if not state.installed:
                result.changes.append(CreateFromSource(name, source, update, store, state_dir, owner))
    return result


def plan(
    host: LoadedHost,
    store: Store,
    unit_dir: Path = DEFAULT_UNIT_DIR,
    progress: Callable[[str], None] | None = None,
    cluster_vms: Collection[str] = (),
) -> Plan:
    """What `apply` would change, building the declared VMs on the way.

    The host network comes after the VMs' files and units, before systemd
    reloads and starts anything. Systemd is told only when the units go to
    /etc/systemd/system and it runs. ``cluster_vms``: the VMs the cluster
    still has a resource of (the cluster layer asks it; this one cannot).
    """
    _refuse_leaving_cluster(host, cluster_vms)
    config = host.config.microvm
    state_dir = Path(config.stateDir)
    vms = _vm_changes(host, store, state_dir, progress or (lambda _: None))
    autostart = sorted({*config.autostart, *(n for n, d in config.vms.items() if d.autostart and not d.cluster)})
    net_units = network.network_units(host.config, state_dir)
    wanted = units.all_units(
        state_dir, store.root, autostart, vms.installs, config.host.useNotifySockets, config.host.startupTimeout
    )
    web = {units.WEB: units.web_service(config.web, state_dir, store.root)} if config.web.enable else {}
    wanted |= net_units | web
    for name, declared in config.vms.items():
        loaded = host.vms.get(name)
        wanted |= units.vm_dropins(name, declared, loaded.config if loaded else None, state_dir)
        if declared.cluster:
            wanted[f"microvm@{name}.service.d/{systemd.CLUSTER_DROPIN}"] = units.cluster_dropin(
                host.config.cluster.sharedStorage
            )
    kinds = ("install.conf", units.OVERRIDES_DROPIN, units.CREDENTIALS_DROPIN, systemd.CLUSTER_DROPIN)
    dropins = [f"microvm@*.service.d/{d}" for d in kinds]
    stale = generated(unit_dir, "install-microvm-*.service", *dropins, DNSMASQ_UNITS, units.WEB)
    files = unit_file_changes(unit_dir, wanted, enable=[units.TARGET, *net_units, *web], stale=stale)
    net = network.plan_network(host.config, state_dir)
    record = _record_changes(state_dir, host.loaded.file) if unit_dir == DEFAULT_UNIT_DIR else []
    if unit_dir == DEFAULT_UNIT_DIR:
        record += _cluster_agent(host.config.cluster.enable, state_dir, store)
    result = Plan([*_system_changes(state_dir), *record, *vms.changes, *files])
    if net:
        result.add(Group("network", net))
    if systemd.running() and unit_dir == DEFAULT_UNIT_DIR:
        result.add(*activation_changes(files, [*net_units, *web], "host file", (DNSMASQ_PREFIX, units.WEB)))
        if stopped := [n for n in autostart if not systemd.is_active(n)]:
            result.add(Systemctl(("start", *map(systemd.unit, stopped)), "autostart"))
        for name in vms.to_restart:
            if systemd.is_active(name):
                result.add(Systemctl(("restart", systemd.unit(name)), "restartIfChanged"))
    return result


def _refuse_leaving_cluster(host: LoadedHost, cluster_vms: Collection[str]) -> None:
    """Refuse to take a VM, or the host, out of the cluster while the cluster still runs it: every node would
    start the VM by itself (its volumes shared: several times at once), or find the agent of its resources gone
    (a failed monitor, then a failed stop: fenced)."""
    file, declared = str(host.loaded.file), host.config.microvm.vms
    hint = "take it out of the cluster first: microvm cluster apply (it removes the resources), then host apply"
    problems = [
        ConfigError(
            f"the cluster still runs VM {name!r} (its resource microvm-{name}); it cannot become this host's",
            file=file,
            option=f"microvm.vms.{name}.cluster" if name in declared else f"microvm.vms.{name}",
            hint=hint,
        )
        for name in sorted(cluster_vms)
        if host.config.cluster.enable and not (name in declared and declared[name].cluster)
    ]
    if not host.config.cluster.enable and cluster_vms:
        problems.append(
            ConfigError(
                f"the cluster still has resources of its agent: {', '.join(f'microvm-{n}' for n in sorted(cluster_vms))};"
                " removing the agent fails them (and fences their nodes)",
                file=file,
                option="cluster.enable",
                hint="remove the cluster VMs from the host file and run microvm cluster apply first, then host apply",
            )
        )
    if problems:
        raise ConfigErrors(problems)


def _cluster_agent(enable: bool, state_dir: Path, store: Store) -> list[Change]:
    """The resource agent Pacemaker runs (root's, mode 0755) on a cluster node; removed when no longer one."""
    if enable:
        return write_if_changed(OCF_AGENT, units.ocf_agent(state_dir, store.root), 0o755)
    if OCF_AGENT.exists() and HEADER in OCF_AGENT.read_text():
        return [RemoveFile(OCF_AGENT)]
    return []


def _record_changes(state_dir: Path, host_file: Path) -> list[Change]:
    """Record stateDir for the commands run later (only beside the real units: a staged root has its own /etc)."""
    return write_if_changed(statedir.HOST_DEFAULTS, statedir.host_defaults(state_dir, host_file))
