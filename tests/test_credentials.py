"""microvm.credentialFiles: the credentials disk the runner packs at start, and a busybox guest reading it.

The Debian side (LoadCredential=, EnvironmentFile=) boots in test_debian.py.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import boot, entries_built_for, write_vm

from microvm.errors import MicrovmError
from microvm.layout import CREDENTIALS_IMAGE
from microvm.runner.credentials import pack
from microvm.store import Store

SECRET = "s3cret-7f1c9a-not-in-the-store"


def test_the_disk_is_a_private_tar_made_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text(SECRET)
    image = tmp_path / CREDENTIALS_IMAGE
    image.write_text("the last start's disk")
    pack(image, [f"token={tmp_path / 'token'}"])
    assert image.stat().st_mode & 0o777 == 0o600 and image.stat().st_size % 512 == 0
    with tarfile.open(image) as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.mode, member.uid) == ("token", 0o400, 0)
        assert tar.extractfile(member).read().decode() == SECRET
    # systemd's LoadCredential= copy wins over the path (the unit's user may not read the host's file)
    loaded = tmp_path / "loaded"
    loaded.mkdir()
    (loaded / "token").write_text("from systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(loaded))
    pack(image, ["token=/nonexistent"])
    with tarfile.open(image) as tar:
        assert tar.extractfile("token").read() == b"from systemd"
    with pytest.raises(MicrovmError) as info:
        pack(image, ["other=/nonexistent/db"])
    assert "microvm.credentialFiles.other" in str(info.value) and "/nonexistent/db" in str(info.value)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial disk left


def _store_holds(store: Store, host: str, text: str) -> bool:
    """Whether an entry built for VM ``host`` (runner, system, root image, initrd) holds ``text``."""
    entries = [str(store.root / e) for e in entries_built_for(store.root, host)]
    assert entries
    found = subprocess.run(["grep", "-rqF", text, *entries], capture_output=True, check=False)
    return found.returncode == 0


@pytest.mark.boot
def test_busybox_guest_sees_credentials_and_the_store_does_not(shared_store: Store, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "token").write_text(SECRET)
    (secrets / "env").write_text(f"API_KEY={SECRET}-env\n")
    file = write_vm(
        tmp_path / "vm",
        f"""
        [guest]
        hostName = "creds"
        shell = false
        commands = [
          'echo "command sees: $(cat /run/credentials/token)"',
          'ls -ld /run/credentials | cut -c1-10',
          "poweroff",
        ]
        [guest.services.reader]
        type = "oneshot"
        credentials = ["token"]
        environmentCredential = "env"
        command = 'echo "service sees: $API_KEY and $(cat $CREDENTIALS_DIRECTORY/token)"'
        [microvm.credentialFiles]
        token = "{secrets / "token"}"
        env = "{secrets / "env"}"
        [microvm]
        mem = 256
        [[microvm.volumes]]  # the credentials disk comes after the volumes
        image = "data.img"
        mountPoint = "/data"
        size = 16
        """,
    )
    state = tmp_path / "state"
    booted = boot(shared_store, file, state)
    assert booted.returncode == 0, booted.console
    assert f"command sees: {SECRET}" in booted.console
    assert f"service sees: {SECRET}-env and {SECRET}" in booted.console
    assert "drwx------" in booted.console  # /run/credentials: root only
    assert (state / CREDENTIALS_IMAGE).stat().st_mode & 0o777 == 0o600
    assert not _store_holds(shared_store, "creds", SECRET)
    # the next start reads the host's file again
    (secrets / "token").write_text(SECRET + "-rotated")
    assert f"command sees: {SECRET}-rotated" in boot(shared_store, file, state).console
    assert not os.access(state / f".{CREDENTIALS_IMAGE}.new", os.F_OK)
