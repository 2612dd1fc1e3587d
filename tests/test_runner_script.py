"""The runner's run script (microvm.runner.script): shellcheck-clean for every backend, images, overlays, extra args.

The hypervisors' own command lines are golden files: test_hypervisors_golden.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import BACKENDS, QEMU_INTERFACES, full_options, guest_for

from microvm.config import vm_config
from microvm.hypervisors import RunnerSpec, get
from microvm.runner.script import CREATE_VOLUME, run_script

needs_shellcheck = pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not on PATH")


def script_of(hypervisor: str, options: dict[str, Any]) -> tuple[RunnerSpec, str]:
    """The hypervisor's runner spec and the run script of VM "web" with the ``microvm`` table ``options``."""
    vm = vm_config({"microvm": options, "guest": {"hostName": "web", "arch": "x86_64"}})
    spec = get(hypervisor).runner(vm, guest_for(hypervisor))
    return spec, run_script(vm, get(hypervisor), spec, Path("/var/lib/microvm/runners/web"))


def assert_shellcheck_clean(tmp_path: Path, script: str) -> None:
    (tmp_path / "microvm-run").write_text(script)
    result = subprocess.run(["shellcheck", str(tmp_path / "microvm-run")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


@needs_shellcheck
@pytest.mark.parametrize("hypervisor", BACKENDS)
def test_whole_run_script_is_shellcheck_clean(hypervisor: str, tmp_path: Path) -> None:
    assert_shellcheck_clean(tmp_path, script_of(hypervisor, full_options(hypervisor))[1])


@needs_shellcheck
def test_qemu_macvtap_run_script_is_shellcheck_clean(tmp_path: Path) -> None:
    spec, script = script_of("qemu", QEMU_INTERFACES["macvtap-multiqueue"])
    assert_shellcheck_clean(tmp_path, script)
    # every queue of every macvtap is a descriptor qemu gets, and the runner opens
    assert 'exec 10<>"/dev/tap$(cat /sys/class/net/mv-a/ifindex)"' in script
    assert "fds=12:13" in " ".join(spec.argv)


RUN_SCRIPT_VM = {
    "extraArgsScript": "echo -smbios type=1,serial=x",
    "interfaces": [{"type": "tap", "id": "vm-fast", "mac": "02:00:00:00:00:0e", "tap": {"vhost": True}}],
    "volumes": [
        {"image": "data.vhdx", "size": 16, "imageType": "vhdx"},
        {"image": "over.qcow2", "size": 16, "imageType": "qcow2", "backingFile": "base.img", "backingFormat": "qcow2"},
    ],
}


@needs_shellcheck
def test_run_script_creates_images_checks_vhost_and_appends_extra_args(tmp_path: Path) -> None:
    script = script_of("qemu", RUN_SCRIPT_VM)[1]
    assert_shellcheck_clean(tmp_path, script)
    assert "create_volume data.vhdx 16 vhdx ext4 -q -F\n" in script  # qemu-img calls VHDX vhdx, VHD vpc
    assert "create_overlay over.qcow2 16 base.img qcow2\n" in script
    assert script.index("/dev/vhost-net") < script.index("extra_output=$(echo -smbios type=1,serial=x)")
    assert script.rstrip().endswith('"${extra_args[@]}"')


@pytest.mark.parametrize(("size_mb", "virtual_mb"), [(32, 32), (8, 16)])
def test_overlay_is_as_large_as_asked_or_as_its_base(tmp_path: Path, size_mb: int, virtual_mb: int) -> None:
    """The run script's create_overlay, run by bash on a 16 MB base: grown when asked for more, never cut."""
    (tmp_path / "base.img").write_bytes(b"")
    os.truncate(tmp_path / "base.img", 16 << 20)
    script = f"set -euo pipefail\n{CREATE_VOLUME}\ncreate_overlay over.qcow2 {size_mb} base.img raw\n"
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "over.qcow2"], cwd=tmp_path, capture_output=True, check=True
        ).stdout
    )
    assert (info["virtual-size"], info["backing-filename"]) == (virtual_mb << 20, str(tmp_path / "base.img"))
    before = (tmp_path / "over.qcow2").read_bytes()
    subprocess.run(["bash", "-c", script.replace(f" {size_mb} ", " 64 ")], cwd=tmp_path, check=True)
    assert (tmp_path / "over.qcow2").read_bytes() == before  # an existing image is never touched
