"""``microvm host apply``: make this host what a host file declares (our ``nixos-rebuild switch``).

Planning builds every fully declared VM (into the store: changes nothing
else) and compares what is on disk with what should be; the result is a
:class:`Plan`, a list of :class:`Change` objects that each describe themselves
(for ``--dry-run``) and apply themselves. Nothing that is already right is in
the plan, so applying twice changes nothing the second time. Other parts of the
host (networking) add their own changes to the same plan.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import proc
from ..build.store import Store
from ..config import LoadedHost, LoadedVM
from . import lifecycle, systemd, units
from .statedir import VMState, owner_ids, switch_link, write_atomic

DEFAULT_UNIT_DIR = Path("/etc/systemd/system")


class Change:
    """One step of a plan."""

    def describe(self) -> str:
        raise NotImplementedError

    def apply(self) -> None:
        raise NotImplementedError


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)

    def add(self, change: Change) -> None:
        self.changes.append(change)

    def apply(self, report: Callable[[str], None]) -> None:
        for change in self.changes:
            report(change.describe())
            change.apply()


@dataclass
class EnsureGroup(Change):
    name: str

    def describe(self) -> str:
        return f"create system group {self.name}"

    def apply(self) -> None:
        proc.run(["groupadd", "--system", self.name])


@dataclass
class EnsureUser(Change):
    name: str
    group: str
    home: Path

    def describe(self) -> str:
        return f"create system user {self.name} (group {self.group})"

    def apply(self) -> None:
        proc.run(
            ["useradd", "--system", "--gid", self.group, "--home-dir", self.home, "--no-create-home"]
            + ["--shell", "/usr/sbin/nologin", self.name]
        )


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
class WriteFile(Change):
    path: Path
    content: str

    def describe(self) -> str:
        return f"{'update' if self.path.exists() else 'write'} {self.path}"

    def apply(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, self.content)


@dataclass
class RemoveFile(Change):
    path: Path

    def describe(self) -> str:
        return f"remove {self.path}"

    def apply(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.path.parent.name.endswith(".d") and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()


@dataclass
class Link(Change):
    path: Path
    target: Path

    def describe(self) -> str:
        return f"link {self.path} -> {self.target}"

    def apply(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        switch_link(self.path, self.target)


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
    store: Store
    state_dir: Path
    owner: tuple[str, str]

    def describe(self) -> str:
        return f"create VM {self.name} from {self.source}"

    def apply(self) -> None:
        lifecycle.create(self.name, self.source, self.store, self.state_dir, owner=owner_ids(*self.owner))


@dataclass
class Systemctl(Change):
    args: tuple[str, ...]
    why: str = ""

    def describe(self) -> str:
        return f"systemctl {' '.join(self.args)}" + (f" ({self.why})" if self.why else "")

    def apply(self) -> None:
        systemd.systemctl(*self.args)


def _owned(state_dir: Path) -> bool:
    try:
        return pwd.getpwuid(state_dir.stat().st_uid).pw_name == units.USER
    except (FileNotFoundError, KeyError):
        return False


def plan(
    host: LoadedHost,
    store: Store,
    unit_dir: Path = DEFAULT_UNIT_DIR,
    progress: Callable[[str], None] | None = None,
    extra: Sequence[Change] = (),
) -> Plan:
    """What `apply` would change, building the declared VMs on the way.

    ``extra`` are changes other parts of the host plan (networking: bridge, DHCP unit,
    nftables); they come after the VMs' files and units, before systemd reloads and starts VMs.
    """
    from ..build.vm import build_vm

    say = progress or (lambda _: None)
    config = host.config.microvm
    state_dir = Path(config.stateDir)
    owner = (units.USER, units.GROUP)
    result = Plan()
    try:
        grp.getgrnam(units.GROUP)
    except KeyError:
        result.add(EnsureGroup(units.GROUP))
    try:
        pwd.getpwnam(units.USER)
    except KeyError:
        result.add(EnsureUser(units.USER, units.GROUP, state_dir))
    if not _owned(state_dir):
        result.add(EnsureDir(state_dir, owner))

    installs: dict[str, list[str]] = {}
    changed: list[str] = []
    for name, declared in config.vms.items():
        state = VMState.of(name, state_dir)
        if name in host.vms:
            say(f"building {name}")
            runner = build_vm(
                store, host.vms[name].config, progress=lambda step, n=name: say(f"building {n}: {step}")
            ).runner
            installs[name] = ["--runner", str(runner)]
            if state.current != runner or state.declared_by != str(host.loaded.file):
                result.add(InstallDeclared(host.vms[name], runner, host.loaded.file, state_dir, owner))
                if state.current is not None and declared.restartIfChanged:
                    changed.append(name)
        else:
            source = declared.updateSource or declared.source or ""
            installs[name] = ["--source", source]
            if not state.installed:
                result.add(CreateFromSource(name, source, store, state_dir, owner))

    autostart = sorted({*config.autostart, *(n for n, d in config.vms.items() if d.autostart)})
    wanted = units.all_units(state_dir, store.root, autostart, installs)
    for rel, content in wanted.items():
        path = unit_dir / rel
        if not path.exists() or path.read_text() != content:
            result.add(WriteFile(path, content))
    for path in _generated_units(unit_dir):
        if str(path.relative_to(unit_dir)) not in wanted:
            result.add(RemoveFile(path))
    enable = unit_dir / "multi-user.target.wants" / units.TARGET
    if not enable.is_symlink() or Path(os.readlink(enable)) != unit_dir / units.TARGET:
        result.add(Link(enable, unit_dir / units.TARGET))

    for change in extra:
        result.add(change)
    if systemd.running() and unit_dir == DEFAULT_UNIT_DIR:
        if any(isinstance(c, (WriteFile, RemoveFile, Link)) for c in result.changes):
            result.add(Systemctl(("daemon-reload",)))
        stopped = [n for n in autostart if not systemd.is_active(n)]
        if stopped:
            result.add(Systemctl(("start", *map(systemd.unit, stopped)), "autostart"))
        for name in changed:
            if systemd.is_active(name):
                result.add(Systemctl(("restart", systemd.unit(name)), "restartIfChanged"))
    return result


def _generated_units(unit_dir: Path) -> list[Path]:
    """Unit files an earlier apply wrote for VMs (found by their header)."""
    candidates = [*unit_dir.glob("install-microvm-*.service"), *unit_dir.glob("microvm@*.service.d/install.conf")]
    return [p for p in candidates if p.read_text().startswith(units.HEADER)]
