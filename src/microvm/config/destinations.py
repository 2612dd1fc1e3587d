"""Checks of values against where they end up: sockets, file names, command lines, the kernel command line,
unit files and scripts.

The option model checks each value alone; a value can still be wrong for the
program it is handed to (a socket path longer than ``sun_path``, a newline
that starts another unit file directive). Commas inside a hypervisor's
``key=value,...`` arguments are its backend's check (``Hypervisor.plain_options``). These rules run at ``microvm check`` time, so such a value is an
error naming the file and the option instead of a failure at boot.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..hypervisors import Feature, get, separators
from ..layout import SYSTEM_STATE_DIR, VM_NAME_MAX
from ..model.options import HostConfig, VMConfig
from ..model.problems import OptionPath, Problem

SOCKET_PATH_MAX = 107  # AF_UNIX: sun_path is 108 bytes with the final NUL
FILE_NAME_MAX = 255  # bytes of one path component (NAME_MAX)
PATH_MAX = 4095  # bytes of a whole path, without the final NUL
COMMAND_LINE_SIZE = 2048  # the kernel's command line buffer on x86_64 and arm64, with the final NUL
# What microvm puts before microvm.kernelParams besides the hypervisor's own parameters (console=, panic=,
# the optimize ones): generously counted, so a command line that passes here fits the kernel's buffer.
OWN_KERNEL_PARAMS = 128

# Option paths (ints and dict keys as "*") whose text may span lines: scripts and file contents.
MULTILINE = {
    ("guest", "commands", "*"),
    ("guest", "services", "*", "command"),
    ("guest", "files", "*", "text"),
    ("microvm", "preStart"),
    ("microvm", "binScripts", "*"),
    ("microvm", "host", "tapScript"),
}
# Passed on as JSON, which escapes what it must.
OPAQUE = {("microvm", "firecracker", "extraConfig")}
# Control characters and line breaks a one-line value must not hold (a tab is fine).
BREAKING = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")

KERNEL_PARAM = re.compile(r'[^\s"=]+(=("[^"]*"|[^\s"]*))?')
PCI_ADDRESS = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7]")
USB_ID = re.compile(r"vendorid=0x[0-9a-fA-F]{4},productid=0x[0-9a-fA-F]{4}|hostbus=[0-9]+,hostaddr=[0-9]+")
DEB_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?(=[A-Za-z0-9.+~:-]+)?")
KERNEL_MODULE = re.compile(r"[A-Za-z0-9_-]+")
FS_TYPE = re.compile(r"[a-z0-9]+")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _pattern(path: OptionPath) -> tuple[str | int, ...]:
    return tuple("*" if isinstance(part, int) else part for part in path)


def _matches(path: OptionPath, patterns: set[tuple[str, ...]]) -> bool:
    """``path`` (or an enclosing option) is one of ``patterns``; a ``*`` stands for any key or index."""
    parts = _pattern(path)
    return any(
        len(parts) >= len(p) and all(q in ("*", part) for q, part in zip(p, parts, strict=False)) for p in patterns
    )


def _strings(data: Any, path: OptionPath = ()) -> Iterator[tuple[OptionPath, str]]:
    """Every string in ``data`` (table keys too, at the key's path), with its option path."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*path, key), key
            yield from _strings(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _strings(value, (*path, index))
    elif isinstance(data, str):
        yield path, data


def text_problems(data: dict[str, Any]) -> Iterator[Problem]:
    """No NUL anywhere (no program takes it); no control character or line break in a one-line value."""
    for path, text in _strings(data):
        found = BREAKING.search(text)  # a NUL is one of these too
        if found is None or _matches(path, OPAQUE):
            continue  # the common case first: where a harmless value goes need not be looked up (`check --host`)
        if "\0" in text:
            yield Problem(path, "contains a NUL character, which no file name, argument or file line can hold")
        elif not _matches(path, MULTILINE):
            yield Problem(
                path,
                f"contains the control character {found.group()!r}; it would break the line it is written to "
                "(a unit file, a script, a command line)",
            )


def _file_name(path: OptionPath, value: str, what: str) -> Iterator[Problem]:
    raw = value.encode()
    if len(raw) > PATH_MAX:
        yield Problem(path, f"{what} is {len(raw)} bytes long; paths have at most {PATH_MAX}")
    elif long := [part for part in raw.split(b"/") if len(part) > FILE_NAME_MAX]:
        yield Problem(path, f"{what} has a name of {len(long[0])} bytes; file names have at most {FILE_NAME_MAX} bytes")


def _socket(path: OptionPath, vm_dir: Path, name: str, what: str, connected: bool) -> Iterator[Problem]:
    """The hypervisor binds ``name`` in the state directory (its working directory): that must fit.

    The host connects to ``connected`` sockets by their full path (``microvm console``, a graceful
    shutdown from ``microvm run``, ``list``): when that does not fit, those fail, the VM still runs.
    """
    full = vm_dir / name
    if (size := len(name.encode())) > SOCKET_PATH_MAX:
        yield Problem(path, f"the {what} {name} is {size} bytes long; unix socket paths have at most {SOCKET_PATH_MAX}")
    elif connected and (size := len(bytes(full))) > SOCKET_PATH_MAX:
        yield Problem(
            path,
            f"the {what} {full} is {size} bytes long, more than a unix socket path's {SOCKET_PATH_MAX}: "
            "the host cannot connect to it (microvm console, a graceful stop from microvm run, list)",
            "warning",
            hint="use a shorter microvm.stateDir (or MICROVM_STATE_DIR), VM name or socket name",
        )


def _sockets(vm: VMConfig, vm_dir: Path) -> Iterator[Problem]:
    """Every unix socket of the VM, in ``vm_dir``: ``<stateDir>/<name>``."""
    mv = vm.microvm
    backend = get(mv.hypervisor)
    if (console := backend.console_socket(vm)) is not None:
        yield from _socket(("guest", "hostName"), vm_dir, console[0], "console socket", connected=True)
    if mv.socket is not None and backend.supports(Feature.CONTROL_SOCKET):
        yield from _socket(("microvm", "socket"), vm_dir, mv.socket, "control socket", connected=True)
    for i, share in enumerate(mv.shares):
        if share.proto == "virtiofs" and share.socket is not None:
            yield from _socket(("microvm", "shares", i, "socket"), vm_dir, share.socket, "virtiofs socket", False)


def _files(vm: VMConfig) -> Iterator[Problem]:
    mv, guest = vm.microvm, vm.guest
    # commas in values are the backend's business (qemu escapes them, others refuse: plain_options); a key
    # cannot be escaped
    for key in mv.qemu.machineOpts or {}:
        if bad := separators(key, ",="):
            yield Problem(
                ("microvm", "qemu", "machineOpts", key),
                f"the key {key!r} contains {' and '.join(map(repr, bad))}, which separate qemu's machine options",
                hint="write each machine option as its own key",
            )
    named: list[tuple[OptionPath, str, str]] = [
        *((("microvm", "volumes", i, "image"), v.image, "the image") for i, v in enumerate(mv.volumes)),
        *((("microvm", "shares", i, "source"), s.source, "the directory") for i, s in enumerate(mv.shares)),
        *((("guest", "files", target), target, "the guest path") for target in guest.files),
        *((("guest", "services", name), f"{name}.service", "the unit file") for name in guest.services),
        *((("microvm", "binScripts", name), name, "the script") for name in mv.binScripts),
    ]
    for path, value, what in named:
        yield from _file_name(path, value, what)


def _kernel_command_line(vm: VMConfig) -> Iterator[Problem]:
    params = vm.microvm.kernelParams
    for i, param in enumerate(params):
        if not KERNEL_PARAM.fullmatch(param):
            yield Problem(
                ("microvm", "kernelParams", i),
                f"{param!r} is not one kernel parameter: the kernel splits its command line at blanks "
                "and takes quotes only around a whole value",
                hint='one parameter per item: "name", "name=value" or \'name="a value with blanks"\'',
            )
    theirs = " ".join(get(vm.microvm.hypervisor).kernel_params(vm, "tcg"))
    room = COMMAND_LINE_SIZE - 1 - OWN_KERNEL_PARAMS - len(theirs.encode())
    if (used := len(" ".join(params).encode())) > room:
        yield Problem(
            ("microvm", "kernelParams"),
            f"takes {used} bytes of the kernel command line; {room} are left of its {COMMAND_LINE_SIZE}",
        )


def _forwards(vm: VMConfig) -> Iterator[Problem]:
    """qemu's hostfwd/guestfwd take IPv4 addresses between colons; two forwards cannot bind one host port."""
    bound: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for i, forward in enumerate(vm.microvm.forwardPorts):
        for side in ("host", "guest"):
            address = getattr(forward, side).address
            try:
                valid = address == "" or ipaddress.ip_address(address).version == 4
            except ValueError:
                valid = False
            if not valid:
                yield Problem(
                    ("microvm", "forwardPorts", i, side, "address"),
                    f"{address!r} is not an IPv4 address; qemu forwards take an IPv4 address or none",
                )
        if forward.from_ != "host":
            continue
        key, address = (forward.proto, forward.host.port), forward.host.address
        for other, taken in bound.get(key, []):
            if "" in (taken, address) or taken == address:  # "" binds every address
                yield Problem(
                    ("microvm", "forwardPorts", i, "host", "port"),
                    f"{forward.proto} port {forward.host.port} is already bound by microvm.forwardPorts[{other}]",
                )
                break
        bound.setdefault(key, []).append((i, address))


def _devices(vm: VMConfig) -> Iterator[Problem]:
    for i, device in enumerate(vm.microvm.devices):
        pattern, example = (
            (PCI_ADDRESS, "0000:01:00.0") if device.bus == "pci" else (USB_ID, "vendorid=0x1234,productid=0x5678")
        )
        if not pattern.fullmatch(device.path):
            yield Problem(
                ("microvm", "devices", i, "path"),
                f"{device.path!r} is not a {device.bus} device address like {example}",
            )


def _guest_system(vm: VMConfig) -> Iterator[Problem]:
    """What goes into the guest's unit files, /etc/passwd, sources.list, mkfs and module names."""
    guest, mv = vm.guest, vm.microvm
    for name, service in guest.services.items():
        # a multi-line command is fine: the unit's ExecStart= holds it as one word with C escapes
        for key in service.environment:
            if not ENV_NAME.fullmatch(key):
                yield Problem(
                    ("guest", "services", name, "environment", key),
                    f"{key!r} is not an environment variable name: letters, digits and '_', not starting with a digit",
                )
    for name, user in guest.users.items():
        for field in ("description", "home", "shell", "hashedPassword"):
            if ":" in (getattr(user, field) or ""):
                yield Problem(
                    ("guest", "users", name, field), "contains ':', which separates the fields of /etc/passwd"
                )
    if any(c.isspace() for c in guest.debian.mirror):
        yield Problem(("guest", "debian", "mirror"), "a mirror URL has no blanks (it is a word in sources.list)")
    packages = [(("guest", "packages", i), p) for i, p in enumerate(guest.packages)]
    if guest.kernel.package is not None:
        packages.append((("guest", "kernel", "package"), guest.kernel.package))
    for path, package in packages:
        if not DEB_PACKAGE.fullmatch(package):
            yield Problem(path, f"{package!r} is not a Debian package name (like nginx, or nginx=1.22.1-9)")
    for i, module in enumerate(guest.kernel.extraModules):
        if not KERNEL_MODULE.fullmatch(module):
            yield Problem(("guest", "kernel", "extraModules", i), f"{module!r} is not a kernel module name")
    for i, volume in enumerate(mv.volumes):
        if not FS_TYPE.fullmatch(volume.fsType):
            yield Problem(("microvm", "volumes", i, "fsType"), f"{volume.fsType!r} is not a filesystem type like ext4")
        if volume.label is not None and len(volume.label.encode()) > 16:
            yield Problem(("microvm", "volumes", i, "label"), "filesystem labels have at most 16 bytes")


def check_vm_destinations(vm: VMConfig, name: str, state_dir: Path | None) -> list[Problem]:
    """Every value of ``vm`` against where it goes; ``name`` is its directory in ``state_dir``
    (the caller knows it; by default the system's)."""
    state_dir = state_dir or SYSTEM_STATE_DIR
    return [
        *text_problems(vm.dump()),
        *_sockets(vm, state_dir / name),
        *_files(vm),
        *_kernel_command_line(vm),
        *_forwards(vm),
        *_devices(vm),
        *_guest_system(vm),
    ]


def check_host_destinations(host: HostConfig) -> list[Problem]:
    """The host file's values (its VMs are checked on their own) against where they go."""
    data = host.dump()
    for declared in data["microvm"]["vms"].values():
        declared.pop("config", None)
    problems = list(text_problems(data))
    state_dir = host.microvm.stateDir
    if any(c.isspace() or c in "'\"\\" for c in state_dir):
        problems.append(
            Problem(
                ("microvm", "stateDir"),
                "systemd units name it where it cannot be quoted: no blanks, quotes or backslashes",
            )
        )
    for name in host.microvm.vms:
        if len(name) > VM_NAME_MAX:
            problems.append(
                Problem(("microvm", "vms", name), f"a VM name has at most {VM_NAME_MAX} characters, not {len(name)}")
            )
    return problems
