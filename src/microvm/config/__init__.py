"""The config layer: option model, TOML loading and merging, checks.

Use :func:`load_vm` and :func:`load_host`; both raise
:class:`~microvm.errors.ConfigErrors` naming file and option path, and return
warnings separately. Like microvm.nix's module evaluation, a VM is validated
against the declarations, desugared (:mod:`microvm.model.desugar`, told by
its backend whether it has a control socket), then checked; what the host
already has (the installed VMs) is passed in by the caller, never read here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, ConfigErrors
from ..hypervisors import Feature, get
from ..model.desugar import desugar_host, desugar_vm
from ..model.options import HostConfig, VMConfig
from ..model.problems import OptionPath, Problem, format_path
from .checks import check_against_others, check_cluster_vm, check_host, check_host_vm, check_vm
from .destinations import check_host_destinations, check_vm_destinations
from .loader import Loaded, Referrer, load, validate, validation_errors, value_at


@dataclass
class LoadedVM:
    """A validated VM with where its options came from."""

    name: str
    config: VMConfig
    loaded: Loaded
    warnings: list[ConfigError] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    """The host files the guest is built from (guest.files.*.source, guest.debian.lock, microvm.initrdPath)."""

    @property
    def files(self) -> list[Path]:
        return self.loaded.files

    @property
    def inputs(self) -> list[Path]:
        """Every file the VM's build reads by content: its config files and its sources."""
        return [*self.files, *self.sources]


@dataclass
class LoadedHost:
    config: HostConfig
    loaded: Loaded
    vms: dict[str, LoadedVM]
    warnings: list[ConfigError] = field(default_factory=list)


def _report(problems: list[Problem], loaded: Loaded, prefix: OptionPath = ()) -> list[ConfigError]:
    """Raise the errors among ``problems``; return the warnings."""

    def as_error(problem: Problem) -> ConfigError:
        path = (*prefix, *problem.path)
        return ConfigError(problem.message, file=str(loaded.origin(path)), option=format_path(path), hint=problem.hint)

    errors = [as_error(p) for p in problems if p.severity == "error"]
    if errors:
        raise ConfigErrors(errors)
    return [as_error(p) for p in problems if p.severity == "warning"]


def _with_default_name(data: dict[str, Any], name: str | None) -> dict[str, Any]:
    guest = data.get("guest")
    if name is None or (isinstance(guest, dict) and "hostName" in guest):
        return data
    return {**data, "guest": {**(guest if isinstance(guest, dict) else {}), "hostName": name}}


def vm_config(data: dict[str, Any]) -> VMConfig:
    """Validate a VM table and desugar it, asking its backend what the model cannot know (pydantic's errors)."""
    declared = VMConfig.model_validate(data)
    return desugar_vm(declared, control_socket=get(declared.microvm.hypervisor).supports(Feature.CONTROL_SOCKET))


def vm_from_loaded(
    loaded: Loaded,
    data: dict[str, Any],
    prefix: OptionPath = (),
    name: str | None = None,
    installed: Mapping[str, VMConfig] = {},
    state_dir: Path | None = None,
) -> LoadedVM:
    """Validate and check one VM's merged data (a file, or a table in a host file).

    ``installed``: the VMs on this host, by name, whose ``n``, MACs and the like this one must not take;
    ``state_dir``: where its state directory will be (sockets there must fit; default the system's).
    """
    data = _with_default_name(data, name)
    data, sources, missing = _resolve_sources(data, loaded, prefix)
    try:
        config = vm_config(data)
    except ValidationError as exc:
        raise validation_errors(exc, loaded, VMConfig, prefix) from None
    if missing:
        raise ConfigErrors(missing)
    name = name or config.guest.hostName
    others = {other: vm for other, vm in installed.items() if other != name}
    problems = check_vm(config) + check_against_others(config, others, "installed")
    problems += check_vm_destinations(config, name, state_dir)
    warnings = _report(problems, loaded, prefix)
    return LoadedVM(name, config, loaded, warnings, sources)


def _resolve_sources(
    data: dict[str, Any], loaded: Loaded, prefix: OptionPath
) -> tuple[dict[str, Any], list[Path], list[ConfigError]]:
    """Make host files the guest is built from absolute (relative to the file that names them), before validation.

    Returns the data with them, the files (what the build reads), and an error for each that does not exist
    (raised after validation's own).
    """
    files = value_at(data, ("guest", "files"))
    targets = files if isinstance(files, dict) else {}
    wanted: list[OptionPath] = [("guest", "files", target, "source") for target in targets]
    wanted += [("guest", "debian", "lock"), ("microvm", "initrdPath")]
    errors = []
    sources = []
    for path in wanted:
        value = value_at(data, path)
        if not isinstance(value, str):
            continue  # unset, or validation reports it
        full = (*prefix, *path)
        origin = loaded.origin(full)
        resolved = (origin.parent / value).absolute()
        if not os.path.isfile(resolved):  # False, not OSError, for a name too long or a symlink loop
            errors.append(
                ConfigError(
                    f"{resolved} does not exist or is not a file",
                    file=str(origin),
                    option=format_path(full),
                    hint="relative paths are relative to the file that sets the option",
                )
            )
        data = _replaced(data, path, str(resolved))
        sources.append(resolved)
    return data, sources, errors


def _replaced(data: dict[str, Any], path: OptionPath, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``value`` at ``path`` (which exists); the caller's data stays as it was."""
    head, *rest = path
    return {**data, head: _replaced(data[head], tuple(rest), value) if rest else value}


def load_vm(
    file: Path,
    name: str | None = None,
    installed: Mapping[str, VMConfig] = {},
    state_dir: Path | None = None,
    referrer: Referrer | None = None,
) -> LoadedVM:
    """Load, merge, validate and check a VM file (against the ``installed`` VMs, by name; ``referrer``:
    the host file and option naming it)."""
    loaded = load(file, referrer)
    return vm_from_loaded(loaded, loaded.data, name=name, installed=installed, state_dir=state_dir)


def load_host(file: Path, installed: Mapping[str, VMConfig] = {}) -> LoadedHost:
    """Load a host file and every VM it declares with ``config`` (checked against the ``installed`` VMs)."""
    loaded = load(file)
    config = desugar_host(validate(loaded, HostConfig))
    warnings = _report(check_host(config) + check_host_destinations(config), loaded)
    state_dir = Path(config.microvm.stateDir)
    vms: dict[str, LoadedVM] = {}
    for name in config.microvm.vms:
        raw = loaded.data["microvm"]["vms"][name].get("config")
        path = ("microvm", "vms", name, "config")
        if isinstance(raw, str):
            origin = loaded.origin(path)
            referrer = Referrer(origin, format_path(path), "VM file")
            vms[name] = load_vm(
                origin.parent / raw, name=name, installed=installed, state_dir=state_dir, referrer=referrer
            )
        elif isinstance(raw, dict):
            vms[name] = vm_from_loaded(loaded, raw, path, name=name, installed=installed, state_dir=state_dir)
        if name in vms:
            declared_before = {other: vm.config for other, vm in vms.items() if other != name}
            warnings += _report(
                check_against_others(vms[name].config, declared_before, "declared in this file")
                + check_host_vm(config, vms[name].config),
                loaded,
                ("microvm", "vms", name, "config"),
            )
            # named in the VM's own file (or the host file's inline table)
            inline = isinstance(raw, dict)
            warnings += _report(
                list(check_cluster_vm(config, name, vms[name].config)),
                loaded if inline else vms[name].loaded,
                ("microvm", "vms", name, "config") if inline else (),
            )
            warnings += vms[name].warnings
    return LoadedHost(config, loaded, vms, warnings)


__all__ = ["HostConfig", "LoadedHost", "LoadedVM", "VMConfig", "load_host", "load_vm", "vm_config", "vm_from_loaded"]
