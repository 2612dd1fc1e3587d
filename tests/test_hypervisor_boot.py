"""Boot the hello example on every hypervisor that is installed.

Each test is skipped unless the hypervisor's binary is on PATH (no binary is
ever faked). On these machines only qemu is installable; the others run
wherever their binary exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import REPO, boot

from microvm.hypervisors import available

pytestmark = [pytest.mark.boot, pytest.mark.xdist_group("boot")]


@pytest.mark.parametrize("hypervisor", [b.name for b in available()])
def test_boot_hello(shared_store, tmp_path: Path, hypervisor: str) -> None:
    backend = next(b for b in available() if b.name == hypervisor)
    if shutil.which(backend.binary) is None:
        pytest.skip(f"{backend.binary} not on PATH")
    booted = boot(shared_store, REPO / "examples/hello/vm.toml", tmp_path / "state", hypervisor=hypervisor)
    assert booted.returncode == 0, booted.console
    assert "hello: booted in" in booted.console
    assert "hello stopped cleanly" in booted.console
