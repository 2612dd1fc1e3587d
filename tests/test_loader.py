"""Loading config files (microvm.config.loader): imports, merging, the file each value came from, host files."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import MINIMAL_VM, REPO, write_vm

from microvm.config import load_host, load_vm
from microvm.errors import ConfigError, ConfigErrors


def load_error(tmp_path: Path, text: str, **files: str) -> str:
    for name, content in files.items():
        write_vm(tmp_path, content, name)
    with pytest.raises((ConfigError, ConfigErrors)) as info:
        load_vm(write_vm(tmp_path, text))
    return str(info.value)


# --- merging ------------------------------------------------------------------


def test_imports_merge_tables_concatenate_lists_and_own_values_win(tmp_path: Path) -> None:
    write_vm(
        tmp_path,
        """
        [microvm]
        vcpu = 2
        mem = 1024
        kernelParams = ["a"]
        [[microvm.volumes]]
        image = "a.img"
        size = 1
    """,
        "base.toml",
    )
    file = write_vm(
        tmp_path,
        """
        imports = ["base.toml"]
        [guest]
        hostName = "web"
        [microvm]
        mem = 256
        kernelParams = ["b"]
        [[microvm.volumes]]
        image = "b.img"
        size = 1
    """,
    )
    vm = load_vm(file).config.microvm
    assert (vm.vcpu, vm.mem) == (2, 256)
    assert vm.kernelParams == ["a", "b"]
    assert [v.image for v in vm.volumes] == ["a.img", "b.img"]


def test_two_imports_disagreeing_is_an_error_naming_both(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        'imports = ["one.toml", "two.toml"]\n' + MINIMAL_VM,
        **{"one.toml": "[microvm]\nmem = 256\n", "two.toml": "[microvm]\nmem = 512\n"},
    )
    assert "microvm.mem" in message and "one.toml" in message and "two.toml" in message


def test_importer_settles_a_disagreement(tmp_path: Path) -> None:
    write_vm(tmp_path, "[microvm]\nmem = 256\n", "one.toml")
    write_vm(tmp_path, "[microvm]\nmem = 512\n", "two.toml")
    file = write_vm(tmp_path, 'imports = ["one.toml", "two.toml"]\n' + MINIMAL_VM + "[microvm]\nmem = 300\n")
    assert load_vm(file).config.microvm.mem == 300


def test_equal_values_from_two_imports_are_fine(tmp_path: Path) -> None:
    write_vm(tmp_path, "[microvm]\nmem = 256\n", "one.toml")
    write_vm(tmp_path, "[microvm]\nmem = 256\n", "two.toml")
    file = write_vm(tmp_path, 'imports = ["one.toml", "two.toml"]\n' + MINIMAL_VM)
    assert load_vm(file).config.microvm.mem == 256


def test_nested_imports_are_relative_to_the_importing_file(tmp_path: Path) -> None:
    write_vm(tmp_path / "lib", "[microvm]\nvcpu = 3\n", "cpu.toml")
    write_vm(tmp_path / "lib", 'imports = ["cpu.toml"]\n', "all.toml")
    file = write_vm(tmp_path, 'imports = ["lib/all.toml"]\n' + MINIMAL_VM)
    assert load_vm(file).config.microvm.vcpu == 3


def test_error_names_the_imported_file_that_set_the_bad_value(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        'imports = ["bad.toml"]\n' + MINIMAL_VM,
        **{"bad.toml": '[[microvm.interfaces]]\nid = "a"\nmac = "zz"\n'},
    )
    assert "bad.toml: microvm.interfaces[0].mac" in message


def test_import_cycle(tmp_path: Path) -> None:
    write_vm(tmp_path, 'imports = ["b.toml"]\n', "a.toml")
    write_vm(tmp_path, 'imports = ["a.toml"]\n', "b.toml")
    message = load_error(tmp_path, 'imports = ["a.toml"]\n' + MINIMAL_VM)
    assert "cycle" in message


# --- host files and the example -----------------------------------------------


def test_host_file_defaults_and_declared_vms(tmp_path: Path) -> None:
    write_vm(tmp_path, "[microvm]\nmem = 128\n", "web.toml")
    file = write_vm(
        tmp_path,
        """
        [microvm.vms.web]
        config = "web.toml"
        [microvm.vms.db]
        source = "/etc/microvm"
        [microvm.vms.inline.config.microvm]
        vcpu = 2
    """,
        "host.toml",
    )
    host = load_host(file)
    vms = host.config.microvm.vms
    assert vms["web"].restartIfChanged is True and vms["db"].restartIfChanged is False
    assert vms["db"].updateSource == "/etc/microvm"
    assert host.vms["web"].config.guest.hostName == "web"
    assert host.vms["inline"].config.microvm.vcpu == 2


def test_example_is_valid() -> None:
    assert load_vm(REPO / "examples/hello/vm.toml").config.guest.hostName == "hello"
