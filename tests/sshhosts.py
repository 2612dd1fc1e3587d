"""Several "hosts" for tests and benchmarks: systemd-nspawn containers with sshd, joined by a bridge.

Each host is a container booted from the cached test rootfs, in its own
network namespace, wired to a bridge in a namespace of its own. The keys
(sshd's and root's) are generated here. h1 has the shared test store (the
builds); h2 has an empty store at the same path and no build inputs. The keys, the
network and the boot serve the cluster rig (cluster.py) too.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from helpers import CACHE, REPO, Host, unpacked_rootfs, wait_until, write_vm
from netns import NetNS, netns
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


class Keys:
    """sshd's host keys and root's client key for hosts named after ``addresses`` (name -> IPv4 address)."""

    def __init__(self, directory: Path, addresses: dict[str, str]) -> None:
        directory.mkdir()
        self.addresses = addresses
        self.client = _keys(directory, "client")
        self.hosts = {name: _keys(directory, name) for name in addresses}

    def install(self, rootfs: Path, name: str) -> None:
        """Host key, client key, authorized_keys, known_hosts and ssh config for every name; the hostname."""
        ssh = rootfs / "root/.ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh / "id_ed25519").write_text(self.client[0])
        (ssh / "id_ed25519").chmod(0o600)
        (ssh / "authorized_keys").write_text(self.client[1])
        (ssh / "known_hosts").write_text("".join(f"{self.addresses[h]} {key[1]}" for h, key in self.hosts.items()))
        (ssh / "config").write_text(
            "".join(f"Host {h}\n  HostName {a}\n" for h, a in self.addresses.items()) + "StrictHostKeyChecking yes\n"
        )
        for old in (rootfs / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        (rootfs / "etc/ssh/ssh_host_ed25519_key").write_text(self.hosts[name][0])
        (rootfs / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)
        (rootfs / "etc/ssh/ssh_host_ed25519_key.pub").write_text(self.hosts[name][1])
        (rootfs / "etc/hostname").write_text(f"{name}\n")
        wrapper = rootfs / "usr/local/bin/microvm"
        wrapper.write_text(WRAPPER)
        wrapper.chmod(0o755)
        (rootfs / STORE.relative_to("/")).mkdir(parents=True, exist_ok=True)


def bridge(stack: contextlib.ExitStack, prefix: str) -> NetNS:
    """A namespace with a bridge br0, the hosts' network."""
    ns = stack.enter_context(netns(prefix))
    ns.run("ip", "link", "add", "br0", "type", "bridge")
    ns.run("ip", "link", "set", "br0", "up")
    return ns


def wire(stack: contextlib.ExitStack, br: NetNS, prefix: str, name: str, address: str) -> NetNS:
    """A namespace for host ``name``: its eth0 at ``address``/24, the peer ``name`` on ``br``'s bridge."""
    ns = stack.enter_context(netns(prefix))
    br.run("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
    br.run("ip", "link", "set", name, "master", "br0", "up")
    ns.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
    ns.run("ip", "link", "set", "eth0", "up")
    return ns


def sshd_up(host: Host) -> None:
    """Wait for the container's systemd, then start sshd; the microvm wrapper first on its PATH."""
    host.box.wait_running()
    host.env["PATH"] = "/usr/local/bin:" + host.env["PATH"].removeprefix("/usr/local/bin:")  # once, at a reboot too
    host.systemctl("start", "ssh.service")


def ssh_ok(host: Host, names: Iterable[str]) -> bool:
    return all(host.box.run("ssh", h, "true", check=False).returncode == 0 for h in names)


@contextlib.contextmanager
def two_hosts(tmp: Path) -> Iterator[list[Host]]:
    """h1 and h2, booted, sshd running, each able to ssh to the other (and itself) by name.

    ``tmp/shared`` is bound at SHARED into both; ``tmp/work`` at its own path into h1.
    """
    keys = Keys(tmp / "keys", {h: f"10.77.0.{i}" for i, h in enumerate(HOSTS, 1)})
    shared = tmp / "shared"  # stands in for NFS/Ceph: the same directory at the same path on every host
    shared.mkdir()
    shared.chmod(0o777)  # the hypervisors run as user microvm
    (tmp / "work").mkdir()
    with contextlib.ExitStack() as stack:
        br = bridge(stack, "mvh")
        booted = []
        for name, address in keys.addresses.items():
            ns = wire(stack, br, "mvh", name, address)
            rootfs, ro_binds = unpacked_rootfs(tmp / name)
            keys.install(rootfs, name)
            binds = [f"{shared}:{SHARED}"] + ([str(STORE), str(tmp / "work")] if name == "h1" else [])
            box = stack.enter_context(container(rootfs, binds, ro_binds, tmp / f"{name}.log", netns=ns.name))
            booted.append(Host(box, rootfs, set()))
        for host in booted:
            sshd_up(host)
            host.microvm("host", "apply", str(_host_file(host.rootfs)))
        for host in booted:
            wait_until("ssh between the hosts", lambda h=host: ssh_ok(h, HOSTS), timeout=60)
        yield booted


def _host_file(rootfs: Path) -> Path:
    """An empty host file: apply installs the units, the microvm user and the state directory."""
    write_vm(rootfs / "etc/microvm", "[microvm]\n", "host.toml")
    return Path("/etc/microvm/host.toml")


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
