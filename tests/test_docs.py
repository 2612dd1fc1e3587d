"""Generated docs stay current: run `make docs` after changing the model or a backend's features."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO

from microvm.model.reference import FILES, options_of, reference_markdown


def test_options_reference_is_current() -> None:
    assert (REPO / "docs/options.md").read_text() == reference_markdown()


def test_every_option_is_described() -> None:
    """An on/off table's ``enable`` takes the description of the field that holds the table."""
    undescribed = [row.path for model in FILES.values() for row in options_of(model) if not row.description]
    assert undescribed == []
    optimize = next(row for row in options_of(FILES["VM file"]) if row.path == "microvm.optimize.enable")
    assert "noreplace-smp" in optimize.description


def test_hypervisor_table_is_current() -> None:
    table = subprocess.run(
        [sys.executable, "-m", "microvm.hypervisors.table"], capture_output=True, text=True, check=True
    ).stdout
    assert (REPO / "docs/hypervisors.md").read_text() == table


def test_every_renaming_is_documented() -> None:
    mapping = (REPO / "docs/from-microvm-nix.md").read_text()
    for renamed in ("flake", "updateFlake", "/nix/store", "systemSymlink", "pkgs", "specialArgs", "tapMatch"):
        assert renamed in mapping
