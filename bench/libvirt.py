"""libvirt as a peer to measure against: a private libvirtd, direct-kernel-boot domains, all removed after.

A libvirtd that already runs (a host with systemd starts it on install) is used as it is.
Otherwise libvirtd and the virtlogd it logs through run as the benchmark's children inside a
network namespace of their own, so nothing they might do to networking reaches the host's, and
are stopped at the end (nothing is left running where nothing ran before). The domains
have no network interfaces and libvirt's default network is never started (the benchmark
refuses when it is set to autostart). Domains are written as a user writes them for direct
kernel boot; on the microvm machine libvirt 9 needs ``<controller type='usb' model='none'/>``,
``<memballoon model='none'/>``, ``<features><acpi/>`` and virtio-mmio addresses. Everything is
undefined and the daemons stopped when the ``with`` block ends, also on errors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self
from xml.sax.saxutils import escape, quoteattr

URI = "qemu:///system"
SOCKET = Path("/run/libvirt/libvirt-sock")
AUTOSTART = Path("/etc/libvirt/qemu/networks/autostart")
PIDS = Path("/run/libvirt/qemu")
SAVES = Path("/var/lib/libvirt/qemu/save")  # `virsh managedsave` writes <domain>.save here
MACHINES = ("microvm", "q35", "pc")


def unavailable() -> str | None:
    """Why libvirt cannot be measured here, or None."""
    for tool in ("libvirtd", "virtlogd", "virsh", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (`make bench` installs libvirt-daemon-system and virtinst)"
    if AUTOSTART.is_dir() and any(AUTOSTART.iterdir()):
        return f"a libvirt network is set to autostart ({AUTOSTART}); the benchmark never starts one"
    return None


VIRSH_TIMEOUT = 180  # libvirtd re-probing qemu's capabilities was seen to hang here


def _virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """virsh, failing (subprocess.SubprocessError) rather than waiting forever."""
    try:
        return subprocess.run(
            ["virsh", "-q", "-c", URI, *args], capture_output=True, text=True, check=check, timeout=VIRSH_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        if check:
            raise
        return subprocess.CompletedProcess(args, 124, "", "timeout")


def domain_xml(
    name: str,
    machine: str,
    kernel: Path,
    initrd: Path,
    disk: Path,
    cmdline: str,
    mem_mb: int,
    log: Path,
    volume: Path | None = None,
) -> str:
    """A direct-kernel-boot domain with one read-only virtio disk and the serial console in a file.

    ``volume``: a writable raw disk after it, uncached (libvirt live-migrates a domain only then)."""
    microvm = machine == "microvm"
    address = "\n      <address type='virtio-mmio'/>" if microvm else ""
    writable = (
        f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file={quoteattr(str(volume))}/>
      <target dev='vdb' bus='virtio'/>{address}
    </disk>"""
        if volume
        else ""
    )
    quirks = "\n    <controller type='usb' model='none'/>\n    <memballoon model='none'/>" if microvm else ""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{mem_mb}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel>
    <initrd>{escape(str(initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file={quoteattr(str(disk))}/>
      <target dev='vda' bus='virtio'/>
      <serial>microvm-root</serial>
      <readonly/>{address}
    </disk>{writable}
    <serial type='file'><source path={quoteattr(str(log))} append='off'/></serial>{quirks}
  </devices>
</domain>
"""


class Libvirt:
    """A private libvirtd for the ``with`` block; domains named ``microvm-bench-<machine>``."""

    def __init__(self) -> None:
        self.namespace = f"microvm-bench-{os.getpid()}"
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.own_namespace = False
        self.domains: list[str] = []
        self.files = Path(tempfile.mkdtemp(prefix="microvm-bench-libvirt-"))
        self.files.chmod(0o755)  # qemu runs as libvirt-qemu and must reach the copies below

    def __enter__(self) -> Self:
        if _virsh("version", check=False).returncode == 0:
            return self  # a running libvirtd: use it, start nothing
        try:
            subprocess.run(["ip", "netns", "add", self.namespace], check=True, capture_output=True)
            self.own_namespace = True
            log = (self.files / "daemons.log").open("wb")
            for daemon in ("virtlogd", "libvirtd"):
                argv = ["ip", "netns", "exec", self.namespace, daemon]
                self.daemons.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
            deadline = time.monotonic() + 60
            while _virsh("version", check=False).returncode != 0:
                if time.monotonic() > deadline or any(d.poll() is not None for d in self.daemons):
                    raise RuntimeError(f"libvirtd did not start; see {self.files / 'daemons.log'}")
                time.sleep(0.2)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.domains:
            _virsh("destroy", name, check=False)
            _virsh("undefine", name, check=False)
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        if self.own_namespace:
            subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)
        shutil.rmtree(self.files, ignore_errors=True)

    def copy(self, path: Path) -> Path:
        """A copy libvirt may relabel and chown (it does so to the files a domain uses)."""
        target = self.files / f"{path.parent.name}-{path.name}"  # the store entry's name: unique
        if not target.exists():
            shutil.copyfile(path, target)
            target.chmod(0o644)
        return target

    def define(
        self, machine: str, kernel: Path, initrd: Path, disk: Path, cmdline: str, mem_mb: int, guest: str = ""
    ) -> Domain:
        """Domain ``microvm-bench-<machine>`` (``-<guest>`` appended when the guest is not the example)."""
        name = f"microvm-bench-{machine}" + (f"-{guest}" if guest else "")
        log = self.files / f"{name}-console.log"
        xml = self.files / f"{name}.xml"
        parts = (self.copy(kernel), self.copy(initrd), self.copy(disk))
        xml.write_text(domain_xml(name, machine, *parts, cmdline, mem_mb, log))
        _virsh("define", str(xml))
        self.domains.append(name)
        return Domain(name, machine, log, xml.read_text())


class Domain:
    def __init__(self, name: str, machine: str, log: Path, xml: str) -> None:
        self.name, self.machine, self.log, self.xml = name, machine, log, xml

    def start(self) -> float:
        """``virsh start``; return how long the command took."""
        self.log.unlink(missing_ok=True)
        t0 = time.perf_counter()
        _virsh("start", self.name)
        return time.perf_counter() - t0

    def managedsave(self) -> None:
        """Save the running domain to disk and stop it; the next ``start`` restores it."""
        _virsh("managedsave", self.name)

    def destroy(self) -> None:
        _virsh("destroy", self.name, check=False)

    @property
    def saved(self) -> Path:
        return SAVES / f"{self.name}.save"

    def qemu_pid(self) -> int | None:
        try:
            return int((PIDS / f"{self.name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
