"""``microvm check FILE``: what it prints and its exit code, without typer or rich.

Shared by the typer command and the fast dispatch (:mod:`.fast`), so both print
the same: one ``ok`` line, ``warning:`` lines on stderr (yellow on a terminal),
the JSON report of ``--json``; a config error propagates to ``microvm.cli.main``,
which prints it as every command's errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ConfigErrors, MicrovmError
from ..host.statedir import installed_configs
from .colour import paint, use_colour


def is_host_file(file: Path, host: bool) -> bool:
    """Host files are marked by --host or by declaring ``microvm.vms`` / ``network``."""
    if host:
        return True
    # late on purpose: a command loads only what it runs (start-up speed)
    import tomllib

    try:
        data = tomllib.loads(file.read_text())
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not TOML, nested too deeply
        return False  # let the loader report it with the file name
    microvm = data.get("microvm")
    return "network" in data or (isinstance(microvm, dict) and ("vms" in microvm or "stateDir" in microvm))


def warn(warnings: list[ConfigError]) -> None:
    """``warning: ...`` on stderr, one per warning."""
    label = paint("warning:", "yellow", use_colour(sys.stderr))
    for warning in warnings:
        print(f"{label} {warning}", file=sys.stderr)


def _problem(error: ConfigError | MicrovmError) -> dict[str, str | None]:
    return {"message": error.message, "file": getattr(error, "file", None), "option": getattr(error, "option", None)}


def check_report(file: Path, host: bool) -> dict[str, Any]:
    """What `check --json` prints: ``ok``, the VMs it found, warnings and problems (docs/guide.md)."""
    # late on purpose: the option model (pydantic) loads only for the commands that evaluate (start-up speed)
    from ..config import load_host, load_vm

    report: dict[str, Any] = {"file": str(file), "ok": True, "host": is_host_file(file, host), "vms": []}
    try:
        if report["host"]:
            loaded_host = load_host(file, installed_configs())
            vms = {name: vm.config for name, vm in loaded_host.vms.items()}
            warnings = loaded_host.warnings
        else:
            loaded = load_vm(file, installed=installed_configs())
            vms, warnings = {loaded.name: loaded.config}, loaded.warnings
    except ConfigErrors as exc:
        return report | {"ok": False, "problems": [_problem(e) for e in exc.errors], "warnings": []}
    except MicrovmError as exc:
        return report | {"ok": False, "problems": [_problem(exc)], "warnings": []}
    report["vms"] = [{"name": name, "hypervisor": vm.microvm.hypervisor} for name, vm in vms.items()]
    return report | {"problems": [], "warnings": [_problem(w) for w in warnings]}


def check_command(file: Path, host: bool, as_json: bool) -> int:
    """Validate ``file``; the exit code (a config error outside ``--json`` is raised)."""
    # late on purpose: the option model (pydantic) loads only for the commands that evaluate (start-up speed)
    from ..config import load_host, load_vm

    if as_json:
        report = check_report(file, host)
        print(json.dumps(report, indent=1))
        return 0 if report["ok"] else 1
    if is_host_file(file, host):
        loaded_host = load_host(file, installed_configs())
        warn(loaded_host.warnings)
        print(f"{file}: ok (host with {len(loaded_host.config.microvm.vms)} declared VMs)")
    else:
        loaded = load_vm(file, installed=installed_configs())
        warn(loaded.warnings)
        print(f"{file}: ok ({loaded.name}, {loaded.config.microvm.hypervisor})")
    return 0
