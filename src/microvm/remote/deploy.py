"""``microvm deploy``: build here, copy the build, install or update it there (microvm.nix's deploy.installOnHost)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..host.statedir import VMState
from ..store import Store
from .copy import Copied, copy_to
from .ssh import Remote


def local_build(target: str, store: Store, progress: Callable[[str], None] | None = None) -> tuple[str, Path]:
    """(name, runner) of a VM file, built now, or of the VM ``target`` installed here."""
    from ..config import load_vm  # with the build: heavy, and only a file needs it
    from ..runner.build import build_vm

    if Path(target).is_file():
        loaded = load_vm(Path(target))
        return loaded.name, build_vm(store, loaded.config, progress=progress).runner
    return target, VMState.of(target).current_or_refuse("a VM file")


def deploy(remote: Remote, name: str, runner: Path, store: Store, restart: bool) -> tuple[Copied, str]:
    """Copy ``runner``'s closure to ``remote`` and install it there as VM ``name``; what it printed there."""
    copied = copy_to(remote, str(runner), store)
    return copied, remote.run("store", "install", name, str(runner), *(["--restart"] if restart else []))
