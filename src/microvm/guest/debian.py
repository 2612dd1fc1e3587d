"""The debian guest base: a Debian system with systemd, built with mmdebstrap.

Two store entries, so that a config change does not reinstall packages:

- the *package tree* (``debian-<suite>``): mmdebstrap's root filesystem for the
  suite, variant, mirror and package list (and lock), with the exact installed
  versions in ``packages.json``. Package names are checked against the suite's
  package lists before anything is written into the store.
- the *system* (``system-<hostName>``): a copy of the package tree with the VM's
  declarations written in as plain files - users, files, systemd units and
  timers, networkd, nftables, time zone, locale, console login and the kernel
  modules the guest may load. Nothing runs in a chroot, so this step is a copy
  and some writes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import proc
from ..errors import MicrovmError
from ..hypervisors.base import Hypervisor
from ..model.options import InterfaceNetwork, Service, VMConfig
from ..store import Store, restore
from .initrd import needed_modules
from .kernel import KernelEntry
from .kmod import ModuleIndex
from .readiness import READY_SCRIPT, READY_SCRIPT_PATH, READY_UNIT

DEBIAN_FORMAT = 2  # bump when the package tree changes meaning
LAYER_FORMAT = 2  # bump when the generated files change meaning
PACKAGES_FILE = "usr/lib/microvm/packages.json"  # inside the system tree: name -> version
# What every debian guest needs: systemd as init, udev (networkd waits for it), DNS, ip, modprobe.
BASE_PACKAGES = ["systemd-sysv", "udev", "dbus", "systemd-resolved", "iproute2", "kmod"]
# Not installed: documentation and translations (smaller tree, faster images).
PATH_EXCLUDES = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*"]
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
PLAIN_LOCALES = {"C", "C.UTF-8", "POSIX"}
NETFILTER_DIRS = ("kernel/net/netfilter", "kernel/net/ipv4/netfilter", "kernel/net/ipv6/netfilter")
SYSTEMD_LIB = "/lib/systemd/system"
# Masked with microvm.optimize: jobs of a long-lived installed system that an immutable guest does not need.
OPTIMIZE_MASK = [
    "e2scrub_reap.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dev-hugepages.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
]
FIRST_UID = 1000


# --- the package tree -------------------------------------------------------------


def package_list(vm: VMConfig) -> list[str]:
    """Every package asked for (``name`` or ``name=version``), with versions from the lock."""
    guest = vm.guest
    wanted = [*BASE_PACKAGES, *guest.packages]
    if guest.firewall.enable:
        wanted.append("nftables")
    if guest.locale not in PLAIN_LOCALES:
        wanted.append("locales")
    if vm.microvm.vsock.ssh.enable:
        wanted.append("openssh-server")
    lock = read_lock(vm)
    pinned = []
    for spec in dict.fromkeys(wanted):
        name = spec.split("=", 1)[0]
        pinned.append(f"{name}={lock[name]}" if "=" not in spec and name in lock else spec)
    return pinned


def read_lock(vm: VMConfig) -> dict[str, str]:
    """``guest.debian.lock`` (a packages.json): package -> version."""
    lock = vm.guest.debian.lock
    if lock is None:
        return {}
    try:
        data = json.loads(Path(lock).read_text())
    except (OSError, ValueError) as exc:
        raise MicrovmError(f"guest.debian.lock: cannot read {lock}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise MicrovmError(f"guest.debian.lock: {lock} is not a JSON object of package name -> version")
    return data


def _generated_locale(locale: str) -> tuple[str, str] | None:
    """``de_DE.UTF-8`` -> (``de_DE``, ``UTF-8``) for localedef; None for locales built into libc."""
    if locale in PLAIN_LOCALES:
        return None
    name, _, charset = locale.partition(".")
    return name, charset or "UTF-8"


def _deb_arch(vm: VMConfig) -> str:
    return DEB_ARCH[vm.guest.arch or "x86_64"]


def _sources_line(vm: VMConfig) -> str:
    d = vm.guest.debian
    return f"deb [signed-by={KEYRING}] {d.mirror} {d.suite} {' '.join(d.components)}"


def check_packages(store: Store, vm: VMConfig, packages: list[str]) -> None:
    """Fail, naming them, if packages are not in the suite (apt's simulated install against its lists).

    The lists live in a cache beside the store (``.cache/apt``), refreshed by
    ``apt-get update`` each time, so a second check costs one small request.
    """
    apt = store.root / ".cache" / "apt" / re.sub(r"[^A-Za-z0-9.-]", "_", _sources_line(vm))[-120:]
    for sub in ("lists/partial", "cache/archives/partial", "etc/preferences.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    with (apt / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # apt's own locking is off (not root's dirs); one check at a time
        _apt_simulate(vm, apt, packages)


def _apt_simulate(vm: VMConfig, apt: Path, packages: list[str]) -> None:
    """Refresh the suite's lists in ``apt`` and simulate installing ``packages`` on an empty system."""
    (apt / "status").touch()
    (apt / "sources.list").write_text(_sources_line(vm) + "\n")
    options = {
        "Dir::State": apt,
        "Dir::State::Lists": apt / "lists",
        "Dir::State::status": apt / "status",
        "Dir::Cache": apt / "cache",
        "Dir::Etc::SourceList": apt / "sources.list",
        "Dir::Etc::SourceParts": apt / "sources.list.d",
        "Dir::Etc::Preferences": apt / "preferences",
        "Dir::Etc::PreferencesParts": apt / "etc/preferences.d",
        "APT::Architecture": _deb_arch(vm),
        "APT::Architectures": _deb_arch(vm),
        "Acquire::Languages": "none",
        "Debug::NoLocking": "1",
    }
    args = [a for key, value in options.items() for a in ("-o", f"{key}={value}")]
    apt_get = proc.which("apt-get", purpose="to check guest.packages")
    proc.run([apt_get, *args, "-q", "update"])
    result = proc.run([apt_get, *args, "-q", "-s", "--no-install-recommends", "install", *packages], check=False)
    if result.returncode == 0:
        return
    missing = re.findall(r"Unable to locate package (\S+)", result.stderr)
    missing += re.findall(r"Package '?([^' ]+)'? has no installation candidate", result.stderr)
    missing += [f"{n}={v}" for v, n in re.findall(r"Version '([^']+)' for '([^']+)' was not found", result.stderr)]
    d = vm.guest.debian
    if missing:
        raise MicrovmError(
            f"guest.packages: {', '.join(missing)} not found in Debian {d.suite} ({d.mirror}, {' '.join(d.components)})",
            hint="check the name with `apt-cache search`; versions with `apt-cache policy NAME`",
        )
    raise MicrovmError(f"guest.packages cannot be installed together:\n{result.stdout}{result.stderr}".rstrip())


def installed_versions(root: Path) -> dict[str, str]:
    """Exact versions of every package installed in ``root`` (dpkg's database)."""
    out = proc.output(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n"]
    )
    versions = {}
    for line in out.splitlines():
        name, version, status = line.split("\t")
        if status.startswith("ii"):
            versions[name] = version
    return dict(sorted(versions.items()))


def build_package_tree(store: Store, vm: VMConfig) -> Path:
    """Build (or find) the mmdebstrap tree for ``vm``'s packages; return the entry (tree in ``rootfs/``)."""
    d = vm.guest.debian
    packages = package_list(vm)
    lock = read_lock(vm)
    generated = _generated_locale(vm.guest.locale)
    inputs = {
        "format": DEBIAN_FORMAT,
        "suite": d.suite,
        "variant": d.variant,
        "mirror": d.mirror,
        "components": d.components,
        "arch": vm.guest.arch,
        "packages": packages,
        "lock": lock,
        "locale": generated,
        "refresh": d.refresh,
    }
    name = f"debian-{d.suite}"
    if store.path_for(name, inputs).exists():
        return store.path_for(name, inputs)
    check_packages(store, vm, packages)
    mmdebstrap = proc.which("mmdebstrap", purpose='for guest.base = "debian"')

    def build(out: Path) -> None:
        rootfs = out / "rootfs"
        argv = [
            mmdebstrap,
            "--quiet",
            f"--variant={d.variant}",
            f"--architectures={_deb_arch(vm)}",
            f"--components={','.join(d.components)}",
            f"--include={','.join(packages)}",
            '--aptopt=APT::Install-Recommends "false"',
            *[f"--dpkgopt=path-exclude={p}" for p in PATH_EXCLUDES],
            # host keys are made per VM at first boot, never shared through the store
            '--customize-hook=rm -f "$1"/etc/ssh/ssh_host_*',
        ]
        if generated:
            localedef = shlex.join(["localedef", "-i", generated[0], "-c", "-f", generated[1], vm.guest.locale])
            argv.append(f'--customize-hook=chroot "$1" {localedef}')
        argv += [d.suite, rootfs, d.mirror]
        proc.run(argv, env={"SOURCE_DATE_EPOCH": "0"})
        versions = installed_versions(rootfs)
        drift = {n: (v, versions.get(n)) for n, v in lock.items() if versions.get(n) not in (None, v)}
        if drift:
            listing = ", ".join(f"{n} {got} (locked {want})" for n, (want, got) in sorted(drift.items()))
            raise MicrovmError(
                f"guest.debian.lock: the mirror installed other versions: {listing}",
                hint="use a snapshot.debian.org mirror from the lock's time, or refresh the lock from packages.json",
            )
        (out / "packages.json").write_text(json.dumps(versions, indent=1) + "\n")

    entry, _ = store.add(name, inputs, build)
    return entry


# --- the per-VM layer ------------------------------------------------------------


@dataclass
class Layer:
    """What the VM's declarations add to the package tree."""

    files: dict[str, tuple[bytes, int, int, int]] = field(default_factory=dict)  # path -> content, mode, uid, gid
    links: dict[str, str] = field(default_factory=dict)  # path -> symlink target
    dirs: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # path -> mode, uid, gid

    def text(self, path: str, content: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        self.files[path.lstrip("/")] = (content.encode(), mode, uid, gid)

    def enable(self, unit: str, target: str, source: str = SYSTEMD_LIB) -> None:
        """Enable ``unit`` the way ``systemctl enable`` would: a symlink in ``<target>.wants``."""
        self.links[f"etc/systemd/system/{target}.wants/{unit}"] = f"{source}/{unit}"

    def inputs(self) -> dict:
        return {
            "files": {p: [hashlib.sha256(c).hexdigest(), m, u, g] for p, (c, m, u, g) in self.files.items()},
            "links": self.links,
            "dirs": self.dirs,
        }


def _unit_value(text: str) -> str:
    """Quote ``text`` as one word of a systemd ExecStart= line (no specifier or variable expansion)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _unit_name(name: str, services: dict[str, Service]) -> str:
    return f"{name}.service" if name in services else name


def _service_units(vm: VMConfig, layer: Layer) -> None:
    services = vm.guest.services
    for name, service in services.items():
        after = " ".join(_unit_name(dep, services) for dep in service.after)
        unit = ["[Unit]", f"Description={service.description or name}"]
        if after:
            unit += [f"After={after}", f"Wants={after}"]
        unit += ["", "[Service]", f"Type={service.type}", f"ExecStart=/bin/sh -c {_unit_value(service.command)}"]
        if service.type == "oneshot":
            unit.append("RemainAfterExit=yes")
        if service.user:
            unit.append(f"User={service.user}")
        unit += [f"Environment={_unit_value(f'{k}={v}')}" for k, v in service.environment.items()]
        if service.restart:
            unit += ["Restart=always", "RestartSec=1"]
        unit += ["", "[Install]", "WantedBy=multi-user.target", ""]
        layer.text(f"etc/systemd/system/{name}.service", "\n".join(unit))
        if service.startAt is not None:
            timer = [
                "[Unit]",
                f"Description=Schedule of {name}",
                "",
                "[Timer]",
                f"OnCalendar={service.startAt}",
                "Persistent=true",
                "",
                "[Install]",
                "WantedBy=timers.target",
                "",
            ]
            layer.text(f"etc/systemd/system/{name}.timer", "\n".join(timer))
            if service.enable:
                layer.enable(f"{name}.timer", "timers.target", "/etc/systemd/system")
        elif service.enable:
            layer.enable(f"{name}.service", "multi-user.target", "/etc/systemd/system")


def _network(vm: VMConfig, layer: Layer) -> None:
    """systemd-networkd files for ``microvm.interfaces``, matched by MAC, settings from ``guest.network``."""
    network = vm.guest.network
    for iface in vm.microvm.interfaces:
        settings = network.interfaces.get(iface.id, InterfaceNetwork())
        lines = [
            "[Match]",
            f"MACAddress={iface.mac}",
            "",
            "[Network]",
            f"DHCP={'ipv4' if settings.dhcp else 'no'}",
            f"IPv6AcceptRA={'yes' if settings.acceptRA else 'no'}",
            *[f"Address={a}" for a in settings.addresses],
            *[f"DNS={ns}" for ns in network.nameservers],
        ]
        if network.nameservers:
            lines += ["", "[DHCPv4]", "UseDNS=no"]
        for route in settings.routes:
            lines += ["", "[Route]", f"Destination={route.destination}"]
            if route.gateway:
                lines.append(f"Gateway={route.gateway}")
        layer.text(f"etc/systemd/network/10-{iface.id}.network", "\n".join(lines) + "\n")
    # interfaces not declared (e.g. added by the host's network.base) use DHCP and SLAAC, as guest.network says
    layer.text(
        "etc/systemd/network/99-microvm-default.network",
        "[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\nIPv6AcceptRA=yes\n",
    )
    layer.enable("systemd-networkd.service", "multi-user.target")
    layer.enable("systemd-networkd.socket", "sockets.target")


def _firewall(vm: VMConfig, layer: Layer) -> None:
    fw = vm.guest.firewall
    if not fw.enable:
        return
    tcp = ", ".join(str(p) for p in sorted(set(fw.allowedTCPPorts)))
    udp = ", ".join(str(p) for p in sorted({68, 546, *fw.allowedUDPPorts}))  # DHCP replies
    rules = [
        "#!/usr/sbin/nft -f",
        "# generated by microvm from guest.firewall",
        "flush ruleset",
        "table inet filter {",
        "  chain input {",
        "    type filter hook input priority 0; policy drop;",
        "    ct state established,related accept",
        '    iifname "lo" accept',
        "    meta l4proto { 1, 58 } accept  # icmp, ipv6-icmp (the guest may lack /etc/protocols)",
        *([f"    tcp dport {{ {tcp} }} accept"] if tcp else []),
        f"    udp dport {{ {udp} }} accept",
        "  }",
        "}",
        "",
    ]
    layer.text("etc/nftables.conf", "\n".join(rules), 0o755)
    layer.enable("nftables.service", "sysinit.target")


class Accounts:
    """passwd/group/shadow of the package tree, with the declared users added."""

    def __init__(self, root: Path) -> None:
        self.passwd = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines() if line]
        self.group = [line.split(":") for line in (root / "etc/group").read_text().splitlines() if line]
        self.shadow = [line.split(":") for line in (root / "etc/shadow").read_text().splitlines() if line]

    def uid(self, user: str) -> int:
        for entry in self.passwd:
            if entry[0] == user:
                return int(entry[2])
        raise KeyError(user)

    def gid(self, group: str) -> int:
        for entry in self.group:
            if entry[0] == group:
                return int(entry[2])
        raise KeyError(group)

    def add(self, vm: VMConfig) -> dict[str, tuple[int, int, str]]:
        """Add or change the declared users; return name -> (uid, gid, home)."""
        used = {int(e[2]) for e in self.passwd} | {int(e[2]) for e in self.group}
        next_uid = FIRST_UID
        homes = {}
        for name, user in sorted(vm.guest.users.items()):
            existing = next((e for e in self.passwd if e[0] == name), None)
            if existing is not None:
                uid, gid = int(existing[2]), int(existing[3])
                home = user.home or existing[5]
                existing[4:7] = [user.description or existing[4], home, user.shell]
            else:
                uid = user.uid
                if uid is None:
                    while next_uid in used:
                        next_uid += 1
                    uid = next_uid
                if uid in used:
                    raise MicrovmError(f"guest.users.{name}.uid: {uid} is already a user or group id of the guest")
                gid = uid
                used |= {uid}
                home = user.home or f"/home/{name}"
                self.passwd.append([name, "x", str(uid), str(gid), user.description, home, user.shell])
                self.group.append([name, "x", str(gid), ""])
                # "*": no password login but not locked (keys work); no aging fields: never expires
                self.shadow.append([name, "*", "", "", "", "", "", "", ""])
            for entry in self.shadow:
                if entry[0] == name and user.hashedPassword is not None:
                    entry[1] = user.hashedPassword
            for group in user.groups:
                entry = next((e for e in self.group if e[0] == group), None)
                if entry is None:
                    raise MicrovmError(
                        f"guest.users.{name}.groups: the guest has no group {group!r}",
                        hint=f"groups of this guest: {', '.join(sorted(e[0] for e in self.group))}",
                    )
                members = [m for m in entry[3].split(",") if m]
                entry[3] = ",".join(dict.fromkeys([*members, name]))
            homes[name] = (uid, gid, home)
        return homes

    def write(self, layer: Layer) -> None:
        shadow_gid = self.gid("shadow")
        layer.text("etc/passwd", "".join(":".join(e) + "\n" for e in self.passwd))
        layer.text("etc/group", "".join(":".join(e) + "\n" for e in self.group))
        layer.text("etc/shadow", "".join(":".join(e) + "\n" for e in self.shadow), 0o640, 0, shadow_gid)


def _users(vm: VMConfig, tree: Path, layer: Layer) -> Accounts:
    accounts = Accounts(tree)
    for name, (uid, gid, home) in accounts.add(vm).items():
        user = vm.guest.users[name]
        layer.dirs[home.lstrip("/")] = (0o700, uid, gid)
        if user.authorizedKeys:
            layer.dirs[f"{home.lstrip('/')}/.ssh"] = (0o700, uid, gid)
            keys = "".join(key.strip() + "\n" for key in user.authorizedKeys)
            layer.text(f"{home}/.ssh/authorized_keys", keys, 0o600, uid, gid)
    accounts.write(layer)
    return accounts


def _files(vm: VMConfig, accounts: Accounts, layer: Layer) -> None:
    for target, spec in vm.guest.files.items():
        try:
            uid = accounts.uid(spec.user)
        except KeyError:
            raise MicrovmError(f'guest.files."{target}".user: the guest has no user {spec.user!r}') from None
        try:
            gid = accounts.gid(spec.group)
        except KeyError:
            raise MicrovmError(f'guest.files."{target}".group: the guest has no group {spec.group!r}') from None
        if spec.source is not None:
            source = Path(spec.source)
            if not source.is_file():
                raise MicrovmError(f'guest.files."{target}".source: {source} does not exist or is not a file')
            content = source.read_bytes()
        else:
            content = (spec.text or "").encode()
        layer.files[target.lstrip("/")] = (content, int(spec.mode, 8), uid, gid)


def _system_settings(vm: VMConfig, tree: Path, versions: dict[str, str], layer: Layer) -> None:
    guest = vm.guest
    zone = tree / "usr/share/zoneinfo" / guest.timeZone
    if guest.timeZone != "UTC" and not zone.is_file():
        raise MicrovmError(
            f"guest.timeZone: {guest.timeZone!r} is not a time zone of the guest",
            hint="a name from the tz database like Europe/Berlin (needs the tzdata package)",
        )
    if zone.is_file():
        layer.links["etc/localtime"] = f"/usr/share/zoneinfo/{guest.timeZone}"
    layer.text("etc/timezone", guest.timeZone + "\n")
    layer.text("etc/default/locale", f"LANG={guest.locale}\n")
    layer.text("etc/locale.conf", f"LANG={guest.locale}\n")
    layer.text("etc/fstab", "# the initrd mounts the system, volumes and shares (see microvm.volumes/shares)\n")
    if guest.shell:
        layer.text(
            "etc/systemd/system/serial-getty@.service.d/autologin.conf",
            "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 - $TERM\n",
        )
    if "openssh-server" in versions:
        # the package tree has no host keys (they would be shared by every VM): make them at boot
        layer.text(
            "etc/systemd/system/microvm-ssh-host-keys.service",
            "[Unit]\nDescription=Create the SSH host key\nBefore=ssh.service\n"
            "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n"
            # only ed25519: an RSA key takes many seconds under emulation
            "[Service]\nType=oneshot\n"
            "ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key\n\n"
            "[Install]\nWantedBy=multi-user.target\n",
        )
        layer.enable("microvm-ssh-host-keys.service", "multi-user.target", "/etc/systemd/system")
        layer.enable("microvm-ssh-host-keys.service", "ssh.service", "/etc/systemd/system")
    if vm.microvm.vsock.ssh.enable:
        _vsock_ssh(layer)
    if vm.microvm.readiness:
        layer.text(READY_SCRIPT_PATH, READY_SCRIPT, mode=0o755)
        layer.text("etc/systemd/system/microvm-ready.service", READY_UNIT)
        layer.enable("microvm-ready.service", "multi-user.target", "/etc/systemd/system")
    if vm.microvm.optimize.enable:
        for unit in OPTIMIZE_MASK:
            layer.links[f"etc/systemd/system/{unit}"] = "/dev/null"
    layer.text(PACKAGES_FILE, json.dumps(versions, indent=1) + "\n")


# microvm.vsock.ssh: sshd on vsock port 22, one sshd -i per connection (what systemd-ssh-generator,
# systemd 256 and later, sets up by itself; bookworm has 252)
VSOCK_SSH_SOCKET = """[Unit]
Description=OpenSSH server on vsock port 22 (microvm ssh)
Wants=microvm-ssh-host-keys.service
After=microvm-ssh-host-keys.service

[Socket]
ListenStream=vsock::22
Accept=yes

[Install]
WantedBy=sockets.target
"""
VSOCK_SSH_SERVICE = """[Unit]
Description=OpenSSH connection over vsock

[Service]
ExecStart=-/usr/sbin/sshd -i
StandardInput=socket
RuntimeDirectory=sshd
RuntimeDirectoryPreserve=yes
"""


def _vsock_ssh(layer: Layer) -> None:
    layer.text("etc/systemd/system/sshd-vsock.socket", VSOCK_SSH_SOCKET)
    layer.text("etc/systemd/system/sshd-vsock@.service", VSOCK_SSH_SERVICE)
    layer.enable("sshd-vsock.socket", "sockets.target", "/etc/systemd/system")


def _guest_modules(vm: VMConfig, hypervisor: Hypervisor, kernel: KernelEntry) -> list[str]:
    """Module files (relative to the modules dir) the guest may load after boot: its devices, nftables, extras."""
    if kernel.modules_dir is None:
        return []
    index = ModuleIndex.load(kernel.modules_dir)
    names = [*needed_modules(vm, hypervisor), "autofs4"]  # systemd mounts automount points with it
    if vm.guest.firewall.enable:
        names += [name for name, rel in index.files.items() if rel.startswith(NETFILTER_DIRS)]
    return index.resolve(names)


def build_debian_system(store: Store, vm: VMConfig, hypervisor: Hypervisor, kernel: KernelEntry) -> Path:
    """Build (or find) the Debian system tree of ``vm``; return its store entry (the tree itself)."""
    base = build_package_tree(store, vm)
    tree = base / "rootfs"
    versions = json.loads((base / "packages.json").read_text())
    layer = Layer()
    accounts = _users(vm, tree, layer)
    _files(vm, accounts, layer)
    _service_units(vm, layer)
    _network(vm, layer)
    _firewall(vm, layer)
    _system_settings(vm, tree, versions, layer)
    modules = _guest_modules(vm, hypervisor, kernel)
    inputs = {
        "format": LAYER_FORMAT,
        "base": str(base),
        "layer": layer.inputs(),
        "kernel": str(kernel.path),
        "modules": modules,
    }

    def build(out: Path) -> None:
        # the tree keeps its owners and modes (the store took them from the package tree: give them back);
        # copy into the (empty, private) temporary entry
        proc.run(["cp", "-a", "--reflink=auto", f"{tree}/.", out])
        out.chmod(0o700)  # cp gave it the tree's 0755: keep it unreachable while it has the guest's modes
        restore(out, store.permissions(base), under="rootfs/")
        for rel, (mode, uid, gid) in sorted(layer.dirs.items()):
            path = _in_tree(out, rel, rel)
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, uid, gid)
            path.chmod(mode)
        for rel, (content, mode, uid, gid) in layer.files.items():
            path = _in_tree(out, rel, str(Path(rel).parent))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.write_bytes(content)
            os.chown(path, uid, gid)
            path.chmod(mode)
        for rel, target in layer.links.items():
            path = _in_tree(out, rel, str(Path(rel).parent))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.symlink_to(target)
        if modules and kernel.modules_dir is not None:
            _install_modules(kernel.modules_dir, modules, out)

    entry, _ = store.add(f"system-{vm.guest.hostName}", inputs, build, references=(base, kernel.path), private=True)
    return entry


def _in_tree(root: Path, rel: str, through: str) -> Path:
    """``root/rel``, refused if the symlinks on the way to ``through`` (``rel`` or its directory) lead out
    of the tree: the package tree has absolute ones (/var/run -> /run) that would reach the host's own files."""
    if not (root / through).resolve().is_relative_to(root.resolve()):
        raise MicrovmError(
            f"/{rel}: /{through} is a symlink in the guest that leads out of the system tree",
            hint="declare the file where the guest's symlink points to",
        )
    return root / rel


def _install_modules(modules_dir: Path, modules: list[str], root: Path) -> None:
    """Copy ``modules`` with the kernel's index files into the tree, then depmod (so modprobe works there)."""
    target = root / "usr/lib/modules" / modules_dir.name
    for rel in modules:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(modules_dir / rel, target / rel)
    for index in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (modules_dir / index).exists():
            shutil.copy2(modules_dir / index, target / index)
    proc.run([proc.which("depmod", purpose="for the guest's modules"), "-b", root / "usr", modules_dir.name])


def guest_packages(system: Path) -> dict[str, str] | None:
    """The recorded package versions of a system tree (None for a base without packages)."""
    path = system / PACKAGES_FILE
    return json.loads(path.read_text()) if path.exists() else None


__all__ = [
    "PACKAGES_FILE",
    "build_debian_system",
    "build_package_tree",
    "check_packages",
    "guest_packages",
    "installed_versions",
    "package_list",
    "read_lock",
]
