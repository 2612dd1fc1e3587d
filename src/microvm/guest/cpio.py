"""A pure-Python writer for cpio "newc" archives, the initramfs format.

The kernel unpacks an initramfs itself, so making one needs neither root
(for the /dev nodes) nor cpio(1). The output is deterministic: every mtime,
uid and gid is 0 and inode numbers count up in the order entries were
added, so the same inputs give the same bytes and the same store hash.
"""

from __future__ import annotations

import io
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import MicrovmError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass
class _Entry:
    mode: int  # file type bits and permissions
    data: bytes = b""
    source: Path | None = None  # a host file whose content is read at write time
    rdev: tuple[int, int] = (0, 0)


def _normalise(path: str) -> str:
    """Archive paths are relative ("dev/console"); refuse ones that escape the root."""
    parts = PurePosixPath("/", path).parts[1:]
    if not parts or any(p in (".", "..") for p in parts):
        raise MicrovmError(f"invalid initramfs path {path!r}")
    return "/".join(parts)


class CpioArchive:
    """An initramfs under construction; entries are written in insertion order.

    Missing parent directories are added (mode 0755) the first time a path
    below them is added, so every directory precedes its contents.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __contains__(self, path: str) -> bool:
        return _normalise(path) in self._entries

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        """Add a directory, or set the mode of one already added implicitly."""
        name = _normalise(path)
        existing = self._entries.get(name)
        if existing is not None:
            if not stat.S_ISDIR(existing.mode):
                raise MicrovmError(f"initramfs path {name} is already a non-directory")
            existing.mode = stat.S_IFDIR | (mode & 0o7777)
            return
        self._add(name, _Entry(stat.S_IFDIR | (mode & 0o7777)))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(_normalise(path), _Entry(stat.S_IFREG | (mode & 0o7777), data=data))

    def add_host_file(self, path: str, src: Path, mode: int | None = None) -> None:
        """Add a regular file read from the host when the archive is written.

        ``mode`` defaults to the host file's permissions; symlinks are followed.
        """
        st = src.stat()
        if not stat.S_ISREG(st.st_mode):
            raise MicrovmError(f"{src} is not a regular file")
        perm = stat.S_IMODE(st.st_mode) if mode is None else mode & 0o7777
        self._add(_normalise(path), _Entry(stat.S_IFREG | perm, source=src))

    def add_symlink(self, path: str, target: str) -> None:
        self._add(_normalise(path), _Entry(stat.S_IFLNK | 0o777, data=target.encode()))

    def add_char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(_normalise(path), _Entry(stat.S_IFCHR | (mode & 0o7777), rdev=(major, minor)))

    def _add(self, name: str, entry: _Entry) -> None:
        if name in self._entries:
            raise MicrovmError(f"initramfs path {name} added twice")
        parent = PurePosixPath(name).parent
        if str(parent) != ".":
            parent_name = str(parent)
            existing = self._entries.get(parent_name)
            if existing is None:
                self.add_dir(parent_name)
            elif not stat.S_ISDIR(existing.mode):
                raise MicrovmError(f"initramfs path {parent_name} is not a directory")
        self._entries[name] = entry

    def write(self, out: BinaryIO) -> int:
        """Write the archive (ending in TRAILER!!!) to ``out``; returns bytes written."""
        written = 0
        for ino, (name, entry) in enumerate(self._entries.items(), start=1):
            if entry.source is not None:
                size = entry.source.stat().st_size
                written += _write_header(out, name, ino, entry.mode, size, entry.rdev)
                with entry.source.open("rb") as f:
                    shutil.copyfileobj(f, out)
            else:
                size = len(entry.data)
                written += _write_header(out, name, ino, entry.mode, size, entry.rdev)
                out.write(entry.data)
            written += size + _pad(out, size)
        written += _write_header(out, TRAILER, 0, 0, 0, (0, 0), nlink=1)
        return written

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.write(buf)
        return buf.getvalue()


def _pad(out: BinaryIO, length: int) -> int:
    n = -length % 4
    out.write(b"\0" * n)
    return n


def _write_header(
    out: BinaryIO,
    name: str,
    ino: int,
    mode: int,
    size: int,
    rdev: tuple[int, int],
    nlink: int | None = None,
) -> int:
    encoded = name.encode() + b"\0"
    if nlink is None:
        nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = MAGIC + b"".join(b"%08x" % f for f in fields) + encoded
    out.write(header)
    return len(header) + _pad(out, len(header))
