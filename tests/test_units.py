"""The one systemd unit writer (microvm.host.unitfile): quoting of words and the layout of sections."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import needs_systemd_analyze, verify

from microvm.host.network.units import network_units
from microvm.host.unitfile import HEADER, command, environment, quote, render
from microvm.model.options import HostConfig


@pytest.mark.parametrize(
    "word, exec_word, env_word",
    [
        ("/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-x86_64"),
        ("--dhcp-range=::,constructor:br0,ra-only", "--dhcp-range=::,constructor:br0,ra-only", None),
        ("50%", "50%%", "50%%"),  # a specifier otherwise
        ("$HOME", "'$$HOME'", "'$HOME'"),  # variables expand in Exec lines only
        ("a b", "'a b'", "'a b'"),
        ("it's", "'it\\'s'", "'it\\'s'"),  # systemd reads C escapes inside quotes
        ("a\\tb", "'a\\\\tb'", "'a\\\\tb'"),
        ("", "''", "''"),
    ],
)
def test_quote(word: str, exec_word: str, env_word: str | None) -> None:
    assert quote(word) == exec_word
    assert quote(word, variables=False) == (env_word or exec_word)


def test_render_and_the_lines_it_holds() -> None:
    text = render(
        {
            "Unit": [("Description", "x")],
            "Service": [("ExecStart", command("/bin/echo", "a b")), ("Environment", environment({"A": "1 $x"}))],
        }
    )
    assert text == (HEADER + "\n[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/echo 'a b'\nEnvironment='A=1 $x'\n")


def program(directory: Path, name: str) -> Path:
    path = directory / name / "prog"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def verify_command(tmp_path: Path, prog: Path) -> subprocess.CompletedProcess[str]:
    unit = tmp_path / "odd.service"
    unit.write_text(render({"Service": [("Type", "oneshot"), ("ExecStart", command(prog, "--flag=$x", "a b"))]}))
    return verify(unit)


@needs_systemd_analyze
def test_systemd_finds_a_program_whose_path_has_blanks_percent_and_dollar(tmp_path: Path) -> None:
    """systemd-analyze checks that the program exists: the path it unquoted is the one we quoted."""
    result = verify_command(tmp_path, program(tmp_path, "a b 50% $x"))
    assert (result.returncode, result.stderr) == (0, "")


@needs_systemd_analyze
def test_systemd_reads_quotes_and_backslashes_as_written(tmp_path: Path) -> None:
    """systemd refuses such a program name, and its message shows the name as it read it: ours, unchanged."""
    prog = program(tmp_path, "it's a\\tb")  # a backslash and a t, not a tab
    result = verify_command(tmp_path, prog)
    assert f"Executable name contains special characters: {prog}\n" in result.stderr, result.stderr


@needs_systemd_analyze
def test_network_units_with_an_odd_state_dir_verify(tmp_path: Path) -> None:
    host = HostConfig.model_validate({"network": {"basic": {"enable": True}, "nat": {"enable": True}}})
    units = network_units(host, tmp_path / "state dir %h")
    assert (
        "'--dhcp-leasefile=" + str(tmp_path) + "/state dir %%h/.network/microvm.leases'"
        in units["microvm-dnsmasq-microvm.service"]
    )
    assert (
        f"ExecStartPre=/bin/mkdir -p '{tmp_path}/state dir %%h/.network'\n" in units["microvm-dnsmasq-microvm.service"]
    )
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    result = verify(*(tmp_path / name for name in units))
    assert (result.returncode, result.stderr) == (0, "")
