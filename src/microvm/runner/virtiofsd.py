"""virtiofsd: one daemon per virtiofs share, started before the hypervisor.

Two implementations exist: the Rust virtiofsd (its own package on newer
distributions; ``--shared-dir``) and the C one shipped in qemu-system-common
(``/usr/lib/qemu/virtiofsd``; ``-o source=``). We speak both.
"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import socket
import subprocess
import time
from functools import cache
from pathlib import Path

from .. import proc
from ..errors import MicrovmError
from ..layout import VIRTIOFS, runner_config
from ..model.options import STORE_SHARE_TAG, Share, VMConfig

C_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


@cache
def find() -> tuple[str, bool]:
    """(path, is_rust) of the virtiofsd to use, preferring the Rust one."""
    for candidate in ("virtiofsd", "/usr/libexec/virtiofsd", C_VIRTIOFSD):
        path = shutil.which(candidate)
        if path:
            usage = proc.run([path, "--help"], check=False)
            return path, "--shared-dir" in (usage.stdout + usage.stderr)
    raise MicrovmError(
        "virtiofsd is not installed (needed for virtiofs shares)",
        hint="apt-get install qemu-system-common (or the virtiofsd package)",
    )


def _threads(vm: VMConfig) -> int:
    size = vm.microvm.virtiofsd.threadPoolSize
    return os.cpu_count() or 1 if size == "`nproc`" else int(size)


def _socket_group(vm: VMConfig) -> str | None:
    """The group given the socket (so an unprivileged hypervisor can connect): only as root, if it exists."""
    group = vm.microvm.virtiofsd.group
    if not group or os.geteuid() != 0:
        return None
    try:
        grp.getgrnam(group)
    except KeyError:
        return None
    return group


def argv(vm: VMConfig, share: Share, workdir: Path) -> list[str]:
    """The command line serving ``share``, run in the VM's state directory ``workdir``.

    The system store share never changes under the guest, so the guest may cache it fully;
    other shares cache as their ``cache`` says.

    The socket stays relative as configured (unix socket paths are limited to
    108 bytes); the source is made absolute (virtiofsd bind-mounts it).
    """
    path, rust = find()
    opts = vm.microvm.virtiofsd
    source, socket = str(workdir / share.source), share.socket or ""
    prefix: list[str] = []  # the C virtiofsd serves read-only shares from a read-only bind mount
    if rust:
        args = [
            path,
            f"--socket-path={socket}",
            f"--shared-dir={source}",
            f"--thread-pool-size={_threads(vm)}",
            f"--tag={share.tag}",
            "--xattr",
        ]
        args += ["--posix-acl"] if share.posixAcl else []
        args += [f"--inode-file-handles={opts.inodeFileHandles}"] if opts.inodeFileHandles else []
        args += ["--readonly"] if share.readOnly else []
        args += [f"--cache={_cache(share)}"] if _cache(share) != "auto" else []
    else:
        args = [
            path,
            f"--socket-path={socket}",
            "-o",
            f"source={source}",
            f"--thread-pool-size={_threads(vm)}",
            "-o",
            "xattr",
            "-o",
            "posix_acl" if share.posixAcl else "no_posix_acl",
        ]
        if (cache := _cache(share)) != "auto":
            args += ["-o", f"cache={_c_cache(share, cache)}"]
        if share.readOnly:
            prefix = _read_only_bind(share, source)
    args += [f"--socket-group={group}"] if (group := _socket_group(vm)) else []
    return [*prefix, *args, *opts.extraArgs, *share.virtiofsdExtraArgs]


def _cache(share: Share) -> str:
    return "always" if share.tag == STORE_SHARE_TAG else share.cache


def _c_cache(share: Share, cache: str) -> str:
    """The C virtiofsd's name of a cache policy: it calls never "none" and has no metadata policy."""
    if cache == "metadata":
        raise MicrovmError(
            f'microvm.shares: share {share.tag!r} asks for cache = "metadata", which the C virtiofsd lacks',
            hint='install the Rust virtiofsd, or use cache = "auto" or "never"',
        )
    return "none" if cache == "never" else cache


def _read_only_bind(share: Share, source: str) -> list[str]:
    """A prefix running the C virtiofsd (which has no read-only mode) in a mount namespace where
    ``source`` is a read-only bind mount, so the kernel refuses every write through the share."""
    if os.geteuid() != 0:
        raise MicrovmError(
            f"microvm.shares: the C virtiofsd can serve {share.tag!r} read-only only when run as root",
            hint='install the Rust virtiofsd, or use proto = "9p" for a read-only share',
        )
    unshare = proc.which("unshare", purpose="for read-only virtiofs shares")
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    return [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", script, source]


def runner_source(runner: Path, share: Share) -> Share:
    """``share`` with the source the runner records (the store share's source is only known after the build)."""
    recorded = runner / VIRTIOFS / share.tag / "source"
    return share.model_copy(update={"source": recorded.read_text().strip()}) if recorded.exists() else share


def start(
    vm: VMConfig, workdir: Path, timeout: float = 10.0, runner: Path | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start a virtiofsd for every virtiofs share (sources as ``runner`` records them); return once every socket exists."""
    daemons = []
    try:
        for share in vm.microvm.shares:
            if share.proto != "virtiofs":
                continue
            if runner is not None:
                share = runner_source(runner, share)
            socket = workdir / (share.socket or "")
            socket.unlink(missing_ok=True)
            (workdir / share.source).mkdir(parents=True, exist_ok=True)
            daemons.append((proc.spawn(argv(vm, share, workdir.absolute()), cwd=workdir), socket, share))
        deadline = time.monotonic() + timeout
        for daemon, socket, share in daemons:
            while not socket.exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise MicrovmError(f"virtiofsd for share {share.tag!r} did not start (exit {daemon.poll()})")
                time.sleep(0.01)
    except BaseException:
        stop([d for d, _, _ in daemons])
        raise
    return [d for d, _, _ in daemons]


def stop(daemons: list[subprocess.Popen[bytes]]) -> None:
    for daemon in daemons:
        if daemon.poll() is None:
            daemon.terminate()
    for daemon in daemons:
        try:
            daemon.wait(timeout=5)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def _notify(message: str) -> None:
    """sd_notify(3): tell systemd (Type=notify) how we are."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect("\0" + address[1:] if address.startswith("@") else address)
        sock.send(message.encode())


def serve(workdir: Path) -> None:
    """Run the virtiofsd of every share of the VM installed in ``workdir`` until one exits or we are stopped.

    What ``microvm-virtiofsd@.service`` runs (``python -m microvm.helpers virtiofsd``):
    ready (sd_notify) once every socket exists.
    """
    runner = (workdir / "current").resolve()
    vm = VMConfig.model_validate(runner_config(runner))
    daemons = start(vm, workdir, runner=runner)

    def stopped(*_: object) -> None:
        raise InterruptedError  # ends the wait below; the daemons are then stopped

    signal.signal(signal.SIGTERM, stopped)
    _notify("READY=1")
    try:
        os.wait()  # the first daemon to exit (the hypervisor disconnected) ends them all
    except InterruptedError:
        pass
    finally:
        _notify("STOPPING=1")
        stop(daemons)
