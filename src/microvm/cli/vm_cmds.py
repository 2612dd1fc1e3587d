"""Installed VMs: create, update, list, start/stop/restart, status, console, logs, remove, diff."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import proc
from ..errors import MicrovmError
from ..host import lifecycle, systemd, vsock
from ..host.sources import DEFAULT_SOURCE
from ..host.statedir import VMState, installed
from ..store import Store
from . import show
from .app import app, err, out
from .progress import steps


def installed_names(incomplete: str) -> list[str]:
    """Shell completion: the installed VMs whose name starts with what was typed."""
    return [state.name for state in installed() if state.name.startswith(incomplete)]


NameArg = Annotated[
    str, typer.Argument(help="The VM's name (its directory in the state directory).", autocompletion=installed_names)
]


def _print_diff(lines: list[str]) -> None:
    for line in lines:
        out.print(f"  {line}", soft_wrap=True, markup=False)


@app.command()
def create(
    name: NameArg,
    source: Annotated[
        str, typer.Option("--source", "-f", help="Directory or git+file:///path?ref=branch defining the VM.")
    ] = DEFAULT_SOURCE,
) -> None:
    """Build a VM from a source and install it (refuses an existing one). microvm.nix: -c."""
    with steps(f"building {name}") as say:
        change = lifecycle.create(name, source, Store(), progress=say)
    out.print(f"created {name} in {change.state.path}")
    out.print(f"start it with: microvm start {name} (systemd) or microvm run {name} (foreground)")


@app.command()
def update(
    names: Annotated[
        list[str], typer.Argument(help="The VMs to rebuild from their recorded source.", autocompletion=installed_names)
    ],
    restart: Annotated[bool, typer.Option("--restart", "-R", help="Restart the VMs that changed.")] = False,
) -> None:
    """Rebuild VMs from their source, show what changed, switch to the new build. microvm.nix: -u [-R]."""
    store = Store()
    for name in names:
        with steps(f"building {name}") as say:
            change = lifecycle.update(name, store, progress=say)
        report_update(name, change, restart)


def report_update(name: str, change: lifecycle.Change, restart: bool) -> None:
    """What an update changed (the diff), and the restart it did (-R) or that is needed."""
    out.print(f"{name}: updated" if change.changed else f"{name}: no change")
    _print_diff(change.diff())
    stale = change.state.booted not in (None, change.state.current)
    if restart and (change.changed or stale):
        systemd.control("restart", name)
        out.print(f"{name}: restarted")
    elif stale:
        out.print(f"{name}: restart to boot it: microvm restart {name}")
    if change.changed and change.state.saved_state[0].exists():
        out.print(f"{name}: its suspended state is the old build's: the next start boots afresh", markup=False)


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (its shape: docs/guide.md).")]


@app.command(name="list")
def list_(json_: JsonFlag = False) -> None:
    """Each installed VM: state (current, outdated, stale, suspended, not booted, missing), hypervisor, size,
    addresses, uptime, what to do next. microvm.nix: -l."""
    show.list_command(json_)


@app.command()
def start(name: NameArg) -> None:
    """Start the VM through systemd (microvm@NAME.service)."""
    lifecycle.control("start", name)


@app.command()
def stop(name: NameArg) -> None:
    """Shut the VM down gracefully through systemd."""
    lifecycle.control("stop", name)


@app.command()
def restart(name: NameArg) -> None:
    """Restart the VM through systemd (it then boots the current build)."""
    lifecycle.control("restart", name)


@app.command()
def suspend(name: NameArg) -> None:
    """Save the running VM's state to disk and stop it; `start` resumes it where it was (qemu)."""
    with err.status(f"saving {name}", spinner="dots"):
        saved = lifecycle.suspend(name)
    size = saved.stat().st_size / (1 << 20)
    out.print(f"{name}: suspended to {saved} ({size:.0f} MiB); resume with: microvm start {name}", markup=False)


@app.command()
def status(name: NameArg, json_: JsonFlag = False) -> None:
    """The VM's state (as in list), its source, and systemd's view of it."""
    show.status_command(name, json_)


@app.command()
def console(name: NameArg) -> None:
    """Attach to the serial console of a running VM (Ctrl-] detaches)."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..host.console import attach

    attach(name, *VMState.of(name).console_files())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(
    name: NameArg,
    args: Annotated[
        list[str] | None, typer.Argument(help="ssh options and the remote command, after the host (e.g. uptime).")
    ] = None,
) -> None:
    """SSH into the VM over vsock (microvm.vsock.ssh), as root unless -l USER. microvm.nix: -s."""
    argv = vsock.ssh_argv(VMState.of(name), args or [])
    raise typer.Exit(proc.run([proc.which("ssh"), *argv[1:]], check=False, capture=False).returncode)


@app.command()
def logs(
    name: NameArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing what the VM logs.")] = False,
    journal: Annotated[bool, typer.Option("--journal", help="systemd's journal of the VM's units instead.")] = False,
) -> None:
    """Print the VM's console log (what the guest printed), or its journal."""
    if journal:
        systemd.require("show the journal of", name)
        proc.run(["journalctl", "--no-pager", "-u", systemd.unit(name), *(["-f"] if follow else [])], capture=False)
        return
    log = VMState.of(name).console_files()[1]
    if not log.exists():
        raise MicrovmError(f"{log} does not exist", hint="the VM has not run, or its hypervisor logs to the journal")
    proc.run(["tail", "-n", "+1", *(["-f"] if follow else []), log], capture=False)


@app.command()
def remove(
    name: NameArg,
    data: Annotated[bool, typer.Option("--data", help="Also delete its volumes and share directories.")] = False,
) -> None:
    """Uninstall a stopped VM; its volumes and share directories are kept unless --data."""
    kept = lifecycle.remove(name, keep_data=not data)
    out.print(f"removed {name}")
    for path in kept:
        out.print(f"kept {path}", soft_wrap=True)


@app.command()
def diff(name: NameArg) -> None:
    """What changed between the booted build and the current one: kernel, packages, options."""
    state = VMState.of(name)
    if state.current is None:
        raise MicrovmError(f"VM {name!r} is not installed in {state.path.parent}")
    if state.booted is None:
        raise MicrovmError(f"VM {name!r} is not booted: nothing to compare with", hint=f"microvm start {name}")
    lines = lifecycle.diff_runners(state.booted, state.current)
    if not lines:
        out.print(f"{name}: booted is current")
    _print_diff(lines)
