"""The systemd units that run installed VMs (microvm.nix's host module, as unit files).

- ``microvm@.service``: runs ``<stateDir>/%i/current/bin/microvm-run`` as user
  ``microvm`` (group ``kvm``, and ``microvm`` to read the private store entries) in the VM's state directory (Type=notify with
  ``host.useNotifySockets``: ready when the guest says so, see microvm.runner.ready);
  sets ``booted`` before it starts and removes it after it stopped; stops with
  ``booted/bin/microvm-shutdown``, which asks the guest to power off and returns
  only once the hypervisor exited (the original returns at once, so systemd kills
  the guest mid-shutdown). A runner with ``bin/microvm-register``
  (``microvm.registerWithMachined``) is registered with systemd-machined while it runs.
- ``microvm-{tap,macvtap}-interfaces@``, ``microvm-pci-devices@``,
  ``microvm-virtiofsd@``: what the VM needs before it starts, each conditioned on
  the runner declaring it, part of the VM's unit.
- ``install-microvm-<name>.service``: puts a declared VM in place before it starts.
- ``microvm@<name>.service.d/{overrides,credentials}.conf``: the host file's ``unitOverrides`` and
  ``LoadCredential=`` for the VM's ``credentialFiles``.
- ``microvms.target``: wants the autostarted VMs; enabled for multi-user.target.
- ``microvm-web.service``: `microvm web`, when the host file enables ``microvm.web``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import proc
from ..errors import MicrovmError
from ..layout import HYPERVISOR_GROUP, HYPERVISOR_USER, PCI_DEVICES, SHARE, VIRTIOFS, helper_argv
from ..store import PRIVATE_GROUP
from .unitfile import HEADER, command, environment, escape, render

if TYPE_CHECKING:
    from ..model.options import DeclaredVM, VMConfig, WebOptions

USER, GROUP = HYPERVISOR_USER, HYPERVISOR_GROUP
TARGET = "microvms.target"
# Drop-ins of microvm@NAME written from the host file (install.conf is the installation's).
OVERRIDES_DROPIN, CREDENTIALS_DROPIN = "overrides.conf", "credentials.conf"
NEEDS = ("microvm-tap-interfaces@%i.service", "microvm-macvtap-interfaces@%i.service",
         "microvm-pci-devices@%i.service", "microvm-virtiofsd@%i.service")  # fmt: skip


def _vm_dir(state_dir: Path) -> str:
    """``<stateDir>/%i`` for unit files (paths there cannot be quoted everywhere, so no blanks).

    ``$`` is refused too: ``Exec*`` lines expand it and ``WorkingDirectory=`` does not, so no escape suits both.
    """
    text = str(state_dir)
    if any(c.isspace() or c in "'\"\\$" for c in text):
        raise MicrovmError(f"microvm.stateDir {text!r}: systemd units need a path without blanks, quotes or $")
    return escape(text) + "/%i"


def vm_service(state_dir: Path, notify: bool = False, timeout: int = 150) -> str:
    """``microvm@.service``; ``notify`` (host.useNotifySockets): started once the VM says it is ready;
    ``timeout`` (host.startupTimeout): seconds to start and to stop.

    The runner sends that from a helper process (see microvm.runner.ready), hence NotifyAccess=all.
    """
    vm = _vm_dir(state_dir)
    booted_link = 'ln -sfn "$(readlink current)" .booted.tmp && mv -T .booted.tmp booted'
    return render(
        {
            "Unit": [
                ("Description", "MicroVM '%i'"),
                ("Requires", " ".join(NEEDS)),
                # machined: registered VMs are unregistered before it stops
                ("After", "network.target systemd-machined.service " + " ".join(NEEDS)),
                ("ConditionPathExists", f"{vm}/current/bin/microvm-run"),
                ("StartLimitIntervalSec", "0"),
            ],
            "Service": [
                *([("Type", "notify"), ("NotifyAccess", "all")] if notify else [("Type", "simple")]),
                ("User", USER),
                ("Group", GROUP),
                ("SupplementaryGroups", PRIVATE_GROUP),  # reads the private store entries (root images)
                ("WorkingDirectory", f"{vm}"),
                ("ExecStartPre", command(proc.which("sh"), "-c", booted_link)),
                ("ExecStart", f"{vm}/current/bin/microvm-run"),
                # '+': machined takes registrations from root only; '-': a VM whose registration
                # failed (no machined) still runs, the journal says why
                ("ExecStartPost", "-+" + _if_runner_has(f"{vm}/booted/bin/microvm-register", '"$$MAINPID"')),
                # '-': hypervisors without a control socket have no microvm-shutdown; a guest
                # that powered off by itself leaves nothing to shut down
                ("ExecStop", f"-{vm}/booted/bin/microvm-shutdown"),
                ("ExecStopPost", "-+" + _if_runner_has(f"{vm}/booted/bin/microvm-unregister")),
                ("ExecStopPost", f"{proc.which('rm')} -f {vm}/booted"),
                ("Restart", "always"),
                ("RestartSec", "1"),
                ("TimeoutSec", str(timeout)),
                ("LimitMEMLOCK", "infinity"),
                ("LimitNOFILE", "1048576"),
                *((key, value.format(vm=vm)) for key, value in HYPERVISOR_HARDENING),
            ],
        }
    )


def _if_runner_has(script: str, *args: str) -> str:
    """An Exec line running ``script`` (``<stateDir>/%i/...``, already escaped: no blanks or quotes, see
    _vm_dir) if the runner has it; ``args`` are shell words (``"$$MAINPID"``: systemd makes ``$$`` a ``$``)."""
    run = " ".join([script, *args])
    return f"{proc.which('sh')} -c 'if [ -x {script} ]; then exec {run}; fi'"


ONESHOT = [("Type", "oneshot"), ("RemainAfterExit", "yes")]

# What every unit of ours does without: no privilege gains, no kernel or clock changes, a private /tmp.
BASE_HARDENING = [
    ("NoNewPrivileges", "yes"),
    ("PrivateTmp", "yes"),
    ("ProtectHome", "read-only"),  # the store may be under a home directory (a user's own store)
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("LockPersonality", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("SystemCallArchitectures", "native"),
]
# The hypervisor: unprivileged, everything read-only but the VM's state directory, only the devices a VM
# uses (kvm, taps, vhost, macvtaps, vfio, USB). No MemoryDenyWriteExecute: TCG writes the code it runs.
HYPERVISOR_HARDENING = [
    *BASE_HARDENING,
    ("CapabilityBoundingSet", ""),
    ("ProtectSystem", "strict"),
    ("ReadWritePaths", "{vm}"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectProc", "invisible"),
    ("RestrictNamespaces", "yes"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ("SystemCallFilter", "@system-service seccomp"),  # seccomp: qemu -sandbox on adds its own filter
    ("SystemCallErrorNumber", "EPERM"),
    ("KeyringMode", "private"),
    ("UMask", "0077"),
    ("DevicePolicy", "closed"),
    *(
        ("DeviceAllow", f"{device} rw")
        for device in ("/dev/kvm", "/dev/net/tun", "/dev/vhost-net", "/dev/vhost-vsock")
        + ("char-macvtap", "char-vfio", "char-usb_device")
    ),
]
# Tap helpers: root, but only with the network and the ownership of the devices they hand over.
# (virtiofsd and PCI set-up keep their defaults: they mount, serve any path, write to sysfs.)
TAP_HARDENING = [
    *BASE_HARDENING,
    ("CapabilityBoundingSet", "CAP_NET_ADMIN CAP_NET_RAW CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH"),
    ("ProtectSystem", "full"),
    ("RestrictAddressFamilies", "AF_UNIX AF_NETLINK AF_INET AF_INET6"),
]


def _needed_unit(
    state_dir: Path, what: str, condition: str, service: list[tuple[str, str]], after: str | None = None
) -> str:
    """A unit the VM's unit requires; ``{vm}`` in ``service`` values is the VM's state directory."""
    vm = _vm_dir(state_dir)
    return render(
        {
            "Unit": [
                ("Description", f"{what} of MicroVM '%i'"),
                *([("After", after)] if after else []),
                ("Before", "microvm@%i.service"),
                ("PartOf", "microvm@%i.service"),
                ("ConditionPathExists", f"{vm}/current/{condition}"),
            ],
            "Service": [("WorkingDirectory", vm), *((key, value.format(vm=vm)) for key, value in service)],
        }
    )


def interfaces_service(state_dir: Path, kind: str) -> str:
    """``microvm-tap-interfaces@`` / ``microvm-macvtap-interfaces@``: the runner's bin/<kind>-up and -down."""
    return _needed_unit(
        state_dir,
        f"{kind} interfaces",
        f"{SHARE}/{kind}-interfaces",
        [
            *ONESHOT,
            ("ExecStart", f"{{vm}}/current/bin/{kind}-up"),
            ("ExecStop", f"{{vm}}/current/bin/{kind}-down"),
            *TAP_HARDENING,
        ],
        after="microvm-network.service",  # the bridge the taps join, restored at boot
    )


def pci_service(state_dir: Path) -> str:
    return _needed_unit(
        state_dir,
        "PCI passthrough devices",
        PCI_DEVICES,
        [*ONESHOT, ("ExecStart", "{vm}/current/bin/pci-setup")],
    )


def virtiofsd_service(state_dir: Path) -> str:
    """One virtiofsd per virtiofs share, supervised together; ready once every socket exists."""
    return _needed_unit(
        state_dir,
        "virtiofs daemons",
        VIRTIOFS,
        [
            ("Type", "notify"),
            ("ExecStart", command(*helper_argv("virtiofsd")) + " {vm}"),
            # virtiofsd exits when the hypervisor disconnects: be back for its restart
            ("Restart", "always"),
            ("RestartSec", "100ms"),
        ],
    )


def _where(state_dir: Path, store: Path) -> str:
    """``Environment=`` for a unit that runs the ``microvm`` command: the host's state directory and store."""
    return environment({"MICROVM_STATE_DIR": str(state_dir), "MICROVM_STORE": str(store)})


def install_service(name: str, state_dir: Path, store: Path, how: list[str]) -> str:
    """``install-microvm-<name>.service``: the ``install`` helper with ``how`` (see install.py)."""
    return render(
        {
            "Unit": [
                ("Description", f"Install MicroVM '{name}'"),
                ("Before", " ".join(u.replace("%i", name) for u in ("microvm@%i.service", *NEEDS))),
                ("PartOf", f"microvm@{name}.service"),
            ],
            "Service": [
                *ONESHOT,
                ("Environment", _where(state_dir, store)),
                (
                    "ExecStart",
                    command(*helper_argv("install", name, *how, f"--owner={USER}:{GROUP}")),
                ),
            ],
        }
    )


def install_dropin(name: str) -> str:
    """``microvm@<name>.service.d/install.conf``: the VM starts only once installed."""
    unit = f"install-microvm-{name}.service"
    return render({"Unit": [("Requires", unit), ("After", unit)]})


WEB = "microvm-web.service"
WEB_TOKEN = Path("/run/microvm/web.token")  # the address with the token, when it listens on a TCP port


def web_service(web: WebOptions, state_dir: Path, store: Path) -> str:
    """``microvm-web.service``: `microvm web` as the host file says, as root (it starts and stops VM units).

    Not ProtectHome: `update` builds into the store, which may be under a home directory; not PrivateTmp:
    its socket may be under /tmp.
    """
    tls = ["--tls-cert", web.tlsCertificate, "--tls-key", web.tlsKey] if web.tlsCertificate and web.tlsKey else []
    argv = ["-m", "microvm", "web", "--listen", web.listen, "--group", web.group, "--token-file", str(WEB_TOKEN)]
    return render(
        {
            "Unit": [("Description", "microvm web page"), ("After", "network.target")],
            "Service": [
                ("Type", "simple"),
                ("Environment", _where(state_dir, store)),
                ("ExecStart", command(sys.executable, *argv, *tls)),
                ("Restart", "on-failure"),
                *(h for h in BASE_HARDENING if h[0] not in ("ProtectHome", "PrivateTmp")),
            ],
            "Install": [("WantedBy", "multi-user.target")],
        }
    )


def cluster_dropin(shared_storage: str | None) -> str:
    """``microvm@<name>.service.d/zz-cluster.conf`` of a cluster VM: Pacemaker, not systemd, restarts it, and its
    hypervisor writes its volumes on the shared storage (the unit lets it write only its state directory)."""
    writable = [("ReadWritePaths", escape(shared_storage, variables=False))] if shared_storage else []
    return render({"Service": [("Restart", "no"), *writable]})


def ocf_agent(state_dir: Path, store: Path) -> str:
    """The resource agent ``ocf:microvm:vm``: this installation's helper, with the host's state directory and
    store (Pacemaker runs agents with an almost empty environment). Migrations ssh to the other node's
    ``microvm``: the same installation there, with the same host file."""
    where = {"MICROVM_STATE_DIR": str(state_dir), "MICROVM_STORE": str(store)}
    remote = shlex.join(["env", *(f"{k}={v}" for k, v in where.items()), sys.executable, "-m", "microvm"])
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in {**where, "MICROVM_REMOTE_COMMAND": remote}.items())
    helper = shlex.join(helper_argv("ocf-agent"))
    path = 'export PATH="${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}"\n'  # systemctl, ssh
    return f'#!/bin/sh\n{HEADER}{path}{exports}exec {helper} "$@"\n'


def vm_dropins(name: str, declared: DeclaredVM, vm: VMConfig | None, state_dir: Path) -> dict[str, str]:
    """Drop-ins of ``microvm@<name>`` from the host file: its ``unitOverrides``, and ``LoadCredential=`` for
    the ``credentialFiles`` of a fully declared VM (systemd reads them as root; the runner, unprivileged, gets
    copies in ``$CREDENTIALS_DIRECTORY``)."""
    found = {}
    if declared.unitOverrides:
        sections = {
            section: [
                (key, v) for key, value in settings.items() for v in ([value] if isinstance(value, str) else value)
            ]
            for section, settings in declared.unitOverrides.items()
        }
        found[f"microvm@{name}.service.d/{OVERRIDES_DROPIN}"] = render(sections)
    if vm is not None and vm.microvm.credentialFiles:
        load = [
            ("LoadCredential", escape(f"{credential}:{state_dir / name / path}", variables=False))  # absolute: kept
            for credential, path in vm.microvm.credentialFiles.items()
        ]
        found[f"microvm@{name}.service.d/{CREDENTIALS_DROPIN}"] = render({"Service": load})
    return found


def target(autostart: list[str]) -> str:
    wants = [("Wants", " ".join(f"microvm@{n}.service" for n in autostart))] if autostart else []
    return render(
        {"Unit": [("Description", "MicroVMs started at boot"), *wants], "Install": [("WantedBy", "multi-user.target")]}
    )


def all_units(
    state_dir: Path,
    store: Path,
    autostart: list[str],
    installs: dict[str, list[str]],
    notify: bool = False,
    timeout: int = 150,
) -> dict[str, str]:
    """Every unit file (path relative to the unit directory -> content) for a host."""
    units = {
        "microvm@.service": vm_service(state_dir, notify, timeout),
        "microvm-tap-interfaces@.service": interfaces_service(state_dir, "tap"),
        "microvm-macvtap-interfaces@.service": interfaces_service(state_dir, "macvtap"),
        "microvm-pci-devices@.service": pci_service(state_dir),
        "microvm-virtiofsd@.service": virtiofsd_service(state_dir),
        TARGET: target(autostart),
    }
    for name, how in installs.items():
        units[f"install-microvm-{name}.service"] = install_service(name, state_dir, store, how)
        units[f"microvm@{name}.service.d/install.conf"] = install_dropin(name)
    return units
