"""Helpers shared by the test modules; the fixtures are in conftest.py.

Test modules import from here (and from nspawn, netns, notify), never from conftest or another
test module: a test file can then be run, moved or split alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nspawn import Container

from microvm.config import load_vm
from microvm.hypervisors import Feature, GuestArtifacts, get
from microvm.model.addresses import config_addresses
from microvm.model.options import HostConfig, VMConfig
from microvm.runner.build import BuiltVM, build_vm
from microvm.store import Store

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MICROVM_TEST_CACHE") or Path.home() / ".cache" / "microvm-test")
BOOT_TIMEOUT = 180  # TCG on a loaded 2-core machine; a hung guest fails, it never passes

MINIMAL_VM = '[guest]\nhostName = "web"\n'  # the least a VM file needs

# --- VM files, builds and boots ---------------------------------------------------


def entries_built_for(store_root: Path, host_name: str) -> set[str]:
    """Store entries of the VM ``host_name`` (xdist workers share the store: compare these, not all entries)."""
    kinds = ("system", "rootimage", "initrd", "microvm-qemu")
    return {e for e in os.listdir(store_root) if e.endswith(tuple(f"-{kind}-{host_name}" for kind in kinds))}


def exposure(roots: list[Path], secret: bytes) -> tuple[list[Path], list[Path]]:
    """What other users could change or read below ``roots``: (everything every user may write,
    the files every user may read - the file and each directory above it up to its root - that hold ``secret``).

    Where the roots are (the tests' cache is under root's private home) does not count: on a host the
    store and the state directory are where every user may look.
    """
    writable, readable = [], []

    def reachable(directory: Path, root: Path) -> bool:
        return all(d.stat().st_mode & 0o001 for d in (directory, *directory.parents) if d.is_relative_to(root))

    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            for name in [*dirnames, *filenames]:
                mode = (here / name).lstat().st_mode
                if stat.S_ISLNK(mode):
                    continue
                if mode & 0o002:
                    writable.append(here / name)
                if (
                    stat.S_ISREG(mode)
                    and mode & 0o004
                    and reachable(here, root)
                    and secret in (here / name).read_bytes()
                ):
                    readable.append(here / name)
    return writable, readable


def write_vm(directory: Path, text: str, name: str = "vm.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


@dataclass
class Booted:
    built: BuiltVM
    workdir: Path
    returncode: int
    console: str


def build_file(store: Store, file: Path, hypervisor: str | None = None) -> BuiltVM:
    return build_vm(store, load_vm(file).config, hypervisor)


def kernel_settings(store: Store, work: Path) -> str:
    """A VM file's ``[guest.kernel]`` table naming the kernel already in ``store`` (a probe VM's, built in
    ``work``): VMs built with it need no download, and hosts without network can build them."""
    kernel = build_file(store, write_vm(work / "probe", "[guest]\nhostName = 'probe'\n")).kernel
    return f'[guest.kernel]\nimage = "{kernel.boot_image}"\nmodulesDir = "{kernel.modules_dir}"\n'


def nspawn_kernel_settings(store: Store, tmp_path: Path) -> str:
    """:func:`kernel_settings` for VMs that run under systemd in an nspawn container (skips where no
    container can run)."""
    if not Path("/sys/fs/cgroup").is_dir() or not shutil.which("systemd-nspawn"):
        pytest.skip("needs systemd-nspawn")
    return kernel_settings(store, tmp_path)


def boot(
    store: Store, file: Path, workdir: Path, timeout: float = BOOT_TIMEOUT, hypervisor: str | None = None
) -> Booted:
    """Build ``file`` and run its runner to completion; return the console output."""
    built = build_file(store, file, hypervisor)
    workdir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [built.run], cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    logs = list(workdir.glob("*-console.log"))
    console = logs[0].read_text(errors="replace") if logs else result.stdout.decode(errors="replace")
    return Booted(built, workdir, result.returncode, console + result.stderr.decode(errors="replace"))


@contextmanager
def started(store: Store, file: Path, workdir: Path) -> Iterator[tuple[BuiltVM, subprocess.Popen[bytes]]]:
    """Build ``file`` and start its runner in ``workdir``; the hypervisor is killed afterwards if still there."""
    built = build_file(store, file)
    workdir.mkdir(parents=True, exist_ok=True)
    vm = subprocess.Popen([built.run], cwd=workdir, stdin=subprocess.DEVNULL)
    try:
        yield built, vm
    finally:
        vm.kill()


def shut_down(built: BuiltVM, workdir: Path, vm: subprocess.Popen[bytes]) -> None:
    """``bin/microvm-shutdown``, which returns only once the hypervisor has exited (with status 0)."""
    result = subprocess.run(
        [built.runner / "bin/microvm-shutdown"], cwd=workdir, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert vm.wait(timeout=5) == 0


def microvm(*args: str, timeout: float = BOOT_TIMEOUT, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real `microvm` command."""
    return subprocess.run(
        [sys.executable, "-m", "microvm", *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = BOOT_TIMEOUT) -> str:
    """Wait until ``text`` is in the file ``path`` (a console log) while ``proc`` runs; the file's content."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        assert proc.poll() is None, f"the VM exited early:\n{content}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} did not appear in {path}")


# a VM that keeps running (a service) and says when it is up on its console
LONG_RUNNING_VM = """
[guest]
hostName = "{name}"
shell = false
[guest.services.ticker]
command = 'echo "ready: {name}"; while :; do sleep 1; done'
[microvm]
mem = 256
"""

# a VM that powers off at once (installed VMs without a boot)
POWEROFF_VM = """
[guest]
hostName = "{name}"
shell = false
commands = ["poweroff"]
[microvm]
mem = {mem}
{extra}
"""


# --- command lines and run scripts without a build ------------------------------------


def guest_for(hypervisor: str) -> GuestArtifacts:
    """Guest artifacts at fixed store paths: command lines and runner files without building."""
    kernel = "vmlinux" if get(hypervisor).kernel_format == "vmlinux" else "bzImage"
    return GuestArtifacts(
        kernel=Path(f"/var/lib/microvm/store/k/{kernel}"),
        initrd=Path("/var/lib/microvm/store/i/initrd"),
        root_image=Path("/var/lib/microvm/store/s/system.erofs"),
        cmdline=["console=ttyS0", "init=/init", "quiet"],
        accel="kvm",
    )


# every backend but qemu, which has cases of its own
BACKENDS = ["cloud-hypervisor", "firecracker", "crosvm", "kvmtool", "stratovirt", "alioth"]


def full_options(hypervisor: str) -> dict[str, Any]:
    """A ``microvm`` table using every option ``hypervisor`` declares."""
    has = get(hypervisor).supports
    key = hypervisor
    mv: dict[str, Any] = {"hypervisor": hypervisor, "vcpu": 2, "mem": 1024}
    mv["volumes"] = [
        {
            "image": "var.img",
            "mountPoint": "/var",
            "size": 1024,
            **({"serial": "var-disk"} if has(Feature.VOLUME_SERIAL) else {}),
            **({"direct": True} if has(Feature.DIRECT_IO) else {}),
        },
        {"image": "data.img", "mountPoint": "/data", "size": 64, "readOnly": has(Feature.READ_ONLY_VOLUMES)},
    ]
    ifaces = [{"type": "tap", "id": "vm-web", "mac": "02:00:00:00:00:01"}]
    if has(Feature.MACVTAP):
        ifaces.append(
            {
                "type": "macvtap",
                "id": "vm-web-mv",
                "mac": "02:00:00:00:00:02",
                "macvtap": {"link": "eth0", "mode": "bridge"},
            }
        )
    if has(Feature.USER_NETWORK):
        ifaces.append({"type": "user", "id": "vm-web-user", "mac": "02:00:00:00:00:03"})
    mv["interfaces"] = ifaces
    shares = []
    if has(Feature.SHARE_VIRTIOFS):
        shares.append({"tag": "home", "source": "/home", "mountPoint": "/home", "proto": "virtiofs"})
    if has(Feature.SHARE_9P):
        shares.append({"tag": "srv", "source": "srv-data", "mountPoint": "/srv", "proto": "9p"})
    mv["shares"] = shares
    if has(Feature.BALLOON):
        mv |= {"balloon": True, "deflateOnOOM": False}
    if has(Feature.INITIAL_BALLOON):
        mv["initialBalloonMem"] = 128
    if has(Feature.VIRTIO_MEM):
        mv |= {"hotplugMem": 2048, "hotpluggedMem": 512}
    if has(Feature.VSOCK):
        mv["vsock"] = {"cid": 5}
    if has(Feature.PCI_DEVICES):
        mv["devices"] = [{"bus": "pci", "path": "0000:01:00.0"}]
    if has(Feature.NOTIFY_READINESS):
        mv["readiness"] = True
    mv[key] = {"extraArgs": ["--extra", "arg"]}
    if hypervisor == "crosvm":
        mv[key]["pivotRoot"] = "/var/empty"
    if hypervisor == "firecracker":
        mv[key]["extraConfig"] = {
            "machine-config": {"track_dirty_pages": True},
            "logger": {"log_path": "firecracker.log", "level": "Info"},
        }
    return mv


# qemu interfaces: qemu-system-x86_64(1) for 7.2: "-netdev tap,id=id[,fd=h][,fds=x:y:...:z][,ifname=name]
# [,script=file][,downscript=dfile][,vhost=on|off][,queues=n]", "-netdev bridge,id=id[,br=bridge][,helper=helper]",
# "-netdev user,id=id[,hostfwd=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport][,guestfwd=...]";
# docs/system/devices/net.rst; multi-queue virtio-net: "-device virtio-net-pci,mq=on,vectors=2*N+2" with
# "queues=N" on the netdev (qemu's docs/devel/multiqueue / linux-kvm.org Multiqueue). No vhost=on: vhost-net
# is optional, qemu falls back to its own backend. -sandbox on is left out with a bridge: it forbids the
# exec of qemu-bridge-helper.
QEMU_INTERFACES = {
    "tap": {"vcpu": 1, "interfaces": [{"type": "tap", "id": "vm1", "mac": "02:00:00:01:00:01"}]},
    "tap-multiqueue": {"vcpu": 2, "interfaces": [{"type": "tap", "id": "vm1", "mac": "02:00:00:01:00:01"}]},
    "macvtap": {
        "vcpu": 1,
        "interfaces": [
            {
                "type": "macvtap",
                "id": "mv-a",
                "mac": "02:00:00:00:00:0a",
                "macvtap": {"link": "eth0", "mode": "bridge"},
            },
        ],
    },
    "macvtap-multiqueue": {
        "vcpu": 2,
        "interfaces": [
            {
                "type": "macvtap",
                "id": "mv-a",
                "mac": "02:00:00:00:00:0a",
                "macvtap": {"link": "eth0", "mode": "bridge"},
            },
            {"type": "macvtap", "id": "mv-b", "mac": "02:00:00:00:00:0b", "macvtap": {"link": "eth0", "mode": "vepa"}},
        ],
    },
    "bridge": {
        "interfaces": [{"type": "bridge", "id": "vm-br", "mac": "02:00:00:00:00:0c", "bridge": "br0"}],
    },
    "user-forward": {
        "interfaces": [{"type": "user", "id": "usr", "mac": "02:00:00:00:00:0d"}],
        "forwardPorts": [
            {"from": "host", "host": {"address": "127.0.0.1", "port": 8022}, "guest": {"port": 22}},
            {"from": "guest", "proto": "tcp", "host": {"port": 3000}, "guest": {"address": "10.0.2.100", "port": 80}},
        ],
    },
}


# --- host networking in a namespace ------------------------------------------------


def microvm_in(ns, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real CLI, run inside ``ns`` (the test's environment: private state dir)."""
    return ns.run(sys.executable, "-m", "microvm", *args, check=check)


def snapshot(ns) -> dict[str, str]:
    """Everything of a namespace that `host network` may change."""
    return {
        # a link that was ever up keeps a default qdisc ("noqueue" instead of "noop"): the kernel's, not ours
        "links": re.sub(r"qdisc \S+ ", "", ns.run("ip", "-d", "-o", "link", "show").stdout),
        # duplicate address detection finishing is time, not a change
        "addresses": ns.run("ip", "-o", "address", "show").stdout.replace(" tentative", ""),
        "ruleset": ns.run("nft", "list", "ruleset").stdout,
        "forwarding": ns.run("sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding").stdout,
        "processes": " ".join(map(str, ns.pids())),
    }


# --- systemd units -------------------------------------------------------------------


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)], capture_output=True, text=True, check=False
    )


# --- Debian guests ---------------------------------------------------------------------

WEB_PORT, SSH_PORT, CLOSED_PORT = 18080, 12222, 19000
DEBIAN_VM = """
[guest]
hostName = "{name}"
base = "debian"
packages = {packages}
timeZone = "Europe/Berlin"

[guest.users.root]
authorizedKeys = ["{key}"]

[guest.users.alice]
uid = 1234
groups = ["users", "media"]
authorizedKeys = ["{key}"]

[guest.groups.media]  # the guest lacks it: created
gid = 2345

[guest.files."/etc/microvm-test"]
source = "files/marker.txt"
mode = "0640"
user = "alice"
group = "media"

[guest.services.prepare]
type = "oneshot"
command = '''
mkdir -p /srv/www
echo "served-by-$NAME" > /srv/www/index.html
'''
environment = {{ NAME = "{name}" }}
after = ["getty@tty1.service"]

[guest.services.web]
description = "a small web server"
command = "exec busybox httpd -f -p 8000 -h /srv/www"
user = "www-data"
after = ["prepare"]

[guest.services.secretive]  # a credential as a file and as environment, for a user that cannot read the disk's copy
type = "oneshot"
user = "alice"
credentials = ["token"]
environmentCredential = "env"
command = 'echo "$API_KEY $(cat "$CREDENTIALS_DIRECTORY/token")" > /home/alice/seen'

[guest.services.tick]
command = "date >> /var/lib/data/ticks"
type = "oneshot"
startAt = "minutely"

[guest.firewall]
enable = true
allowedTCPPorts = [22, 8000]

[guest.mounts.data]
volume.size = 64

[guest.mounts.shared]
share.enable = true

[guest.mounts.journal]  # the guest's journal on the host (microvm.nix FAQ)
mountpoint = "/var/log/journal"
share.enable = true

[guest.store.readwrite]
enable = true
size = 256

[guest.store.readonly]
enable = {shared_store}

[microvm]
mem = 512
readiness = true
storeDiskErofsFlags = ["-zlz4"]  # a quarter of lz4hc's build time

[[microvm.interfaces]]
type = "user"
id = "eth0"
mac = "02:00:00:00:00:42"

[guest.network.interfaces.eth0]  # found by its MAC, named by udev; IPv4 only
name = "uplink0"
linkLocal = false
acceptRA = false

[[microvm.forwardPorts]]
host.port = {web}
guest.port = 8000

[[microvm.forwardPorts]]
host.port = {ssh}
guest.port = 22

[[microvm.forwardPorts]]
host.port = {closed}
guest.port = 9000

[microvm.credentialFiles]
token = "{secrets}/token"
env = "{secrets}/env"
"""
# what the VM's credential files hold: it must reach the guest and never the store
DEBIAN_SECRET = "d3b-s3cret-4a9e-not-in-the-store"
DEBIAN_PACKAGES = ["openssh-server", "busybox"]


def write_debian_vm(
    directory: Path,
    key: Path,
    name: str = "deb-test",
    packages: list[str] = DEBIAN_PACKAGES,
    shared_store: bool = False,
) -> Path:
    (directory / "files").mkdir(parents=True, exist_ok=True)
    if not (directory / "files/marker.txt").exists():
        (directory / "files/marker.txt").write_text("declared file, round 1\n")
    secrets = directory / "secrets"  # the host's private files: read at start, never built in
    secrets.mkdir(mode=0o700, exist_ok=True)
    (secrets / "token").write_text(DEBIAN_SECRET)
    (secrets / "env").write_text(f"API_KEY={DEBIAN_SECRET}-env\n")
    text = DEBIAN_VM.format(
        name=name,
        packages=json.dumps(packages),
        shared_store=json.dumps(shared_store),
        key=key.read_text().strip(),
        web=WEB_PORT,
        ssh=SSH_PORT,
        closed=CLOSED_PORT,
        secrets=secrets,
    )
    return write_vm(directory, text)


# --- the host with real systemd in a systemd-nspawn container -------------------------

HOST_PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "iproute2", "python3", "qemu-system-x86", "busybox-static",
    "erofs-utils", "kmod", "e2fsprogs", "passwd", "git", "dnsmasq-base", "nftables", "systemd-container",
    "openssh-server", "openssh-client",
]  # fmt: skip
# The hypervisor runs as user microvm and reaches the store and venv under /root. nspawn copies this
# machine's /dev/net/tun, which is 0600 here; a stock Debian host has it 0666, and so does the container.
ROOTFS_HOOK = 'chmod 0711 "$1/root" && echo "z /dev/net/tun 0666 - - -" > "$1/etc/tmpfiles.d/microvm-test-tun.conf"'
STATE = Path("/srv/microvms")  # the host file moves stateDir: the commands find it in /etc/default/microvm


def rootfs_tarball(packages: list[str] = HOST_PACKAGES, hook: str = ROOTFS_HOOK) -> Path:
    """A minbase Debian with systemd and ``packages``; built once per (packages, hook), shared by later runs.

    xdist workers may ask at once: a file lock lets one build while the others wait for it.
    """
    digest = hashlib.sha256(repr((packages, hook)).encode()).hexdigest()[:12]
    tarball = CACHE / f"nspawn-bookworm-{digest}.tar.zst"
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{tarball}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            tmp = tarball.with_suffix(".tmp.tar.zst")
            subprocess.run(
                ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}"]
                + [f"--customize-hook={hook}", "bookworm", str(tmp)],
                check=True,
                capture_output=True,
            )
            tmp.rename(tarball)
    return tarball


def wait_until(what: str, check: Callable[[], bool], timeout: float = BOOT_TIMEOUT) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


class Host:
    """The container plus the paths and commands of the test."""

    def __init__(self, box: Container, rootfs: Path, seen: set[str]) -> None:
        self.box, self.rootfs = box, rootfs
        self.seen = seen  # boot ids already waited for: a console log can be left from an earlier boot
        self.env = {
            "PATH": f"{REPO}/.venv/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "MICROVM_STORE": str(CACHE / "store"),
            "MICROVM_ACCEL": "tcg",
        }

    def microvm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.box.run("microvm", *args, env=self.env, check=check)

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.box.run("systemctl", *args, check=check).stdout.strip()

    def active(self, name: str) -> bool:
        return self.systemctl("is-active", f"microvm@{name}.service", check=False) == "active"

    def console(self, name: str) -> str:
        log = self.rootfs / STATE.relative_to("/") / name / f"{name}-console.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def console_answer(self, name: str, command: str, answer: str) -> str:
        """Type ``command`` into the VM's console shell, wait for ``answer``, detach (Ctrl-]); what the attach showed."""
        attached = self.box.popen("microvm", "console", name, env=self.env)
        attached.stdin.write(command + "\n")
        attached.stdin.flush()
        wait_until(f"{answer!r} on {name}'s console", lambda: answer in self.console(name))
        attached.stdin.write("\x1d")
        attached.stdin.flush()
        assert attached.wait(timeout=30) == 0, attached.stderr.read()
        return attached.stdout.read()

    def main_pid(self, name: str) -> int:
        return int(self.systemctl("show", "-P", "MainPID", f"microvm@{name}.service"))

    def states(self) -> dict[str, str]:
        return {vm["name"]: vm["state"] for vm in json.loads(self.microvm("list", "--json").stdout)}

    def wait_booted(self, name: str, gen: int) -> None:
        """Wait for a boot of ``name`` at ``gen`` not seen before."""

        def booted() -> bool:
            found = re.findall(rf"marker: {name} gen {gen} boot (\S+)", self.console(name))
            new = [boot for boot in found if boot not in self.seen]
            self.seen.update(new)
            return bool(new)

        wait_until(f"{name} gen {gen} to boot", booted)


def unpacked_rootfs(tmp_path: Path, tarball: Path | None = None) -> tuple[Path, list[str]]:
    """The rootfs (``tarball``, the test rootfs by default) unpacked under ``tmp_path``, and the read-only binds
    the venv needs in the container."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(parents=True)
    subprocess.run(["tar", "-C", rootfs, "--zstd", "-xf", tarball or rootfs_tarball()], check=True)
    ro_binds = [str(REPO)]
    if not sys.base_prefix.startswith("/usr"):
        ro_binds.append(sys.base_prefix)  # the venv's interpreter (e.g. pyenv's) lives outside /usr
    return rootfs, ro_binds


# --- `microvm web` ---------------------------------------------------------------------


@contextlib.contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`microvm web ARGS` running; the line it printed first (the address, with the token if any)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "microvm", "web", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("microvm web: "), line + process.stderr.read()
        yield process, line.strip()
    finally:
        process.terminate()
        process.wait(timeout=30)


def http_get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def address(line: str) -> tuple[str, str]:
    """(base URL, token) of `microvm web: open http://HOST:PORT/?token=TOKEN`."""
    found = re.search(r"(https?://[^/]+)/\?token=(\S+)", line)
    assert found, line
    return found.group(1), found.group(2)


def addresses_on(vm: VMConfig, host: HostConfig) -> list[str]:
    """The addresses ``vm`` gets on the bridge of ``host``'s network (what `microvm list` shows)."""
    return config_addresses(vm.dump(), host.network.basic.dump())
