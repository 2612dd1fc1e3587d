"""The initramfs writer, checked by unpacking its output with the real cpio(1)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from microvm.errors import MicrovmError
from microvm.guest.cpio import CpioArchive

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) not installed (apt-get install cpio)")


def unpack(archive: bytes, dest: Path) -> str:
    """Extract as cpio -i does (as root it also makes the device nodes); returns its listing."""
    dest.mkdir()
    subprocess.run(
        ["cpio", "-i", "--make-directories", "--no-absolute-filenames", "--quiet"],
        input=archive,
        cwd=dest,
        check=True,
    )
    listing = subprocess.run(["cpio", "-t", "-v", "--quiet"], input=archive, capture_output=True, check=True)
    return listing.stdout.decode()


def sample(tmp_path: Path) -> CpioArchive:
    host = tmp_path / "host-script"
    host.write_bytes(b"#!/bin/sh\necho hi\n")
    host.chmod(0o750)
    a = CpioArchive()
    a.add_dir("dev")
    a.add_char_device("/dev/console", 5, 1)
    a.add_char_device("dev/null", 1, 3, mode=0o666)
    a.add_file("etc/deep/nested/conf", b"x=1\n", mode=0o600)  # parents made implicitly
    a.add_file("empty", b"")
    a.add_file("odd", b"abcde")  # lengths that need padding
    a.add_host_file("bin/script", host)
    a.add_host_file("bin/script-644", host, mode=0o644)
    a.add_symlink("bin/sh", "busybox")
    a.add_dir("tmp", mode=0o1777)
    return a


@needs_cpio
def test_round_trip_through_cpio(tmp_path: Path) -> None:
    out = tmp_path / "out"
    unpack(sample(tmp_path).to_bytes(), out)

    assert (out / "etc/deep/nested/conf").read_bytes() == b"x=1\n"
    assert stat.S_IMODE((out / "etc/deep/nested/conf").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "etc/deep").stat().st_mode) == 0o755
    assert (out / "empty").read_bytes() == b""
    assert (out / "odd").read_bytes() == b"abcde"
    assert (out / "bin/script").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((out / "bin/script").stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "bin/script-644").stat().st_mode) == 0o644
    assert os.readlink(out / "bin/sh") == "busybox"
    assert stat.S_IMODE((out / "tmp").stat().st_mode) == 0o1777
    if os.geteuid() == 0:
        console = (out / "dev/console").stat()
        assert stat.S_ISCHR(console.st_mode)
        assert (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)
        null = (out / "dev/null").stat()
        assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
        assert stat.S_IMODE(null.st_mode) == 0o666


@needs_cpio
def test_listing_shows_owner_root_mtime_zero_and_devices(tmp_path: Path) -> None:
    listing = unpack(sample(tmp_path).to_bytes(), tmp_path / "out")
    lines = listing.splitlines()
    console = next(line for line in lines if line.endswith("dev/console"))
    assert console.startswith("crw-------")
    assert "5,   1" in console or "5, 1" in console
    assert all(" root " in line or " 0 " in line for line in lines)
    assert all("1970" in line for line in lines)
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in lines]
    # every directory comes before what is in it
    assert names.index("etc") < names.index("etc/deep") < names.index("etc/deep/nested/conf")
    assert names.index("bin") < names.index("bin/script")


def test_deterministic_and_aligned(tmp_path: Path) -> None:
    first = sample(tmp_path).to_bytes()
    assert first == sample(tmp_path).to_bytes()
    assert len(first) % 4 == 0
    assert first.rstrip(b"\0").endswith(b"TRAILER!!!")
    buf = io.BytesIO()
    assert sample(tmp_path).write(buf) == len(first)


def test_inode_numbers_are_sequential() -> None:
    a = CpioArchive()
    a.add_file("a/b", b"1")
    a.add_file("c", b"22")
    data = a.to_bytes()
    inodes = []
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            break
        inodes.append((name, fields[0]))
        pos += 110 + namesize
        pos += -pos % 4 + filesize
        pos += -pos % 4
    assert inodes == [("a", 1), ("a/b", 2), ("c", 3)]


def test_rejects_duplicates_and_escapes(tmp_path: Path) -> None:
    a = CpioArchive()
    a.add_file("etc/x", b"")
    with pytest.raises(MicrovmError, match="added twice"):
        a.add_file("/etc/x", b"")
    with pytest.raises(MicrovmError, match="not a directory"):
        a.add_file("etc/x/y", b"")
    with pytest.raises(MicrovmError, match="non-directory"):
        a.add_dir("etc/x")
    with pytest.raises(MicrovmError, match="invalid"):
        a.add_file("../evil", b"")
    with pytest.raises(MicrovmError, match="not a regular file"):
        a.add_host_file("d", tmp_path)
    a.add_dir("etc", mode=0o700)  # re-moding an implicit parent is allowed
    assert "etc" in a


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not on PATH")
def test_generated_init_is_shellcheck_clean(tmp_path: Path) -> None:
    """The initrd's /init with every kind of mount: disks by serial and label, shares, the overlay volume."""
    from microvm.config import vm_config
    from microvm.guest.initrd import init_script
    from microvm.hypervisors import get

    vm = vm_config(
        {
            "guest": {"hostName": "checked"},
            "microvm": {
                "volumes": [
                    {"image": "a.img", "size": 8, "mountPoint": "/a", "label": "data"},
                    {"image": "b.img", "size": 8, "mountPoint": "/nix/.rw-store", "serial": "rw"},
                ],
                "writableStoreOverlay": "/nix/.rw-store",
                "shares": [
                    {"tag": "s9", "source": "x", "mountPoint": "/srv/9p", "proto": "9p"},
                    {"tag": "sfs", "source": "y", "mountPoint": "/srv/fs", "proto": "virtiofs"},
                ],
            },
        }
    )
    script = tmp_path / "init"
    script.write_text(init_script(vm, get("qemu"), ["kernel/fs/erofs/erofs.ko"]))
    result = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
