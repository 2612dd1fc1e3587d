"""Hostile and broken input (issue 15, findings 8 and 9): one clear error naming the file, never a traceback."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_vm
from typer.testing import CliRunner

from microvm.cli.app import app
from microvm.config import load_vm
from microvm.errors import ConfigError, ConfigErrors, MicrovmError
from microvm.host.statedir import VMState

MINIMAL = '[guest]\nhostName = "web"\n'
IFACE = '[[microvm.interfaces]]\ntype = "user"\nid = "{id}"\nmac = "{mac}"\n'


# --- finding 8: a final newline does not slip past the name rules ---------------------------


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ('[guest]\nhostName = "web\\n"\n', "guest.hostName"),
        (MINIMAL + '[guest.services."svc\\n"]\ncommand = "true"\n', "guest.services"),
        (MINIMAL + IFACE.format(id="vm-a\\n", mac="02:00:00:00:00:01"), "microvm.interfaces[0].id"),
        (MINIMAL + IFACE.format(id="vm-a", mac="02:00:00:00:00:01\\n"), "microvm.interfaces[0].mac"),
        (MINIMAL + '[microvm]\nuser = "microvm\\n"\n', "microvm.user"),
    ],
)
def test_names_ending_in_a_newline_are_rejected(tmp_path: Path, text: str, option: str) -> None:
    with pytest.raises((ConfigError, ConfigErrors)) as info:
        load_vm(write_vm(tmp_path, text))
    assert option in str(info.value)


def test_a_vm_name_ending_in_a_newline_makes_no_state_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["create", "web\n", "-f", str(tmp_path)])
    assert isinstance(result.exception, MicrovmError), result.output
    assert "not a valid name" in str(result.exception)
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


# --- finding 9: what made tracebacks, through every command that reads a config ----------------


def _deep_array(directory: Path) -> Path:
    return write_vm(directory, MINIMAL + "[microvm]\nkernelParams = " + "[" * 500 + "]" * 500 + "\n")


def _deep_table(directory: Path) -> Path:
    keys = ".".join(["a"] * 900)
    return write_vm(directory, MINIMAL + f"[microvm.firecracker.extraConfig]\n{keys} = 1\n")


def _import_chain(directory: Path) -> Path:
    for i in range(1000):
        write_vm(directory, f'imports = ["c{i + 1}.toml"]\n' if i < 999 else MINIMAL, f"c{i}.toml")
    return write_vm(directory, 'imports = ["c0.toml"]\n')


def _symlink_loop(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    os.symlink("loop-b.toml", directory / "loop-a.toml")
    os.symlink("loop-a.toml", directory / "loop-b.toml")
    return write_vm(directory, 'imports = ["loop-a.toml"]\n' + MINIMAL)


def _not_utf8(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vm.toml").write_bytes(b'[guest]\nhostName = "w\xffeb"\n')
    return directory / "vm.toml"


def _imports_not_utf8(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bad.toml").write_bytes(b"\xfe\xff[guest]\n")
    return write_vm(directory, 'imports = ["bad.toml"]\n' + MINIMAL)


def _long_file_name(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory / ("a" * 300) / "vm.toml"


# (how to make it, what the message must name besides the file)
CASES: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    "deep array": (_deep_array, ["nests", "at most 64"]),
    "deep table": (_deep_table, ["nests", "at most 64"]),
    "import chain of 1000 files": (_import_chain, ["imports[0]", "deep"]),
    "import symlink loop": (_symlink_loop, ["imports[0]", "loop-a.toml", "symbolic links"]),
    "not UTF-8": (_not_utf8, ["UTF-8", "byte 21"]),
    "import not UTF-8": (_imports_not_utf8, ["imports[0]", "bad.toml", "UTF-8"]),
    "300-character file name": (_long_file_name, ["long"]),
}


def _invoke(command: str, file: Path) -> object:
    """Run ``command`` on ``file`` in-process; create gets a source directory with the VM in it."""
    if command == "create":
        return CliRunner().invoke(app, ["create", file.parent.name, "-f", str(file.parent.parent)])
    return CliRunner().invoke(app, [command, str(file)])


@pytest.mark.parametrize("command", ["check", "build", "create", "run"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_input_is_one_clear_error(tmp_path: Path, case: str, command: str) -> None:
    make, fragments = CASES[case]
    file = make(tmp_path / "src" / "web")
    result = _invoke(command, file)
    assert result.exit_code != 0
    assert isinstance(result.exception, MicrovmError), f"{type(result.exception).__name__}: {result.exception}"
    message = str(result.exception)
    # create names the VM (the directory), shortened when it is long
    assert (file.parent.name[:20] if command == "create" else str(file)) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in result.output


def test_a_300_character_vm_name_is_a_clear_error(tmp_path: Path) -> None:
    name = "a" * 300
    for argv in (["create", name, "-f", str(tmp_path)], ["run", name], ["remove", name], ["status", name]):
        result = CliRunner().invoke(app, argv)
        assert isinstance(result.exception, MicrovmError), f"{argv[0]}: {result.exception!r}"
        assert "300" in str(result.exception) and "at most" in str(result.exception)
    with pytest.raises(MicrovmError, match="at most"):
        VMState.of(name)
