"""Build commands: build, run, gc, doctor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..host.statedir import installed_configs, installed_stamp
from ..layout import OCF_AGENT
from ..store import Store
from .app import app, err, out, warn
from .progress import steps

HypervisorOpt = Annotated[
    str | None, typer.Option("--hypervisor", help="Build the runner for this hypervisor instead of the declared one.")
]
StateDirOpt = Annotated[
    Path | None, typer.Option("--state-dir", help="Parent of the VM's state directory (volumes, sockets).")
]


def _build(file: Path, hypervisor: str | None, state_dir: Path | None = None):  # -> (LoadedVM, BuiltVM)
    """Evaluate and build ``file`` (to run in ``state_dir``); record what the build depended on for ``run``'s fast path."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..config import load_vm
    from ..runner import fastpath
    from ..runner.build import build_vm
    from ..runner.foreground import Foreground

    host = installed_stamp(state_dir)
    loaded = load_vm(file, installed=installed_configs(state_dir), state_dir=state_dir)
    warn(loaded.warnings)
    store = Store()
    with steps(f"building {loaded.name}") as say:
        built = build_vm(store, loaded.config, hypervisor, progress=say)
    store.add_root(f"build-{loaded.name}", built.runner)
    printed = {
        "name": loaded.name,
        "runner": str(built.runner),
        "plan": Foreground.of(loaded.config, built.runner, hypervisor).to_json(),
        "accelerator": f"accelerator: {built.accel.accel} ({built.accel.reason})",
        "warnings": [f"warning: {warning}" for warning in loaded.warnings],
        "note": None if (note := _tcg_note(loaded.config, built)) is None else f"note: {note}",
    }
    fastpath.record(file, hypervisor, loaded.inputs, loaded.config, host, printed)
    return loaded, built


def _tcg_note(vm, built) -> str | None:
    """Why a VM that asked for the automatic choice runs emulated (slow), if it does."""
    if built.accel.accel == "tcg" and vm.microvm.accel == "auto":
        return f"using TCG emulation (slow): {built.accel.reason}"
    return None


@app.command()
def build(file: Annotated[Path, typer.Argument(help="A VM file.")], hypervisor: HypervisorOpt = None) -> None:
    """Build the VM and print its runner's path."""
    _, built = _build(file, hypervisor)
    err.print(f"accelerator: {built.accel.accel} ({built.accel.reason})")
    out.print(str(built.runner), soft_wrap=True)


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="A VM file, or the name of an installed VM.")],
    hypervisor: HypervisorOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Build the VM and run it in the foreground with its console here (Ctrl-C shuts it down). microvm.nix: -r."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..host.statedir import vm_dir
    from ..runner.foreground import Foreground, run_foreground

    file = Path(target)
    if not os.path.exists(target) and "/" not in target and not target.endswith(".toml"):
        # late on purpose: a command loads only what it runs (start-up speed)
        from ..host.lifecycle import run_installed

        raise typer.Exit(run_installed(target, state_dir))
    loaded, built = _build(file, hypervisor, state_dir)
    if (note := _tcg_note(loaded.config, built)) is not None:
        err.print(f"[yellow]note:[/yellow] {note}", markup=True)
    plan = Foreground.of(loaded.config, built.runner, hypervisor)
    code = run_foreground(plan, vm_dir(loaded.name, state_dir), loaded.config)
    raise typer.Exit(code)


@app.command()
def gc(dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False) -> None:
    """Remove store entries that no root (recorded build, installed VM's current or booted, on a cluster node
    the build of every cluster VM's resource) uses."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..host.statedir import gc_roots
    from ..runner import fastpath

    roots = gc_roots()
    if OCF_AGENT.exists():  # a cluster node: fail-over starts the resources' builds, copied here by cluster apply
        from ..cluster.plan import resource_builds  # late on purpose: only a cluster node loads the cluster's module

        roots += resource_builds()
    store = Store()
    dead = store.gc(roots, dry_run=dry_run)
    for entry in dead:
        out.print(f"{'would remove' if dry_run else 'removed'} {entry}", soft_wrap=True)
    out.print(f"{len(dead)} entries {'unused' if dry_run else 'removed'}")
    if records := fastpath.prune(dry_run):  # after the entries: a record whose runner just went goes too
        out.print(f"{len(records)} stale build records {'unused' if dry_run else 'removed'}")


@app.command()
def doctor(
    file: Annotated[Path, typer.Argument(help="A VM file whose kernel to probe with.")],
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Probe again instead of using the cached verdict.")
    ] = False,
) -> None:
    """Tell whether KVM can boot guests here, and why TCG is used otherwise."""
    # late on purpose: a command loads only what it runs (start-up speed)
    from ..config import load_vm
    from ..runner import accel
    from ..runner.build import get_kernel

    loaded = load_vm(file, installed=installed_configs())
    store = Store()
    with err.status("probing KVM"):
        verdict = accel.auto(store, get_kernel(store, loaded.config).boot_image, refresh=refresh)
    out.print(f"accelerator: {verdict.accel}\nreason: {verdict.reason}")
