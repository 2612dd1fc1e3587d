"""Debian kernels in the store, fetched without installing them.

A guest kernel is a store entry holding ``boot/vmlinuz-<release>``,
``boot/config-<release>``, a depmod'ed ``lib/modules/<release>`` and, when
the bzImage's payload can be decompressed, an uncompressed ``boot/vmlinux-
<release>``: under TCG the decompressor is emulated, and qemu boots that ELF
directly through its PVH entry note, which is the fastest way to boot.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from .. import proc
from ..errors import MicrovmError
from ..store import Store, file_digest
from .debarch import Apt

# Debian's meta packages per flavor; {arch} is the Debian architecture (amd64, arm64).
FLAVORS = {"cloud": "linux-image-cloud-{arch}", "generic": "linux-image-{arch}"}
META_FILE = "kernel.json"
# Changes when what a kernel's entry holds does (2: the vmlinux's zero tails trimmed; 3: only from .bss on).
VMLINUX_FORMAT = 3


@dataclass(frozen=True)
class KernelPackage:
    """A concrete Debian kernel package at one version."""

    name: str
    version: str


@dataclass(frozen=True)
class KernelEntry:
    """A kernel in the store and what a VM needs from it."""

    path: Path  # the store entry
    image: Path  # what was shipped: a bzImage (or a user's ELF vmlinux)
    vmlinux: Path | None  # uncompressed ELF with a PVH note, when available
    modules_dir: Path | None  # lib/modules/<release>, depmod'ed
    release: str
    package: str | None = None
    version: str | None = None

    @property
    def boot_image(self) -> Path:
        """The fastest image to hand to ``-kernel``."""
        return self.vmlinux or self.image

    @classmethod
    def load(cls, path: Path) -> KernelEntry:
        meta = json.loads((path / META_FILE).read_text())
        rel = {k: (path / v if v else None) for k, v in meta.pop("files").items()}
        return cls(path=path, **rel, **meta)


def _write_meta(root: Path, release: str, package: str | None, version: str | None) -> None:
    files = {}
    for key, rel in (
        ("image", f"boot/vmlinuz-{release}"),
        ("vmlinux", f"boot/vmlinux-{release}"),
        ("modules_dir", f"lib/modules/{release}"),
    ):
        files[key] = rel if (root / rel).exists() else None
    files["image"] = files["image"] or files["vmlinux"]  # a user's ELF is both
    meta = {"release": release, "package": package, "version": version, "files": files}
    (root / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


# --- resolving a flavor to a concrete package ---------------------------------


def _resolve_uncached(package: str, apt: Apt) -> KernelPackage:
    """Follow a meta package's ``linux-image-*`` dependency to the real kernel."""
    fields = apt.candidate(package)
    for dep in fields.get("Depends", "").split(","):
        name = dep.split("|")[0].split("(")[0].split(":")[0].strip()
        if name.startswith("linux-image-"):
            return _resolve_uncached(name, apt)
    return KernelPackage(name=fields.get("Package", package), version=fields["Version"])


def resolve_kernel_package(flavor: str, store: Store, apt: Apt) -> KernelPackage:
    """``cloud``, ``generic`` or a package name -> the concrete package and version.

    Runs on every build, so the answer is cached next to the store, keyed by
    the apt lists' mtime: a warm call starts no process.
    """
    package = FLAVORS[flavor].format(arch=apt.deb_arch) if flavor in FLAVORS else flavor
    cache_file = store.root / ".cache" / f"kernel-resolve-{apt.deb_arch}.json"
    stamp = apt.stamp()
    try:
        cache = json.loads(cache_file.read_text())
    except (FileNotFoundError, ValueError):
        cache = {}
    if cache.get("stamp") != stamp:
        cache = {"stamp": stamp, "packages": {}}
    if hit := cache["packages"].get(package):
        return KernelPackage(**hit)
    try:
        resolved = _resolve_uncached(package, apt)
    except MicrovmError as exc:
        raise MicrovmError(exc.message, hint="run apt-get update, or set guest.kernel.image") from exc
    cache["packages"][package] = asdict(resolved)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    tmp.replace(cache_file)
    return resolved


# --- fetching -----------------------------------------------------------------


def fetch_kernel(store: Store, package: KernelPackage, apt: Apt) -> KernelEntry:
    """Download and unpack ``package`` into the store (a cache hit does nothing)."""

    def build(out: Path) -> None:
        dpkg_deb = proc.which("dpkg-deb", purpose="to unpack the guest kernel")
        with store.scratch("kernel") as work:  # in the store: a killed build's is collected by gc
            deb = apt.download(package.name, package.version, work)
            unpacked = work / "root"
            proc.run([dpkg_deb, "-x", deb, unpacked])
            images = sorted((unpacked / "boot").glob("vmlinuz-*"))
            if not images:
                raise MicrovmError(f"{package.name} contains no boot/vmlinuz-*")
            release = images[0].name.removeprefix("vmlinuz-")
            modules = next(
                (p for p in (unpacked / "lib/modules" / release, unpacked / "usr/lib/modules" / release) if p.is_dir()),
                None,
            )
            (out / "boot").mkdir()
            shutil.move(images[0], out / "boot" / images[0].name)
            config = unpacked / "boot" / f"config-{release}"
            if config.exists():
                shutil.move(config, out / "boot" / config.name)
            if modules is not None:
                (out / "lib/modules").mkdir(parents=True)
                shutil.move(modules, out / "lib/modules" / release)
        _finish(out, release, package.name, package.version)

    inputs = {**asdict(package), "vmlinux": VMLINUX_FORMAT}
    path, _ = store.add(f"kernel-{package.name.removeprefix('linux-image-')}", inputs, build)
    return KernelEntry.load(path)


def use_local_kernel(store: Store, image: Path, modules_dir: Path | None = None) -> KernelEntry:
    """Put a user's kernel (bzImage or PVH vmlinux) and modules into the store, keyed by content."""
    if not image.is_file():
        raise MicrovmError(f"kernel image {image} does not exist")
    if _is_elf(image) and not has_pvh_note(image):
        raise MicrovmError(
            f"kernel image {image} is an ELF without a PVH entry note, which qemu cannot boot",
            hint="build the kernel with CONFIG_PVH=y, or give its bzImage (arch/x86/boot/bzImage)",
        )
    if modules_dir is not None and not modules_dir.is_dir():
        raise MicrovmError(f"kernel modules directory {modules_dir} does not exist")
    release = modules_dir.name if modules_dir is not None else (_image_release(image) or "custom")
    inputs = {
        "image": file_digest(image),
        "modules": _tree_digest(modules_dir) if modules_dir is not None else None,
        "release": release,
        "vmlinux": VMLINUX_FORMAT,
    }

    def build(out: Path) -> None:
        (out / "boot").mkdir()
        name = "vmlinux" if _is_elf(image) else "vmlinuz"
        shutil.copyfile(image, out / "boot" / f"{name}-{release}")
        if modules_dir is not None:
            shutil.copytree(modules_dir, out / "lib/modules" / release, symlinks=True)
        _finish(out, release, None, None)

    path, _ = store.add("kernel-local", inputs, build)
    return KernelEntry.load(path)


def _finish(out: Path, release: str, package: str | None, version: str | None) -> None:
    """Shared tail of both builds: depmod, uncompressed vmlinux, metadata."""
    modules = out / "lib/modules" / release
    if modules.is_dir():
        depmod = proc.which("depmod", purpose="to index the guest kernel's modules")
        proc.run([depmod, "-b", out, release])
    vmlinux = out / "boot" / f"vmlinux-{release}"
    if not vmlinux.exists():
        extract_vmlinux(out / "boot" / f"vmlinuz-{release}", vmlinux)
    _write_meta(out, release, package, version)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            h.update(f"L {rel} {os.readlink(path)}\n".encode())
        elif path.is_file():
            h.update(f"F {rel} {path.stat().st_mode & 0o777:o} {file_digest(path)}\n".encode())
    return h.hexdigest()


# --- the uncompressed kernel --------------------------------------------------


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_LOAD, PT_NOTE = 1, 4
P_FILESZ = 0x20  # where p_filesz is in an ELF64 program header


def _segments(f: BinaryIO) -> list[tuple[int, int, int, int, int, int]]:
    """(offset of its header, p_type, p_offset, p_vaddr, p_filesz, p_memsz) of each program header of an ELF64 file
    (none if not one)."""
    header = f.read(64)
    if header[:4] != b"\x7fELF" or header[4] != 2:  # ELFCLASS64 only
        return []
    (phoff,) = struct.unpack_from("<Q", header, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    return [(phoff + i * phentsize, *struct.unpack_from("<I4xQQ8xQQ", table, i * phentsize)) for i in range(phnum)]


def _section_address(f: BinaryIO, name: bytes) -> int | None:
    """The address (sh_addr) of the ELF64 file's section ``name``; None without it or its section headers."""
    f.seek(0)
    header = f.read(64)
    if header[:4] != b"\x7fELF" or header[4] != 2:
        return None
    (shoff,) = struct.unpack_from("<Q", header, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 0x3A)
    if not shoff or shstrndx >= shnum:
        return None
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    sections = [struct.unpack_from("<I12xQQQ", table, i * shentsize) for i in range(shnum)]  # name, addr, off, size
    _, _, names_offset, names_size = sections[shstrndx]
    f.seek(names_offset)
    names = f.read(names_size)
    for name_offset, address, _, _ in sections:
        if names[name_offset:].split(b"\0", 1)[0] == name:
            return address
    return None


def has_pvh_note(path: Path) -> bool:
    """Whether an ELF64 kernel has the PVH entry note qemu's ``-kernel`` needs to boot it."""
    with path.open("rb") as f:
        for _, p_type, p_offset, _, p_filesz, _ in _segments(f):
            if p_type != PT_NOTE:
                continue
            f.seek(p_offset)
            notes = f.read(p_filesz)
            pos = 0
            while pos + 12 <= len(notes):
                namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
                name = notes[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
                if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                    return True
                pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _image_release(image: Path) -> str | None:
    """The release a kernel image was built as, to name it and its modules dir.

    A bzImage's setup header points at its version string (boot protocol
    >= 2.00); an ELF vmlinux carries the ``Linux version`` banner.
    """
    data = image.read_bytes()
    if data[:4] == b"\x7fELF":
        start = data.find(b"Linux version ")
        start = start + len(b"Linux version ") if start >= 0 else -1
    elif len(data) >= 0x210 and data[0x202:0x206] == b"HdrS":
        (offset,) = struct.unpack_from("<H", data, 0x20E)
        start = offset + 0x200 if offset else -1
    else:
        return None
    if not 0 <= start < len(data):
        return None
    words = data[start : start + 256].split(b"\0")[0].split()
    return words[0].decode(errors="replace") if words else None


def trim_zero_tails(path: Path) -> int:
    """Shorten the file part of the loadable segment that holds ``.bss`` by its trailing zeros from ``.bss`` on;
    return the bytes left out.

    Every ELF loader (qemu's, rust-vmm's linux-loader, crosvm's) gives a segment fresh zeroed RAM, or zero-fills it
    beyond its file part, and the kernel clears .bss and .brk itself, so the kernel boots the same. But qemu maps
    the file and copies each file part into guest RAM, so every page of it stays resident in the host as long as
    the VM runs: Debian's kernel ends in 11 MiB of zeros (.bss, .brk, .init.scratch) that are then never read.
    Zeros before ``.bss`` (the end of .data) stay: nothing clears them. At least one byte of the segment stays
    (some loaders skip a segment without a file part). Without section headers nothing is trimmed.
    """
    with path.open("r+b") as f:
        segments = _segments(f)
        bss = _section_address(f, b".bss")
        for where, p_type, p_offset, p_vaddr, p_filesz, p_memsz in segments:
            if p_type != PT_LOAD or bss is None or not p_vaddr <= bss < p_vaddr + p_memsz:
                continue
            floor = max(bss - p_vaddr, 1)
            if floor >= p_filesz:
                return 0
            f.seek(p_offset + floor)
            kept = floor + len(f.read(p_filesz - floor).rstrip(b"\0"))
            f.seek(where + P_FILESZ)
            f.write(struct.pack("<Q", kept))
            return p_filesz - kept
    return 0


def extract_vmlinux(bzimage: Path, dest: Path) -> bool:
    """Write the PVH-bootable ELF vmlinux inside ``bzimage`` to ``dest``; False if not possible.

    Like Linux's scripts/extract-vmlinux, but reads the payload's exact place
    from the setup header (boot protocol >= 2.08). The payload ends in the 4
    byte uncompressed size, which is dropped. gzip and xz decompress in
    Python; LZ4 (the kernel's legacy frame format) and zstd need the ``lz4``
    and ``zstd`` programs (Debian packages lz4, zstd). A result without the
    PVH note is discarded.
    """
    with bzimage.open("rb") as f:
        data = f.read()
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return False
    (protocol,) = struct.unpack_from("<H", data, 0x206)
    if protocol < 0x208:
        return False
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start : start + payload_length - 4]
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        if not _decompress(payload, tmp) or not has_pvh_note(tmp):
            return False  # without the note qemu cannot boot it; the bzImage still works
        trim_zero_tails(tmp)
        tmp.replace(dest)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _decompress(payload: bytes, out: Path) -> bool:
    if payload.startswith(b"\x1f\x8b"):
        out.write_bytes(zlib.decompressobj(wbits=31).decompress(payload))
        return True
    if payload.startswith(b"\xfd7zXZ\x00"):
        out.write_bytes(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload))
        return True
    tool = {b"\x02\x21\x4c\x18": "lz4", b"\x28\xb5\x2f\xfd": "zstd"}.get(payload[:4])
    if tool is None:
        return False  # bzip2, lzma, lzo: not worth a dependency, the bzImage still boots
    try:
        exe = proc.which(tool, purpose="to uncompress the kernel")
    except MicrovmError:
        return False
    src = out.with_name(out.name + ".in")
    try:
        src.write_bytes(payload)
        args = [src, out] if tool == "lz4" else [src, "-o", out]
        return proc.run([exe, "-d", "-f", "-q", *args], check=False).returncode == 0
    finally:
        src.unlink(missing_ok=True)
