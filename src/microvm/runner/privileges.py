"""Who runs the hypervisor when ``microvm run`` is started as root: not root, unless the config says so.

The same user and group as under systemd (``microvm@.service`` has
``User=microvm``, ``Group=kvm``): a guest that breaks out of qemu then holds an
unprivileged account, not the host. They are created as ``microvm host apply``
creates them when missing (a system user with no login, in group ``kvm``, which
owns /dev/kvm on Debian). Not ``nobody``: files the hypervisor writes (volumes,
sockets, the console log) would belong to an account that other daemons share.

What needs root stays with us and happens before the drop: virtiofsd, taps
(``bin/tap-up``). The VM's state directory is given to the user; the store and
the state directory must be reachable by it, else a clear error says what to change.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys
from pathlib import Path

from .. import proc
from ..errors import MicrovmError
from ..layout import HYPERVISOR_GROUP, HYPERVISOR_USER
from ..store import PRIVATE_GROUP, Store

ROOT_ENV = "MICROVM_RUN_AS_ROOT"  # the same as microvm.runAsRoot = true, for one command (tests, scripts)


def create_group(name: str) -> None:
    proc.run(["groupadd", "--system", name])


def create_user(name: str, group: str, home: Path) -> None:
    """A system user without a login or a home directory of its own."""
    proc.run(
        ["useradd", "--system", "--gid", group, "--home-dir", home, "--no-create-home"]
        + ["--shell", "/usr/sbin/nologin", name]
    )


def group_id(name: str) -> int:
    """The gid of group ``name``, created if missing."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        create_group(name)
        return grp.getgrnam(name).gr_gid


def hypervisor_ids(home: Path) -> tuple[int, int]:
    """(uid, gid) of the ``microvm`` user and ``kvm`` group, created (home ``home``) if missing."""
    group_id(HYPERVISOR_GROUP)
    try:
        pwd.getpwnam(HYPERVISOR_USER)
    except KeyError:
        create_user(HYPERVISOR_USER, HYPERVISOR_GROUP, home)
        print(f"microvm: created system user {HYPERVISOR_USER} to run hypervisors as", file=sys.stderr)
    return pwd.getpwnam(HYPERVISOR_USER).pw_uid, grp.getgrnam(HYPERVISOR_GROUP).gr_gid


def _allows(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    """Whether ``uid``/``gid`` (no other groups) has ``bits`` (as rwx for others) on a file with ``st``."""
    if st.st_uid == uid:
        return st.st_mode & (bits << 6) == bits << 6
    if st.st_gid == gid:
        return st.st_mode & (bits << 3) == bits << 3
    return st.st_mode & bits == bits


def _unreachable(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory from / down to ``path`` (included) that ``uid`` cannot pass through."""
    for directory in [*reversed(path.absolute().parents), path.absolute()]:
        if not _allows(directory.stat(), uid, gid, stat.S_IXOTH):
            return directory
    return None


def _refuse(what: str, path: Path, blocked: Path, why: str) -> MicrovmError:
    return MicrovmError(
        f"the hypervisor runs as user {HYPERVISOR_USER}, which cannot {what} {path}: {blocked} is {why}",
        hint=(
            f"make it reachable for {HYPERVISOR_USER} (e.g. chmod o+x {blocked}), use a store and state "
            f"directory it can reach, or run the hypervisor as root: microvm.runAsRoot = true"
        ),
    )


def drop_to(runner: Path, workdir: Path) -> tuple[int, int, list[int]]:
    """Prepare ``workdir`` (the VM's state directory) for an unprivileged hypervisor; return its
    (uid, gid, supplementary groups: the one that reads the private store entries, as under systemd).

    The directory and what root left directly in it (volumes, the console log, a share's
    directory; not what a share holds, not links) are given to the user.
    """
    uid, gid = hypervisor_ids(workdir.parent)
    private = group_id(PRIVATE_GROUP)
    Store(runner.parent).share(runner)  # the root image and system it uses, perhaps older than the group
    for entry in [workdir, *workdir.iterdir()]:
        st = entry.lstat()
        if st.st_uid == 0 and not stat.S_ISLNK(st.st_mode):
            os.chown(entry, uid, gid, follow_symlinks=False)
    if blocked := _unreachable(runner, uid, gid):
        raise _refuse("reach its runner", runner, blocked, f"mode {blocked.stat().st_mode & 0o777:o}")
    if blocked := _unreachable(workdir, uid, gid):
        raise _refuse("reach the VM's state directory", workdir, blocked, f"mode {blocked.stat().st_mode & 0o777:o}")
    if not _allows(workdir.stat(), uid, gid, stat.S_IWOTH | stat.S_IXOTH):
        raise _refuse("write to the VM's state directory", workdir, workdir, f"owned by uid {workdir.stat().st_uid}")
    return uid, gid, [private]
