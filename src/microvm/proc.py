"""The one way this project runs external programs.

Like nixos-rebuild-ng's ``run_wrapper``: every subprocess goes through
:func:`run`, so logging (``MICROVM_DEBUG=1``), error reporting and missing
tool hints are the same everywhere.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

from .errors import CommandError, MicrovmError


def _debug(message: str, *args: object) -> None:
    """Log through :mod:`logging` when something loaded it: otherwise nothing can have set up a handler,
    the record would be dropped, and importing logging costs every short command (``microvm list``) ~5 ms."""
    if (logging := sys.modules.get("logging")) is not None:
        logging.getLogger("microvm.proc").debug(message, *args)


# Which Debian package provides a tool, for the "not installed" hint.
DEBIAN_PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "busybox": "busybox-static",
    "mkfs.erofs": "erofs-utils",
    "mksquashfs": "squashfs-tools",
    "mkfs.ext4": "e2fsprogs",
    "mmdebstrap": "mmdebstrap",
    "dnsmasq": "dnsmasq-base",
    "nft": "nftables",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "busctl": "systemd",
    "systemd-nspawn": "systemd-container",
    "shellcheck": "shellcheck",
    "depmod": "kmod",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
    "apt-cache": "apt",
    "lz4": "lz4",
    "zstd": "zstd",
}


PR_SET_PDEATHSIG = 1  # prctl(2)


@functools.cache
def _prctl() -> Callable[..., int]:
    import ctypes  # late on purpose: every helper a runner starts imports this module; only spawning needs it

    return ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``sig`` when we die, however we die (even by SIGKILL).

    So no program we started (mksquashfs, apt-get, a hypervisor, virtiofsd) outlives
    a killed ``microvm``. SIGTERM lets it clean up after itself (qemu flushes its
    disks, mmdebstrap stops its own children). The kernel sends it when the *thread*
    that forked exits: :func:`run` waits in that thread; :func:`spawn` must be called
    from a thread that outlives the child (the main thread). Set after Popen drops
    privileges (``user``), since a change of uid clears it.
    """
    parent, prctl = os.getpid(), _prctl()  # resolved here: the child only calls it

    def in_child() -> None:
        if prctl(PR_SET_PDEATHSIG, sig) != 0 or os.getppid() != parent:
            os._exit(127)  # we died before the prctl took hold: nobody waits for this child

    return in_child


def which(tool: str, *, purpose: str | None = None) -> str:
    """Absolute path of ``tool`` or a clear error saying how to install it."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/lib/qemu")
    if found:
        return found
    package = DEBIAN_PACKAGES.get(tool)
    why = f" (needed {purpose})" if purpose else ""
    raise MicrovmError(
        f"{tool} is not installed{why}",
        hint=f"apt-get install {package}" if package else None,
    )


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a program to completion; raise :class:`CommandError` on failure.

    Output is captured as text (stdout and stderr separately) unless
    ``capture`` is false, in which case it goes to our own stdout/stderr.
    """
    args = [os.fspath(a) for a in argv]
    _debug("run: %s%s", shlex.join(args), f"  (in {cwd})" if cwd else "")
    full_env = None if env is None else {**os.environ, **env}
    try:
        result = subprocess.run(
            args,
            check=False,
            capture_output=capture,
            text=True,
            input=input.decode() if isinstance(input, bytes) else input,
            cwd=cwd,
            env=full_env,
            timeout=timeout,
            preexec_fn=die_with_parent(),
        )
    except FileNotFoundError:
        which(args[0])  # raises the install hint
        raise
    except subprocess.TimeoutExpired as exc:
        raise MicrovmError(f"command timed out after {timeout} s: {shlex.join(args)}") from exc
    if check and result.returncode != 0:
        raise CommandError(args, result.returncode, (result.stderr or "") + (result.stdout or ""))
    return result


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = None,
    stderr: int | None = None,
    start_new_session: bool = False,
    user: tuple[int, int] | None = None,
    groups: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a long-running program (a hypervisor, virtiofsd, dnsmasq); it dies with us.

    ``user``: (uid, gid) to run it as, with ``groups`` instead of root's supplementary groups.
    """
    args = [os.fspath(a) for a in argv]
    _debug("spawn: %s%s", shlex.join(args), f"  (as uid {user[0]})" if user else "")
    drop = {"user": user[0], "group": user[1], "extra_groups": list(groups)} if user else {}
    full_env = None if env is None else {**os.environ, **env}
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=full_env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=start_new_session,
        preexec_fn=die_with_parent(),  # noqa: PLW1509 - it takes no lock: two system calls
        **drop,
    )


def output(argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> str:
    """Run a program and return its stdout, stripped."""
    return run(argv, **kwargs).stdout.strip()  # type: ignore[arg-type]
