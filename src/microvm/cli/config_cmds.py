"""Config commands: eval, check, options, init."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import MicrovmError
from ..host.statedir import installed_configs
from .app import app, out, warn
from .checkfile import check_command, is_host_file

FileArg = Annotated[Path, typer.Argument(help="A VM file (or a host file with --host).")]
HostFlag = Annotated[bool, typer.Option("--host", help="The file is a host file.")]


@app.command("eval")
def eval_(
    file: FileArg, json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False, host: HostFlag = False
) -> None:
    """Print the fully merged config with every default filled in."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..config import load_host, load_vm

    if is_host_file(file, host):
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


@app.command()
def check(
    file: FileArg,
    host: HostFlag = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON (docs/guide.md).")] = False,
) -> None:
    """Validate a config file; exit non-zero with every problem found."""
    if code := check_command(file, host, json_):
        raise typer.Exit(code)


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
