"""``microvm.credentialFiles``: the secrets packed at every start into the guest's credentials disk.

The disk is a plain tar archive (busybox and Debian both unpack it; no mkfs, no
kernel module, every hypervisor attaches it as a read-only virtio-blk volume).
The host files stay where the host keeps them: they are read here, at start,
so their content never enters the store or the runner. Under systemd the host
unit may load root-only files with ``LoadCredential=``; this reads
``$CREDENTIALS_DIRECTORY/<name>`` first for that reason.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from ..errors import MicrovmError

# Set by `microvm run` as root for the runner it starts unprivileged: root already packed the disk.
PACKED_ENV = "MICROVM_CREDENTIALS_PACKED"


def _content(name: str, path: str) -> bytes:
    """The credential ``name``: systemd's copy if the unit loaded one, else the host file."""
    loaded = os.environ.get("CREDENTIALS_DIRECTORY")
    if loaded and (Path(loaded) / name).is_file():
        return (Path(loaded) / name).read_bytes()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise MicrovmError(
            f"microvm.credentialFiles.{name}: cannot read {path}: {exc.strerror}",
            hint="the file must exist and be readable by the user starting the VM "
            "(under systemd: give it to microvm@NAME with LoadCredential=)",
        ) from None


def pack(image: Path, credentials: list[str]) -> None:
    """Write ``image`` afresh (mode 0600) from ``credentials`` (``NAME=PATH``), replacing the last start's."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for item in credentials:
            name, _, path = item.partition("=")
            data = _content(name, path)
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.uname, member.gname = len(data), 0o400, "root", "root"
            tar.addfile(member, io.BytesIO(data))
    data = archive.getvalue()  # a multiple of 512 bytes: whole sectors of a block device
    partial = image.with_name(f".{image.name}.new")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        partial.replace(image)
    finally:
        partial.unlink(missing_ok=True)
