"""guest.fileSystems: bind mounts, tmpfs, network file systems, and the order they are mounted in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import boot, microvm, write_vm

from microvm.config import vm_config
from microvm.errors import MicrovmError
from microvm.guest.debian import fstab
from microvm.guest.initrd import ordered_file_systems
from microvm.store import Store


def _vm(file_systems: dict, base: str = "busybox", packages: tuple[str, ...] = ()) -> dict:
    return {"guest": {"hostName": "fs", "base": base, "packages": list(packages), "fileSystems": file_systems}}


def test_a_mount_comes_after_the_mounts_holding_its_path_and_its_bind_source() -> None:
    vm = vm_config(
        _vm(
            {
                "/etc/ssh": {"device": "/persist/etc/ssh", "options": ["bind"]},
                "/persist": {"device": "tmpfs", "fsType": "tmpfs"},
                "/a/b": {"device": "tmpfs", "fsType": "tmpfs"},
                "/a": {"device": "tmpfs", "fsType": "tmpfs"},
            }
        )
    )
    order = [path for path, _ in ordered_file_systems(vm)]
    assert order.index("/persist") < order.index("/etc/ssh") and order.index("/a") < order.index("/a/b")
    loop = vm_config(
        _vm(
            {
                "/x": {"device": "/y/data", "options": ["bind"]},
                "/y": {"device": "/x/data", "options": ["bind"]},
            }
        )
    )
    with pytest.raises(MicrovmError, match="need each other"):
        ordered_file_systems(loop)


def test_network_file_systems_wait_for_the_network_in_debian(tmp_path: Path) -> None:
    """The fstab line, read by the real systemd-fstab-generator, orders the mount after the network."""
    vm = vm_config(
        _vm(
            {
                "/srv/my data": {"device": "nas:/export/data", "fsType": "nfs4", "options": ["vers=4.2", "ro"]},
                "/scratch": {"device": "tmpfs", "fsType": "tmpfs", "options": ["size=16M"]},
            },
            base="debian",
            packages=("nfs-common",),
        )
    )
    table = tmp_path / "fstab"
    table.write_text(fstab(vm))
    assert "nas:/export/data /srv/my\\040data nfs4 vers=4.2,ro,_netdev 0 0" in table.read_text()
    assert "/scratch" not in table.read_text()  # the initrd mounts it
    out = tmp_path / "units"
    out.mkdir()
    subprocess.run(
        ["/lib/systemd/system-generators/systemd-fstab-generator", out, out, out],
        env={"SYSTEMD_FSTAB": str(table), "SYSTEMD_PROC_CMDLINE": "", "SYSTEMD_LOG_LEVEL": "err"},
        check=True,
    )
    unit = (out / "srv-my\\x20data.mount").read_text()
    assert "Before=remote-fs.target" in unit and "What=nas:/export/data" in unit
    assert (out / "remote-fs.target.requires" / "srv-my\\x20data.mount").exists()


@pytest.mark.parametrize(
    "file_systems, named",
    [
        ({"/mnt": {"device": "nas:/x", "fsType": "nfs"}}, ['nfs mounts need guest.base = "debian"']),
        ({"/mnt": {"device": "relative", "options": ["bind"]}}, ['guest.fileSystems."/mnt"', "guest path"]),
        ({"/mnt": {"device": "tmpfs", "fsType": "tmpfs", "options": ["size=1M,mode=0700"]}}, ["one mount option"]),
    ],
    ids=["nfs-on-busybox", "bind-from-a-word", "options-in-one-string"],
)
def test_check_rejects(tmp_path: Path, file_systems: dict, named: list[str]) -> None:
    body = "\n".join(
        f'[guest.fileSystems."{path}"]\n' + "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in fs.items())
        for path, fs in file_systems.items()
    )
    result = microvm("check", str(write_vm(tmp_path, f'[guest]\nhostName = "bad"\n{body}\n')))
    assert result.returncode != 0
    for text in named:
        assert text in result.stderr, result.stderr


def test_debian_network_mount_needs_its_helper_package(tmp_path: Path) -> None:
    text = (
        '[guest]\nhostName = "bad"\nbase = "debian"\n[guest.fileSystems."/nas"]\ndevice = "//nas/x"\nfsType = "cifs"\n'
    )
    result = microvm("check", str(write_vm(tmp_path, text)))
    assert result.returncode != 0 and "cifs-utils" in result.stderr


@pytest.mark.boot
def test_bind_and_tmpfs_mounts_are_there_before_init_and_keep_data(shared_store: Store, tmp_path: Path) -> None:
    file = write_vm(
        tmp_path / "vm",
        """
        [guest]
        hostName = "mounts"
        shell = false
        commands = [
          'echo "keys before: $(cat /etc/ssh/key 2>/dev/null || echo none)"',
          'echo kept > /etc/ssh/key',
          'echo "scratch: $(stat -c %a /scratch) $(grep " /scratch " /proc/mounts | cut -d" " -f4)"',
          'echo "cache on scratch: $(grep -c " /var/cache/app " /proc/mounts) $(ls -d /scratch/cache)"',
          "poweroff",
        ]
        [guest.fileSystems."/etc/ssh"]             # kept on the volume
        device = "/persist/etc/ssh"
        options = ["bind"]
        [guest.fileSystems."/var/cache/app"]       # its source is on the tmpfs below: mounted after it
        device = "/scratch/cache"
        options = ["bind"]
        [guest.fileSystems."/scratch"]
        device = "tmpfs"
        fsType = "tmpfs"
        options = ["size=8M", "mode=0750"]
        [guest.mounts.persist]
        mountpoint = "/persist"
        volume.size = 16
        [microvm]
        mem = 256
        """,
    )
    state = tmp_path / "state"
    first = boot(shared_store, file, state)
    assert first.returncode == 0, first.console
    assert "keys before: none" in first.console
    assert "scratch: 750 rw,relatime,size=8192k,mode=750" in first.console
    assert "cache on scratch: 1 /scratch/cache" in first.console
    assert "keys before: kept" in boot(shared_store, file, state).console
