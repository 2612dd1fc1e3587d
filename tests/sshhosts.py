"""Several "hosts" for tests and benchmarks: systemd-nspawn containers with sshd, joined by a bridge.

Each host is a container booted from the cached test rootfs, in its own
network namespace, wired to a bridge in a namespace of its own. The keys
(sshd's and root's) are generated here. h1 has the shared test store (the
builds); h2 has an empty store at the same path and no build inputs.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from helpers import CACHE, REPO, Host, build_file, rootfs_tarball, wait_until, write_vm
from netns import netns
from nspawn import container

HOSTS = ("h1", "h2")
STORE = CACHE / "store"
# The shared storage, at one path on every host: inside the state directory of the VM that migrates, as
# its unit may write only there (ProtectSystem=strict; a host mounts its NFS/Ceph volume there too).
SHARED = Path("/var/lib/microvms/mig/shared")
WRAPPER = f"""#!/bin/sh
export MICROVM_STORE={STORE} MICROVM_ACCEL=tcg
exec {REPO}/.venv/bin/microvm "$@"
"""


def _keys(directory: Path, name: str) -> tuple[str, str]:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key], check=True)
    return key.read_text(), (directory / f"{name}.pub").read_text()


def _prepare(rootfs: Path, index: int, client: tuple[str, str], host_key: tuple[str, str], known: str) -> None:
    """sshd's host key, root's client key, authorized_keys, known_hosts and ssh config for the names h1, h2."""
    ssh = rootfs / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "id_ed25519").write_text(client[0])
    (ssh / "id_ed25519").chmod(0o600)
    (ssh / "authorized_keys").write_text(client[1])
    (ssh / "known_hosts").write_text(known)
    (ssh / "config").write_text(
        "".join(f"Host {h}\n  HostName 10.77.0.{i}\n" for i, h in enumerate(HOSTS, 1)) + "StrictHostKeyChecking yes\n"
    )
    for old in (rootfs / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    (rootfs / "etc/ssh/ssh_host_ed25519_key").write_text(host_key[0])
    (rootfs / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)
    (rootfs / "etc/ssh/ssh_host_ed25519_key.pub").write_text(host_key[1])
    (rootfs / "etc/hostname").write_text(f"{HOSTS[index - 1]}\n")
    wrapper = rootfs / "usr/local/bin/microvm"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    (rootfs / STORE.relative_to("/")).mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def two_hosts(tmp: Path) -> Iterator[list[Host]]:
    """h1 and h2, booted, sshd running, each able to ssh to the other (and itself) by name.

    ``tmp/shared`` is bound at SHARED into both; ``tmp/work`` at its own path into h1.
    """
    keys = tmp / "keys"
    keys.mkdir()
    client = _keys(keys, "client")
    host_keys = [_keys(keys, h) for h in HOSTS]
    known = "".join(f"10.77.0.{i} {key[1]}" for i, key in enumerate(host_keys, 1))
    shared = tmp / "shared"  # stands in for NFS/Ceph: the same directory at the same path on every host
    shared.mkdir()
    shared.chmod(0o777)  # the hypervisors run as user microvm
    ro_binds = [str(REPO)] + ([sys.base_prefix] if not sys.base_prefix.startswith("/usr") else [])
    with contextlib.ExitStack() as stack:
        bridge = stack.enter_context(netns("mvh"))
        bridge.run("ip", "link", "add", "br0", "type", "bridge")
        bridge.run("ip", "link", "set", "br0", "up")
        booted = []
        for i, name in enumerate(HOSTS, 1):
            ns = stack.enter_context(netns("mvh"))
            bridge.run("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
            bridge.run("ip", "link", "set", name, "master", "br0", "up")
            ns.run("ip", "addr", "add", f"10.77.0.{i}/24", "dev", "eth0")
            ns.run("ip", "link", "set", "eth0", "up")
            rootfs = tmp / name / "rootfs"
            rootfs.mkdir(parents=True)
            subprocess.run(["tar", "-C", rootfs, "--zstd", "-xf", rootfs_tarball()], check=True)
            _prepare(rootfs, i, client, host_keys[i - 1], known)
            binds = [f"{shared}:{SHARED}"] + ([str(STORE), str(tmp / "work")] if name == "h1" else [])
            (tmp / "work").mkdir(exist_ok=True)
            box = stack.enter_context(container(rootfs, binds, ro_binds, tmp / f"{name}.log", netns=ns.name))
            booted.append(Host(box, rootfs, set()))
        for host in booted:
            host.box.wait_running()
            host.env["PATH"] = "/usr/local/bin:" + host.env["PATH"]
            host.systemctl("start", "ssh.service")
            host.microvm("host", "apply", str(_host_file(host.rootfs)))
        for host in booted:
            wait_until("ssh between the hosts", lambda h=host: _ssh_ok(h), timeout=60)
        yield booted


def _host_file(rootfs: Path) -> Path:
    """An empty host file: apply installs the units, the microvm user and the state directory."""
    write_vm(rootfs / "etc/microvm", "[microvm]\n", "host.toml")
    return Path("/etc/microvm/host.toml")


def _ssh_ok(host: Host) -> bool:
    return all(host.box.run("ssh", h, "true", check=False).returncode == 0 for h in HOSTS)


def kernel_settings(shared_store, work: Path) -> str:
    """guest.kernel settings for the kernel already in the shared store (the hosts cannot download)."""
    kernel = build_file(shared_store, write_vm(work / "probe", "[guest]\nhostName = 'probe'\n")).kernel
    return f'[guest.kernel]\nimage = "{kernel.boot_image}"\nmodulesDir = "{kernel.modules_dir}"\n'


def console(host: Host, name: str) -> str:
    log = host.rootfs / "var/lib/microvms" / name / f"{name}-console.log"
    return log.read_text(errors="replace") if log.exists() else ""


MIGRATING = """
[guest]
hostName = "{name}"
shell = false
[guest.services.ticker]
command = 'echo kept-{name} > /data/proof && sync; i=0; while :; do echo "tick $i $(cat /proc/sys/kernel/random/boot_id)"; i=$((i+1)); sleep 0.1; done'
[microvm]
mem = 256
migratable = true
[[microvm.volumes]]
image = "{image}"
mountPoint = "/data"
size = 16
"""


def ticks(host: Host, name: str) -> list[tuple[int, str]]:
    return [(int(n), boot) for n, boot in re.findall(r"tick (\d+) (\S+)", console(host, name))]
