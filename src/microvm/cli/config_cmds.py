"""Config commands: eval, check, options, init."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ConfigError, ConfigErrors, MicrovmError
from ..host.statedir import installed_configs
from .app import app, out, warn

FileArg = Annotated[Path, typer.Argument(help="A VM file (or a host file with --host).")]
HostFlag = Annotated[bool, typer.Option("--host", help="The file is a host file.")]


def _is_host_file(file: Path, host: bool) -> bool:
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


@app.command("eval")
def eval_(
    file: FileArg, json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False, host: HostFlag = False
) -> None:
    """Print the fully merged config with every default filled in."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..config import load_host, load_vm

    if _is_host_file(file, host):
        loaded_host = load_host(file, installed_configs())
        data = loaded_host.config.dump()
        for name, vm in loaded_host.vms.items():
            data["microvm"]["vms"][name]["config"] = vm.config.dump()
        warnings = loaded_host.warnings
    else:
        loaded = load_vm(file, installed=installed_configs())
        data, warnings = loaded.config.dump(), loaded.warnings
    warn(warnings)
    if json_:
        out.print_json(json.dumps(data)) if out.is_terminal else print(json.dumps(data, indent=2))
    else:
        # late on purpose: a command loads only what it runs (start-up speed)
        import tomli_w

        print(tomli_w.dumps(data), end="")


def _problem(error: ConfigError | MicrovmError) -> dict[str, str | None]:
    return {"message": error.message, "file": getattr(error, "file", None), "option": getattr(error, "option", None)}


def _check_report(file: Path, host: bool) -> dict[str, Any]:
    """What `check --json` prints: ``ok``, the VMs it found, warnings and problems (docs/guide.md)."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..config import load_host, load_vm

    report: dict[str, Any] = {"file": str(file), "ok": True, "host": _is_host_file(file, host), "vms": []}
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


@app.command()
def check(
    file: FileArg,
    host: HostFlag = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON (docs/guide.md).")] = False,
) -> None:
    """Validate a config file; exit non-zero with every problem found."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..config import load_host, load_vm

    if json_:
        report = _check_report(file, host)
        print(json.dumps(report, indent=1))
        raise typer.Exit(0 if report["ok"] else 1)
    if _is_host_file(file, host):
        loaded_host = load_host(file, installed_configs())
        warn(loaded_host.warnings)
        out.print(f"{file}: ok (host with {len(loaded_host.config.microvm.vms)} declared VMs)")
    else:
        loaded = load_vm(file, installed=installed_configs())
        warn(loaded.warnings)
        out.print(f"{file}: ok ({loaded.name}, {loaded.config.microvm.hypervisor})")


class Format(str, Enum):
    md = "md"
    json = "json"


@app.command()
def options(fmt: Annotated[Format, typer.Option("--format", help="md or json.")] = Format.md) -> None:
    """Print the options reference, generated from the option model."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..model.reference import reference_json, reference_markdown

    print(reference_markdown() if fmt is Format.md else reference_json(), end="" if fmt is Format.md else "\n")


STARTER = """\
# A microvm VM file. Every option: `microvm options`, or docs/options.md.
# Check it with `microvm check {file}`, boot it with `microvm run {file}`.

[guest]
hostName = "{name}"
# busybox: a tiny system; debian: a Debian system with systemd.
base = "busybox"
# Commands run once at boot (busybox base).
commands = [
  'echo "{name} is up after $(cut -d" " -f1 /proc/uptime) s"',
]

[microvm]
hypervisor = "{hypervisor}"   # or {others}
vcpu = 1
mem = 256             # MB
# accel = "auto"      # kvm where it works, else tcg (see `microvm doctor`)

# A network interface with qemu's user-mode NAT:
# [[microvm.interfaces]]
# type = "user"
# id = "vm-{short}"
# mac = "02:00:00:00:00:01"

# A persistent volume, created on first start and never overwritten:
# [[microvm.volumes]]
# image = "var.img"
# mountPoint = "/var"
# size = 256
"""


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write vm.toml.")] = Path("."),
    name: Annotated[str | None, typer.Option(help="Host name; default the directory's name.")] = None,
) -> None:
    """Write a commented starter VM file (like `nix flake init -t microvm`)."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..model.names import HYPERVISORS
    from ..model.options import valid_hostname

    directory = directory.absolute()
    target = directory / "vm.toml"
    if target.exists():
        raise MicrovmError(f"{target} already exists; not overwriting it")
    name = name or directory.name.lower().replace("_", "-")
    try:
        valid_hostname(name)
    except ValueError as exc:
        raise MicrovmError(str(exc), hint="pass --name NAME") from None
    directory.mkdir(parents=True, exist_ok=True)
    starter = STARTER.format(
        file=target.name, name=name, short=name[:12], hypervisor=HYPERVISORS[0], others=", ".join(HYPERVISORS[1:])
    )
    target.write_text(starter)
    out.print(f"wrote {target}\nnext: microvm run {target}")
