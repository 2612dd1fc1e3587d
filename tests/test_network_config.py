"""Network options without booting: the base interface, host-wide uniqueness, addresses, generated scripts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import addresses_on, write_vm
from typer.testing import CliRunner

from microvm.cli.app import app
from microvm.config import load_host, load_vm, vm_config
from microvm.errors import ConfigErrors
from microvm.guest.system import UDHCPC_SCRIPT, _network_script
from microvm.model.addresses import base_ipv4
from microvm.model.options import HostConfig, VMConfig


def vm(name: str = "web", **guest_network) -> VMConfig:
    return vm_config({"guest": {"hostName": name, "network": guest_network}})


def install(state: Path, config: VMConfig) -> None:
    """What an installed VM leaves in the state directory: ``current`` links to a runner with its vm.json."""
    runner = state.parent / "store" / f"runner-{config.name}"
    record = runner / "share" / "microvm" / "vm.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(config.dump()))
    (state / config.name).mkdir(parents=True)
    (state / config.name / "current").symlink_to(runner)


def check(file: Path, *flags: str):
    return CliRunner().invoke(app, ["check", *flags, str(file)])


def test_base_interface_is_derived_from_n_and_survives_a_round_trip() -> None:
    config = vm(base={"enable": True, "n": 258})
    assert [(i.type, i.id, i.mac) for i in config.microvm.interfaces] == [("tap", "vm258", "02:00:00:01:01:02")]
    again = vm_config(config.dump())  # desugared again (microvm eval, vm.json): not added twice
    assert again.microvm.interfaces == config.microvm.interfaces


def test_vm_addresses_follow_the_bridge_scheme() -> None:
    host = HostConfig.model_validate({"network": {"basic": {"enable": True, "ipv4Subnet": "10.5.0.10/24"}}})
    below, above = vm(base={"enable": True, "n": 0}), vm(base={"enable": True, "n": 9})
    # the bridge's own address is skipped, wherever it sits in the subnet
    assert addresses_on(below, host) == ["10.5.0.1", "fd12:3456:789a::ff:fe01:0"]
    assert addresses_on(above, host)[0] == "10.5.0.11"
    static = vm(base={"enable": True, "n": 3}, interfaces={"vm3": {"dhcp": False, "addresses": ["192.0.2.7/24"]}})
    assert addresses_on(static, host) == ["192.0.2.7", "fd12:3456:789a::ff:fe01:3"]
    assert addresses_on(below, HostConfig()) == []  # no host bridge: no address known
    full = HostConfig.model_validate({"network": {"basic": {"enable": True, "ipv4Subnet": "10.5.0.1/30"}}})
    assert base_ipv4(full.network.basic, 0) is not None and base_ipv4(full.network.basic, 1) is None


def test_taken_n_tap_or_mac_of_an_installed_vm_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    install(state, vm("other", base={"enable": True, "n": 4}))
    file = write_vm(tmp_path / "new", '[guest]\nhostName = "new"\n[guest.network.base]\nenable = true\nn = 4\n')
    before = sorted(state.rglob("*"))
    result = check(file)
    assert result.exit_code != 0
    message = str(result.exception)
    assert "guest.network.base.n: network number 4 is already used by VM 'other' (installed)" in message
    assert "interface id 'vm4'" in message and "MAC address '02:00:00:01:00:04'" in message
    assert str(file) in message
    assert sorted(state.rglob("*")) == before
    # the same VM re-checked is not a clash with its own installation
    install(state, load_vm(write_vm(tmp_path / "x", '[guest]\nhostName = "x"\n')).config)
    assert check(write_vm(tmp_path / "x", '[guest]\nhostName = "x"\n')).exit_code == 0


def test_the_loader_checks_against_the_installed_vms_its_caller_passes(tmp_path: Path) -> None:
    """It reads no state directory itself: the commands pass what is installed."""
    state = tmp_path / "state"
    install(state, vm("other", base={"enable": True, "n": 4}))
    file = write_vm(tmp_path / "new", '[guest]\nhostName = "new"\n[guest.network.base]\nenable = true\nn = 4\n')
    assert load_vm(file).config.guest.network.base.n == 4
    with pytest.raises(ConfigErrors, match="network number 4 is already used by VM 'other' \\(installed\\)"):
        load_vm(file, installed={"other": vm("other", base={"enable": True, "n": 4})})
    host = write_vm(tmp_path / "host", "[microvm.vms.new]\nconfig = '../new/vm.toml'\n", "host.toml")
    with pytest.raises(ConfigErrors, match="already used by VM 'other'"):
        load_host(host, installed={"other": vm("other", base={"enable": True, "n": 4})})


def test_a_routed_vm_past_the_end_of_its_subnet_is_refused(tmp_path: Path) -> None:
    file = write_vm(
        tmp_path,
        '[guest]\nhostName = "far"\n[guest.network.base]\nenable = true\nn = 253\nrouted.enable = true\n',
    )
    result = check(file)
    assert result.exit_code != 0
    assert "guest.network.base.n: 253 is past the end of guest.network.base.routed.ipv4Subnet 10.214.0.1/24" in str(
        result.exception
    )
    assert check(write_vm(tmp_path, file.read_text().replace("253", "252"))).exit_code == 0


def test_vms_declared_in_one_host_file_must_not_share_n(tmp_path: Path) -> None:
    host = write_vm(
        tmp_path,
        """
        [microvm.vms.a.config.guest.network.base]
        enable = true
        n = 1
        [microvm.vms.b.config.guest.network.base]
        enable = true
        n = 1
        """,
        "host.toml",
    )
    result = check(host, "--host")
    assert result.exit_code != 0
    assert "microvm.vms.b.config.guest.network.base.n: network number 1 is already used by VM 'a'" in str(
        result.exception
    )


@pytest.mark.parametrize(
    "basic, fragment",
    [
        ('ipv4Subnet = "10.213.0.300/24"', "network.basic.ipv4Subnet"),
        ('ipv4Subnet = "10.213.0.1/31"', "leaves no room for guests"),
        ('ipv6Prefix = "fd12::zz::"', "network.basic.ipv6Prefix"),
        ('name = "a-bridge-name-too-long"', "at most 15"),
    ],
)
def test_bad_host_network_is_a_clear_error(tmp_path: Path, basic: str, fragment: str) -> None:
    host = write_vm(tmp_path, f"[network.basic]\nenable = true\n{basic}\n", "host.toml")
    result = check(host, "--host")
    assert result.exit_code != 0
    assert fragment in str(result.exception) and str(host) in str(result.exception)


def test_global_mac_is_a_warning_and_unknown_interface_settings_an_error(tmp_path: Path) -> None:
    file = write_vm(
        tmp_path,
        """
        [guest]
        hostName = "g"
        [[microvm.interfaces]]
        type = "tap"
        id = "vm-g"
        mac = "00:02:00:01:01:01"
        """,
    )
    loaded = load_vm(file)
    assert any("globally administered" in str(w) and "interfaces[0].mac" in str(w) for w in loaded.warnings)
    file.write_text(file.read_text() + "[guest.network.interfaces.eth0]\ndhcp = false\n")
    result = check(file)
    assert result.exit_code != 0 and "guest.network.interfaces.eth0: no interface with id 'eth0'" in str(
        result.exception
    )


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not on PATH")
def test_guest_network_scripts_are_shellcheck_clean(tmp_path: Path) -> None:
    config = vm_config(
        {
            "guest": {
                "hostName": "r",
                "network": {
                    "base": {"enable": True, "n": 5},
                    "interfaces": {
                        "vm5": {
                            "dhcp": False,
                            "acceptRA": False,
                            "addresses": ["10.0.0.5/32", "fec0::5/128"],
                            "routes": [
                                {"destination": "0.0.0.0/0", "gateway": "10.0.0.0"},
                                {"destination": "::/0", "gateway": "fec0::"},
                            ],
                        }
                    },
                    "nameservers": ["9.9.9.9"],
                },
            }
        }
    )
    script = _network_script(config)
    # a gateway outside the /32 is reached on the link first (the routed layout)
    assert 'ip route replace 10.0.0.0 dev "$dev"' in script
    assert 'ip route replace 0.0.0.0/0 via 10.0.0.0 dev "$dev"' in script
    assert "udhcpc" not in script
    for name, text in (("network", script), ("udhcpc.script", UDHCPC_SCRIPT)):
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["shellcheck", "-s", "sh", tmp_path / "network", tmp_path / "udhcpc.script"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_declared_vms_are_checked_against_the_host_network(tmp_path: Path) -> None:
    host = write_vm(
        tmp_path,
        """
        [network.basic]
        enable = true
        ipv4Subnet = "10.9.0.1/29"
        [microvm.vms.far.config.guest.network.base]
        enable = true
        n = 6
        [microvm.vms.routed.config.guest.network.base]
        enable = true
        n = 1
        routed.enable = true
        """,
        "host.toml",
    )
    result = check(host, "--host")
    message = str(result.exception)
    assert result.exit_code != 0
    assert "microvm.vms.routed.config.guest.network.base.routed: differs from the host's network.routed" in message
    host.write_text(host.read_text().replace("routed.enable = true", ""))
    from microvm.config import load_host

    warnings = [str(w) for w in load_host(host).warnings]
    assert any("6 is past the end of network.basic.ipv4Subnet 10.9.0.1/29" in w for w in warnings), warnings
