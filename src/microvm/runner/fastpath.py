"""A record of what building a VM depended on, so that an unchanged VM builds and runs without evaluating it again.

``microvm build FILE`` and ``microvm run FILE`` of a VM that is already built
should cost little more than printing the runner's path or starting it.
Evaluating the config needs pydantic and the whole option model (a few hundred
milliseconds of imports alone); telling that nothing changed needs only the
config files' contents and a few ``stat`` calls. After each build the command
records, per (file, hypervisor), a fingerprint of everything the build read,
what it printed, and the :class:`~microvm.runner.foreground.Foreground` plan to
run it. A later build or run whose fingerprint is identical uses the record; any
difference (a config file or one it imports, a file the guest is built from, busybox, a local kernel, the apt
lists, the tools on ``PATH``, the KVM verdict, microvm itself, the environment,
the working directory, the state directory and the VMs installed there, which
the config is checked against) takes the normal path, which evaluates and
builds again.

This module is imported before anything heavy: it must stay cheap to import.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..store import default_store_dir

if TYPE_CHECKING:
    from ..model.options import VMConfig

STAMP_DIR = ".cache/run"
STAMP_FORMAT = 5
ENVIRONMENT = ("MICROVM_ACCEL", "MICROVM_STORE", "PATH", "HOME", "XDG_CACHE_HOME")
PACKAGE = Path(__file__).resolve().parent.parent


def stamp_file(file: Path, hypervisor: str | None) -> Path:
    """Where the record for building ``file`` for ``hypervisor`` (None: the declared one) is kept."""
    key = hashlib.sha256(f"{file.absolute()}\0{hypervisor or ''}".encode()).hexdigest()[:32]
    return default_store_dir().absolute() / STAMP_DIR / f"{key}.json"


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino]


def _content(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _code_stamp() -> list[int]:
    """Changes when microvm's own code does (an editable install, an upgrade)."""
    # os.walk, not Path.rglob: a glob compiles its pattern (fnmatch, re), ~4 ms of every fast run
    files = [f"{top}/{name}" for top, _, names in os.walk(PACKAGE) for name in names if name.endswith(".py")]
    stats = [st for p in files if (st := _stat(p))]
    return [len(stats), max((s[0] for s in stats), default=0)]


def host_paths(vm: VMConfig, store_root: Path) -> list[str]:
    """Host paths whose change can change what the build of ``vm`` produces."""
    # late on purpose, here and below: only recording (after a build) needs them, never the fast lookup
    from .accel import CACHE

    paths = [str(store_root / CACHE), "/dev/kvm"]  # the KVM verdict
    paths += [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]  # which tools `which` finds
    from ..guest.debarch import Apt

    # the guest's architecture's package lists: its kernel and (foreign) busybox are resolved from them
    apt = Apt(vm.guest.arch, Apt.state_dir(store_root, vm.guest.arch))
    if vm.guest.base == "busybox":
        from ..guest.debarch import busybox_path

        paths.append(str(busybox_path()))
        paths += [str(p) for p in apt.list_paths()]
    kernel = vm.guest.kernel
    paths += [p for p in (kernel.image, kernel.modulesDir, vm.microvm.initrdPath) if p]
    if kernel.modulesDir:  # the build hashes the whole tree: a module replaced deep inside changes it
        paths += [f"{top}/{name}" for top, dirs, names in os.walk(kernel.modulesDir) for name in dirs + names]
    if kernel.image is None:  # the package is resolved from apt's lists: `apt-get update` changes both
        paths += [str(p) for p in apt.list_paths()]
    return list(dict.fromkeys(paths))


def fingerprint(config_files: list[str], paths: list[str], host: dict[str, Any]) -> dict[str, Any]:
    """Everything a build depended on besides the config's meaning, as comparable JSON.

    ``host``: what the caller knows the evaluation also read (the state directory and the VMs installed there).
    """
    return {
        "format": STAMP_FORMAT,
        "microvm": [__version__, *_code_stamp()],
        "environment": {name: os.environ.get(name) for name in ENVIRONMENT},
        "cwd": os.getcwd(),  # relative paths in the config may resolve against it
        "config": {f: _content(f) for f in config_files},
        "paths": {p: _stat(p) for p in paths},
        "host": host,
    }


def record(
    file: Path,
    hypervisor: str | None,
    inputs: list[Path],
    vm: VMConfig,
    host: dict[str, Any],
    printed: dict[str, Any],
) -> None:
    """After a successful build: remember what building ``file`` gave as long as nothing changes.

    ``inputs``: the config files and the host files the guest is built from (its files' sources, its
    Debian lock), compared by content.
    ``printed``: the build's "name", "runner", "plan" (:meth:`Foreground.to_json`), "accelerator" line,
    "warnings" and TCG "note", which the fast paths print as the full commands do.
    """
    store_root = default_store_dir().absolute()
    files = [str(f.absolute()) for f in inputs]
    paths = host_paths(vm, store_root)
    stamp = {"files": files, "paths": paths, "fingerprint": fingerprint(files, paths, host), **printed}
    target = stamp_file(file, hypervisor)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_text(json.dumps(stamp))
    tmp.replace(target)


def lookup(file: Path, hypervisor: str | None, host: dict[str, Any]) -> dict[str, Any] | None:
    """What :func:`record` kept of building ``file`` if it was built before, nothing it depends on changed
    (``host`` as the caller sees it now) and its runner is still in the store."""
    try:
        stamp = json.loads(stamp_file(file, hypervisor).read_text())
        if stamp["fingerprint"].get("format") != STAMP_FORMAT:
            return None
        if fingerprint(stamp["files"], stamp["paths"], host) != stamp["fingerprint"]:
            return None
        if not (Path(stamp["runner"]) / "bin" / "microvm-run").exists():
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stamp


def prune(dry_run: bool = False) -> list[Path]:
    """For `microvm gc`: remove (unless ``dry_run``) and return the records whose runner is gone from the store,
    and the temporaries of :func:`record` calls killed before their rename."""
    # late on purpose: only gc needs it, never the fast lookup
    from ..control.process import alive

    directory = default_store_dir().absolute() / STAMP_DIR
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    stale = []
    for name in names:
        path = directory / name
        if name.startswith("."):  # .KEY.json.PID
            pid = name.rpartition(".")[2]
            if not (pid.isdigit() and alive(int(pid))):
                stale.append(path)
            continue
        try:
            runner = json.loads(path.read_text())["runner"]
        except (OSError, ValueError, KeyError, TypeError):
            runner = None
        if not isinstance(runner, str) or not (Path(runner) / "bin" / "microvm-run").exists():
            stale.append(path)
    if not dry_run:
        for path in stale:
            path.unlink(missing_ok=True)
    return stale
