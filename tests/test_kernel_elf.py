"""The uncompressed kernel qemu boots (PVH): its entry note, and its segments' zero tails left out of the file part."""

from __future__ import annotations

import struct
from pathlib import Path

from microvm.guest.kernel import PT_LOAD, PT_NOTE, XEN_ELFNOTE_PHYS32_ENTRY, has_pvh_note, trim_zero_tails

PHDR = "<IIQQQQQQ"  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align


SHDR = "<IIQQQQIIQQ"  # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, ...
SHT_STRTAB, SHT_NOBITS = 3, 8


def _elf(segments: list[tuple[int, bytes, int]], bss: tuple[int, int] | None = None) -> bytes:
    """An ELF64 file with one program header per (p_type, file part, memory size), segment i at address
    0x1000000 * (i + 1); with ``bss`` = (segment, offset in it), section headers with a .bss section there."""
    header_size, entry_size = 64, struct.calcsize(PHDR)
    offset = header_size + entry_size * len(segments)
    table, body = b"", b""
    for i, (p_type, data, memsz) in enumerate(segments):
        address = 0x1000000 * (i + 1)
        table += struct.pack(PHDR, p_type, 0, offset + len(body), address, address, len(data), memsz, 8)
        body += data
    sections, shoff = b"", 0
    if bss is not None:
        names = b"\0.shstrtab\0.bss\0"
        names_offset = offset + len(body)
        shoff = names_offset + len(names)
        body += names
        sections = (
            bytes(struct.calcsize(SHDR))
            + struct.pack(SHDR, 1, SHT_STRTAB, 0, 0, names_offset, len(names), 0, 0, 1, 0)
            + struct.pack(SHDR, 11, SHT_NOBITS, 3, 0x1000000 * (bss[0] + 1) + bss[1], 0, 4096, 0, 0, 8, 0)
        )
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, header_size, shoff, 0, 64, entry_size,
                                 len(segments), struct.calcsize(SHDR), 3 if bss else 0, 1 if bss else 0)  # fmt: skip
    return header + table + body + sections


def _pvh_note() -> bytes:
    return struct.pack("<III", 4, 4, XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + struct.pack("<I", 0x1000000)


def _filesz(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    (phnum,) = struct.unpack_from("<H", data, 0x38)
    rows = [struct.unpack_from(PHDR, data, phoff + i * struct.calcsize(PHDR)) for i in range(phnum)]
    return [(row[5], row[6]) for row in rows]


def test_zero_tails_from_bss_on_are_left_to_the_loader_and_the_rest_stays(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    text, data, bss = b"\x90" * 100 + b"\0\x90", b"\1" + b"\0" * 300, b"\0" * 5000  # zeros ending .data stay
    segments = [(PT_NOTE, _pvh_note(), 20), (PT_LOAD, text + b"\0" * 50, 200), (PT_LOAD, data + bss, 8192)]
    kernel.write_bytes(_elf(segments, bss=(2, len(data))))
    before = kernel.read_bytes()
    assert trim_zero_tails(kernel) == len(bss)
    # the segment without .bss keeps its zeros; memory sizes unchanged: zero-filled
    assert _filesz(kernel) == [(20, 20), (len(text) + 50, 200), (len(data), 8192)]
    after = kernel.read_bytes()
    table_end = 64 + 3 * struct.calcsize(PHDR)
    assert len(after) == len(before) and after[table_end:] == before[table_end:]  # only the program headers changed
    assert has_pvh_note(kernel)
    assert trim_zero_tails(kernel) == 0  # once is enough


def test_a_segment_of_zeros_keeps_one_byte(tmp_path: Path) -> None:
    """Some loaders (crosvm) skip a segment without a file part."""
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(_elf([(PT_NOTE, _pvh_note(), 20), (PT_LOAD, b"\0" * 4096, 8192)], bss=(1, 0)))
    assert trim_zero_tails(kernel) == 4095
    assert _filesz(kernel) == [(20, 20), (1, 8192)]


def test_without_section_headers_nothing_is_trimmed(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(_elf([(PT_NOTE, _pvh_note(), 20), (PT_LOAD, b"\1" + b"\0" * 4096, 8192)]))
    assert trim_zero_tails(kernel) == 0


def test_not_an_elf_is_left_alone(tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(b"MZ" + bytes(600))
    assert trim_zero_tails(image) == 0 and image.read_bytes() == b"MZ" + bytes(600)
    assert not has_pvh_note(image)
