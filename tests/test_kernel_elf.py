"""The uncompressed kernel qemu boots (PVH): its entry note, and its segments' zero tails left out of the file part."""

from __future__ import annotations

import struct
from pathlib import Path

from microvm.guest.kernel import PT_LOAD, PT_NOTE, XEN_ELFNOTE_PHYS32_ENTRY, has_pvh_note, trim_zero_tails

PHDR = "<IIQQQQQQ"  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align


def _elf(segments: list[tuple[int, bytes, int]]) -> bytes:
    """An ELF64 file with one program header per (p_type, file part, memory size)."""
    header_size, entry_size = 64, struct.calcsize(PHDR)
    offset = header_size + entry_size * len(segments)
    table, body = b"", b""
    for p_type, data, memsz in segments:
        table += struct.pack(PHDR, p_type, 0, offset + len(body), 0x1000000, 0x1000000, len(data), memsz, 8)
        body += data
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, header_size, 0, 0, 64, entry_size,
                                 len(segments), 64, 0, 0)  # fmt: skip
    return header + table + body


def _pvh_note() -> bytes:
    return struct.pack("<III", 4, 4, XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + struct.pack("<I", 0x1000000)


def _filesz(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    (phnum,) = struct.unpack_from("<H", data, 0x38)
    rows = [struct.unpack_from(PHDR, data, phoff + i * struct.calcsize(PHDR)) for i in range(phnum)]
    return [(row[5], row[6]) for row in rows]


def test_zero_tails_are_left_to_the_loader_and_the_rest_stays(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    text, bss = b"\x90" * 100 + b"\0\x90", b"\0" * 5000  # a zero inside a segment stays
    kernel.write_bytes(_elf([(PT_NOTE, _pvh_note(), 20), (PT_LOAD, text + bss, 8192), (PT_LOAD, b"\1\2\0", 3)]))
    before = kernel.read_bytes()
    assert trim_zero_tails(kernel) == len(bss) + 1
    assert _filesz(kernel) == [(20, 20), (len(text), 8192), (2, 3)]  # memory sizes unchanged: zero-filled
    after = kernel.read_bytes()
    table_end = 64 + 3 * struct.calcsize(PHDR)
    assert len(after) == len(before) and after[table_end:] == before[table_end:]  # only the program headers changed
    assert has_pvh_note(kernel)
    assert trim_zero_tails(kernel) == 0  # once is enough


def test_not_an_elf_is_left_alone(tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(b"MZ" + bytes(600))
    assert trim_zero_tails(image) == 0 and image.read_bytes() == b"MZ" + bytes(600)
    assert not has_pvh_note(image)
