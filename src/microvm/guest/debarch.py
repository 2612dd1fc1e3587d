"""Debian packages for the guest's architecture, which need not be the host's.

An aarch64 guest on an x86_64 host boots an arm64 kernel with an arm64
busybox under qemu's CPU emulation. apt fetches those through a private
state directory next to the store (its own package lists for that
architecture), so the host's apt sources are reused but its dpkg
architectures and lists stay untouched.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import MicrovmError
from ..model.names import host_arch
from ..store import Store

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
HOST_APT_LISTS = Path("/var/lib/apt/lists")
HOST_APT_PKGCACHE = Path("/var/cache/apt/pkgcache.bin")


def busybox_path() -> Path:
    """The host's busybox: the guest's userland, and its applet list, where the architectures match."""
    return Path(proc.which("busybox", purpose="for the guest's userland"))


def newest_mtime(*paths: Path) -> int:
    """The newest mtime of ``paths`` and the files directly inside them (0 if none exist)."""
    stamps = [0]
    for path in paths:
        try:
            stamps.append(path.stat().st_mtime_ns)
            with os.scandir(path) as entries:
                stamps.extend(e.stat().st_mtime_ns for e in entries if e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            pass
    return max(stamps)


@dataclass(frozen=True)
class Apt:
    """apt for one guest architecture: the host's own, or a private state for a foreign one."""

    arch: str  # x86_64 or aarch64, as guest.arch
    state: Path | None  # private apt state directory; None means the host's apt

    @classmethod
    def for_arch(cls, store: Store, arch: str) -> Apt:
        return cls(arch, cls.state_dir(store.root, arch))

    @staticmethod
    def state_dir(store_root: Path, arch: str) -> Path | None:
        """The private apt state for ``arch`` under the store, None for the host's own architecture."""
        return None if arch == host_arch() else store_root / ".cache" / f"apt-{DEB_ARCH[arch]}"

    def list_paths(self) -> list[Path]:
        """What changes when these package lists are updated."""
        return [HOST_APT_LISTS, HOST_APT_PKGCACHE] if self.state is None else [self.state / "lists"]

    @property
    def deb_arch(self) -> str:
        return DEB_ARCH[self.arch]

    def stamp(self) -> int:
        """Changes whenever these package lists were updated."""
        return newest_mtime(*self.list_paths())

    def _options(self) -> list[str]:
        if self.state is None:
            return []
        return [
            f"-oAPT::Architecture={self.deb_arch}",
            f"-oAPT::Architectures={self.deb_arch}",
            f"-oDir::State={self.state}",
            f"-oDir::State::status={self.state / 'status'}",
            f"-oDir::Cache={self.state / 'cache'}",
        ]

    def command(self, tool: str, *args: str) -> list[str | os.PathLike[str]]:
        """argv for ``apt-get``/``apt-cache`` on these lists (fetching foreign lists first)."""
        exe = proc.which(tool, purpose="to find and download Debian packages")
        if self.state is not None:
            self._update_if_stale()
        return [exe, *self._options(), *args]

    def _update_if_stale(self) -> None:
        """Fetch the foreign lists when missing or older than the host's (after its apt-get update)."""
        assert self.state is not None
        lists = self.state / "lists"
        if lists.is_dir() and any(lists.glob("*_Packages*")) and self.stamp() >= newest_mtime(HOST_APT_LISTS):
            return
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        (self.state / "status").touch()
        apt_get = proc.which("apt-get", purpose="to fetch the package lists")
        result = proc.run([apt_get, *self._options(), "-q", "update"], check=False)
        if result.returncode != 0 or not any(lists.glob("*_Packages*")):
            raise MicrovmError(
                f"could not fetch the {self.deb_arch} package lists: "
                + (result.stderr.strip().splitlines() or ["no Packages file"])[-1],
                hint="check the apt sources (/etc/apt/sources.list.d) and the network",
            )
        os.utime(lists)  # the stamp: these lists are as new as the host's

    def download(self, package: str, version: str, into: Path) -> Path:
        """Download one .deb into ``into``; return it."""
        result = proc.run(
            self.command("apt-get", "download", f"{package}:{self.deb_arch}={version}"), cwd=into, check=False
        )
        debs = sorted(into.glob(f"{package}_*.deb"))
        if result.returncode != 0 or not debs:
            raise MicrovmError(
                f"could not download {package} {version} ({self.deb_arch}): "
                + (result.stderr.strip().splitlines() or ["no .deb produced"])[-1],
                hint="run apt-get update",
            )
        return debs[0]

    def candidate(self, package: str) -> dict[str, str]:
        """The candidate version's control fields, or a clear error if apt does not know the package."""
        result = proc.run(
            self.command("apt-cache", "show", "--no-all-versions", f"{package}:{self.deb_arch}"), check=False
        )
        if result.returncode != 0 or not result.stdout.strip():
            raise MicrovmError(f"no package {package} for {self.deb_arch} in the apt lists", hint="run apt-get update")
        fields: dict[str, str] = {}
        for line in result.stdout.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields.setdefault(key, value.strip())
        return fields


def runs_here(binary: Path) -> bool:
    """Whether an ELF binary is for this machine's CPU (its e_machine matches the running Python's)."""

    def machine(path: Path) -> bytes:
        with path.open("rb") as f:
            return f.read(20)[18:20]

    return machine(binary) == machine(Path(os.path.realpath(sys.executable)))


def guest_busybox(store: Store, arch: str) -> Path:
    """The static busybox for ``arch``: the host's own, or the Debian package's for a foreign guest."""
    apt = Apt.for_arch(store, arch)
    if apt.state is None:
        return busybox_path()
    version = apt.candidate("busybox-static")["Version"]

    def build(out: Path) -> None:
        dpkg_deb = proc.which("dpkg-deb", purpose="to unpack busybox")
        with store.scratch("busybox") as tmp:
            deb = apt.download("busybox-static", version, tmp)
            proc.run([dpkg_deb, "-x", deb, tmp / "root"])
            (tmp / "root/bin/busybox").rename(out / "busybox")

    entry, _ = store.add(f"busybox-{apt.deb_arch}", {"package": "busybox-static", "version": version}, build)
    return entry / "busybox"
