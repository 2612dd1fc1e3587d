"""Several hosts: copy, deploy, and the plumbing the other host's microvm runs for them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import MicrovmError
from ..host import lifecycle
from ..remote import copy as remote_copy
from ..remote import deploy as remote_deploy
from ..remote import migrate as remote_migrate
from ..remote.ssh import Remote
from ..store import Store
from .app import app, err, out
from .progress import steps
from .vm_cmds import report_update

HostArg = Annotated[str, typer.Argument(help="The other host: ssh://[user@]host[:port] or [user@]host.")]
RefArg = Annotated[str, typer.Argument(help="A store path, or the name of an installed VM (its current build).")]

store_app = typer.Typer(help="Plumbing for another host's microvm (copy, deploy).", no_args_is_help=True)
app.add_typer(store_app, name="store", hidden=True)


def _report_copy(copied: remote_copy.Copied, where: str) -> None:
    out.print(
        f"copied {len(copied.entries)} of {copied.total} entries ({_mb(copied.bytes)}) {where}",
        markup=False,
        soft_wrap=True,
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@app.command()
def copy(
    ref: RefArg,
    to: Annotated[str | None, typer.Option("--to", help="Send to this host: ssh://[user@]host[:port].")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Fetch from this host instead.")] = None,
) -> None:
    """Copy a store entry and everything it references to (or from) another host's store; only what it lacks."""
    if (to is None) == (from_ is None):
        raise MicrovmError("say where to copy: exactly one of --to HOST or --from HOST")
    store = Store()
    if to is not None:
        copied = remote_copy.copy_to(Remote.parse(to), ref, store)
    else:
        copied = remote_copy.copy_from(Remote.parse(from_ or ""), ref, store)
    _report_copy(copied, f"to {to}" if to else f"from {from_}")


@store_app.command()
def missing(root: Annotated[str, typer.Option("--root", help="The sender's store directory.")]) -> None:
    """Read entry names on stdin; print (JSON) those this store lacks."""
    store = Store()
    remote_copy.check_root(store, root)
    print(json.dumps(store.missing(sys.stdin.read().split())))


@store_app.command()
def receive() -> None:
    """Read a copy stream on stdin into the store (all or nothing)."""
    Store().receive(sys.stdin.buffer)


@store_app.command()
def closure(ref: RefArg) -> None:
    """Print (JSON) the store directory and the closure of REF, references first."""
    store = Store()
    print(json.dumps({"root": str(store.root), "entries": remote_copy.closure_names(store, ref)}))


@store_app.command()
def send() -> None:
    """Write the entries named on stdin as a copy stream to stdout."""
    store = Store()
    names = sys.stdin.read().split()
    if absent := store.missing(names):
        raise MicrovmError(f"not in the store {store.root}: {', '.join(absent)}")
    store.send([store.root / name for name in names], sys.stdout.buffer)


@app.command()
def deploy(
    host: HostArg,
    target: Annotated[str, typer.Argument(help="A VM file (built here) or the name of a VM installed here.")],
    restart: Annotated[bool, typer.Option("--restart", "-R", help="Restart the VM there if it changed.")] = False,
) -> None:
    """Build here, copy the build to HOST, create or update the VM there (printing the diff, as update does)."""
    store = Store()
    with steps(f"building {target}") as say:
        name, runner = remote_deploy.local_build(target, store, say)
    remote = Remote.parse(host)
    copied, report = remote_deploy.deploy(remote, name, runner, store, restart)
    _report_copy(copied, f"to {remote}")
    out.print(report, end="", markup=False, soft_wrap=True)


@store_app.command()
def install(
    name: Annotated[str, typer.Argument(help="The VM's name here.")],
    runner: Annotated[Path, typer.Argument(help="Its runner, already in this store.")],
    restart: Annotated[bool, typer.Option("--restart", "-R")] = False,
) -> None:
    """Install RUNNER as VM NAME: create it, or update it and print the diff."""
    change = lifecycle.install_built(name, runner)
    if change.old is None:
        out.print(f"{name}: created; start it with: microvm start {name}", markup=False)
    else:
        report_update(name, change, restart)


@app.command()
def migrate(
    name: Annotated[str, typer.Argument(help="A running VM installed here (with microvm.migratable).")],
    host: HostArg,
    copy: Annotated[
        bool, typer.Option("--copy/--no-copy", help="Copy the build to HOST first if it lacks it (default).")
    ] = True,
) -> None:
    """Move a running VM to HOST without stopping its guest (qemu live migration through ssh)."""
    remote = Remote.parse(host)
    with err.status(f"migrating {name} to {remote}", spinner="dots"):
        done = remote_migrate.migrate(name, remote, Store(), copy=copy)
    out.print(
        f"{name}: migrated to {remote} in {done.total_ms} ms (downtime {done.downtime_ms} ms, "
        f"{_mb(done.transferred)} of RAM sent)",
        markup=False,
    )


@app.command("migrate-receive", hidden=True)
def migrate_receive(
    name: str,
    runner: Path,
    shared: Annotated[list[str], typer.Option("--shared", help="WHAT=MARKER: a file the source made.")] = [],  # noqa: B006
) -> None:
    """The target's side of migrate: take the stream on stdin, run the VM here."""
    markers = [(what, Path(marker)) for what, _, marker in (s.rpartition("=") for s in shared)]
    remote_migrate.receive(name, runner, markers, sys.stdin.buffer, sys.stdout.buffer)
