"""The config layer: option model, TOML loading and merging, checks.

Use :func:`load_vm` and :func:`load_host`; both raise
:class:`~microvm.errors.ConfigErrors` naming file and option path, and return
warnings separately.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, ConfigErrors
from ..host.statedir import default_state_dir, installed_configs
from ..model.options import HostConfig, VMConfig
from .checks import Problem, check_against_others, check_host, check_host_vm, check_vm
from .destinations import check_host_destinations, check_vm_destinations
from .loader import Loaded, OptionPath, Referrer, format_path, load, validate, validation_errors


@dataclass
class LoadedVM:
    """A validated VM with where its options came from."""

    name: str
    config: VMConfig
    loaded: Loaded
    warnings: list[ConfigError] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return self.loaded.files


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


def vm_from_loaded(
    loaded: Loaded,
    data: dict[str, Any],
    prefix: OptionPath = (),
    name: str | None = None,
    state_dir: Path | None = None,
) -> LoadedVM:
    """Validate and check one VM's merged data (a file, or a table in a host file).

    ``state_dir``: where its state directory will be (sockets there must fit); default the usual one.
    """
    data = _with_default_name(data, name)
    try:
        config = VMConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_errors(exc, loaded, VMConfig, prefix) from None
    _resolve_sources(config, loaded, prefix)
    explicit_socket = "socket" in (data.get("microvm") or {})
    name = name or config.guest.hostName
    installed = {other: vm for other, vm in installed_configs().items() if other != name}
    problems = check_vm(config, explicit_socket) + check_against_others(config, installed, "installed")
    problems += check_vm_destinations(config, name, state_dir or default_state_dir())
    warnings = _report(problems, loaded, prefix)
    return LoadedVM(name, config, loaded, warnings)


def _resolve_sources(config: VMConfig, loaded: Loaded, prefix: OptionPath) -> None:
    """Make host files the guest is built from absolute (relative to the file that names them); all must exist."""
    wanted: list[tuple[OptionPath, str, object, str]] = [
        (("guest", "files", target, "source"), f.source, f, "source")
        for target, f in config.guest.files.items()
        if f.source is not None
    ]
    if config.guest.debian.lock is not None:
        wanted.append((("guest", "debian", "lock"), config.guest.debian.lock, config.guest.debian, "lock"))
    if config.microvm.initrdPath is not None:
        wanted.append((("microvm", "initrdPath"), config.microvm.initrdPath, config.microvm, "initrdPath"))
    errors = []
    for path, value, owner, attr in wanted:
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
        setattr(owner, attr, str(resolved))
    if errors:
        raise ConfigErrors(errors)


def load_vm(
    file: Path, name: str | None = None, state_dir: Path | None = None, referrer: Referrer | None = None
) -> LoadedVM:
    """Load, merge, validate and check a VM file (``referrer``: the host file and option naming it)."""
    loaded = load(file, referrer)
    return vm_from_loaded(loaded, loaded.data, name=name, state_dir=state_dir)


def load_host(file: Path) -> LoadedHost:
    """Load a host file and every VM it declares with ``config``."""
    loaded = load(file)
    config: HostConfig = validate(loaded, HostConfig)
    warnings = _report(check_host(config) + check_host_destinations(config), loaded)
    state_dir = Path(config.microvm.stateDir)
    vms: dict[str, LoadedVM] = {}
    for name in config.microvm.vms:
        raw = loaded.data["microvm"]["vms"][name].get("config")
        path = ("microvm", "vms", name, "config")
        if isinstance(raw, str):
            origin = loaded.origin(path)
            referrer = Referrer(origin, format_path(path), "VM file")
            vms[name] = load_vm(origin.parent / raw, name=name, state_dir=state_dir, referrer=referrer)
        elif isinstance(raw, dict):
            vms[name] = vm_from_loaded(loaded, raw, path, name=name, state_dir=state_dir)
        if name in vms:
            declared_before = {other: vm.config for other, vm in vms.items() if other != name}
            warnings += _report(
                check_against_others(vms[name].config, declared_before, "declared in this file")
                + check_host_vm(config, vms[name].config),
                loaded,
                ("microvm", "vms", name, "config"),
            )
            warnings += vms[name].warnings
    return LoadedHost(config, loaded, vms, warnings)


__all__ = ["HostConfig", "LoadedHost", "LoadedVM", "VMConfig", "load_host", "load_vm", "vm_from_loaded"]
