"""Names shared between the layers: the files inside a runner, in a state directory, in the guest.

The runner builder writes these, the host side and the runner's helpers read
them, the guest's init looks for the serial names: one place for each name, so
the writer and its readers cannot drift apart.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

# Inside a runner (a store entry): bin/microvm-run and friends, and what they read.
SHARE = "share/microvm"
RUNNER_CONFIG = f"{SHARE}/vm.json"  # the evaluated VM config the runner was built from
RUNNER_PACKAGES = f"{SHARE}/packages.json"  # debian guests: installed package -> version
RUNNER_SYSTEM = f"{SHARE}/system"  # the guest system's store path
TAP_INTERFACES = f"{SHARE}/tap-interfaces"
TAP_FLAGS = f"{SHARE}/tap-flags"  # "vnet_hdr", and "multi_queue" when the hypervisor opens queues
MACVTAP_INTERFACES = f"{SHARE}/macvtap-interfaces"
PCI_DEVICES = f"{SHARE}/pci-devices"
VIRTIOFS = f"{SHARE}/virtiofs"  # one directory per share tag

# In the state directory: what the last `microvm host apply` of the network added and set (host/network/record.py).
NETWORK_RECORD = ".network.json"

# Who runs hypervisors on the host: the systemd units' User= and Group=, and `microvm run` as root.
HYPERVISOR_USER, HYPERVISOR_GROUP = "microvm", "kvm"

# Where root's VMs live unless the host file or $MICROVM_STATE_DIR says otherwise.
SYSTEM_STATE_DIR = Path("/var/lib/microvms")

# A VM's name is a directory, a lock file, systemd instances and socket names: as a host name, 63 at most.
VM_NAME_MAX = 63

# The virtio-blk serial of the read-only system disk; the guest's init mounts it as /.
ROOT_SERIAL = "microvm-root"

# microvm.credentialFiles: the runner packs them at every start into this read-only disk (a tar archive,
# in the state directory, readable by the hypervisor's user only), a volume of its own; the guest's initrd
# unpacks it into a tmpfs, at the directory of its base.
CREDENTIALS_IMAGE = "credentials.img"
CREDENTIALS_DIRS = {"busybox": "/run/credentials", "debian": "/run/microvm/credentials"}

# The name of the virtio-serial port on which a guest with microvm.readiness says READY=1.
READINESS_PORT = "org.microvm.ready"

# The cluster's resource agent ocf:microvm:vm: `host apply` installs it on a cluster node, `list` asks the
# cluster where its VMs run only where it is.
OCF_AGENT = Path("/usr/lib/ocf/resource.d/microvm/vm")

# The one entry of the helper programs runners and units run (microvm/helpers.py).
HELPERS = "microvm.helpers"


def helper_argv(command: str, *args: str) -> list[str]:
    """The command line of helper ``command`` run by this installation's Python."""
    return [sys.executable, "-m", HELPERS, command, *args]


def saved_state_files(name: str) -> tuple[str, str]:
    """`microvm suspend`'s files in VM ``name``'s state directory: the saved state, and the
    runner that saved it (only that runner resumes it: another build has other devices and disks)."""
    return f"{name}.vmstate", f"{name}.vmstate.runner"


def read_small(path: str | os.PathLike[str]) -> bytes:
    """A small file's bytes in three system calls (open, read to the end, close). `list` reads several files
    of every installed VM, and open()'s buffered layers add a terminal check, two seeks and a stat to each."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def runner_config(runner: Path) -> dict[str, Any]:
    """The evaluated config a runner was built from (its vm.json): no rebuild needed to show it."""
    return json.loads(read_small(f"{runner}/{RUNNER_CONFIG}"))


def written_paths(microvm: dict[str, Any], vm_dir: Path) -> list[tuple[tuple[str | int, ...], Path]]:
    """What a VM writes outside the store, with its option path: every volume but the credentials disk
    (packed anew at each start), every writable share. Relative paths are in ``vm_dir``.

    A cluster needs these on storage every node sees; ``microvm.*`` keys as in vm.json."""
    found: list[tuple[tuple[str | int, ...], Path]] = [
        (("microvm", "volumes", i, "image"), Path(os.path.normpath(vm_dir / v["image"])))
        for i, v in enumerate(microvm.get("volumes", []))
        if v["image"] != CREDENTIALS_IMAGE
    ]
    found += [
        (("microvm", "shares", i, "source"), Path(os.path.normpath(vm_dir / s["source"])))
        for i, s in enumerate(microvm.get("shares", []))
        if not s.get("readOnly")
    ]
    return found
