"""Configs end to end: computed defaults of a loaded file, the CLI's config commands, the eval --json round trip.

Loading and merging: test_loader.py; bad configs and the checks: test_checks.py."""

from __future__ import annotations

import json
from pathlib import Path

import tomli_w
from helpers import MINIMAL_VM, REPO, write_vm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from microvm.cli import translate_legacy
from microvm.cli.app import app
from microvm.config import load_vm
from microvm.model.options import VMConfig

# --- computed defaults ----------------------------------------------------------


def test_computed_defaults(tmp_path: Path) -> None:
    file = write_vm(
        tmp_path,
        MINIMAL_VM
        + """
        [[microvm.shares]]
        tag = "data"
        source = "/srv"
        mountPoint = "/data"
        proto = "virtiofs"
    """,
    )
    vm = load_vm(file).config
    assert vm.microvm.socket == "web.sock"
    assert vm.microvm.shares[0].socket == "web-virtiofs-data.sock"
    assert vm.microvm.qemu.machine == "microvm"
    assert vm.microvm.storeOnDisk is True
    assert vm.guest.kernel.flavor == "cloud"
    assert len(vm.guest.machineId or "") == 32


def test_9p_share_selects_the_generic_kernel(tmp_path: Path) -> None:
    file = write_vm(tmp_path, MINIMAL_VM + '[[microvm.shares]]\ntag = "d"\nsource = "/srv"\nmountPoint = "/d"\n')
    assert load_vm(file).config.guest.kernel.flavor == "generic"


# --- the CLI and the docs ---------------------------------------------------------


def test_eval_json_round_trips(tmp_path: Path) -> None:
    file = write_vm(tmp_path, MINIMAL_VM)
    result = CliRunner().invoke(app, ["eval", "--json", str(file)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["microvm"]["socket"] == "web.sock"


def test_init_writes_a_valid_starter_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "myvm"
    assert CliRunner().invoke(app, ["init", str(target)]).exit_code == 0
    assert load_vm(target / "vm.toml").config.guest.hostName == "myvm"
    again = CliRunner().invoke(app, ["init", str(target)])
    assert again.exit_code != 0 and "already exists" in str(again.exception)


def test_legacy_flags_map_to_subcommands() -> None:
    assert translate_legacy(["-r", "web"]) == ["run", "web"]
    assert translate_legacy(["eval", "x"]) == ["eval", "x"]


# --- property: a valid config survives eval --json and loads back the same ----------

names = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
macs = st.integers(0, 2**40 - 1).map(lambda n: "02:" + ":".join(f"{(n >> s) & 0xFF:02x}" for s in (32, 24, 16, 8, 0)))


@st.composite
def vm_configs(draw: st.DrawFn) -> dict:
    ids = draw(st.lists(names, max_size=3, unique=True))
    mac_list = draw(st.lists(macs, min_size=len(ids), max_size=len(ids), unique=True))
    images = draw(st.lists(names, max_size=3, unique=True))
    return {
        "guest": {
            "hostName": draw(names),
            "commands": draw(
                st.lists(
                    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20),
                    max_size=3,
                )
            ),
            "shell": draw(st.booleans()),
        },
        "microvm": {
            "vcpu": draw(st.integers(1, 8)),
            "mem": draw(st.integers(32, 4096).filter(lambda m: m != 2048)),
            "balloon": draw(st.booleans()),
            "storeDiskType": draw(st.sampled_from(["erofs", "squashfs"])),
            "kernelParams": draw(st.lists(st.from_regex(r"[a-z_]{1,8}(=[0-9]{1,3})?", fullmatch=True), max_size=3)),
            "interfaces": [
                {"type": draw(st.sampled_from(["user", "tap"])), "id": f"vm-{i}", "mac": m}
                for i, m in zip(ids, mac_list)
            ],
            "volumes": [
                {"image": f"{img}.img", "size": draw(st.integers(1, 10_000)), "mountPoint": f"/mnt/{img}"}
                for img in images
            ],
            "qemu": {"machine": draw(st.sampled_from(["microvm", "q35"]))},
        },
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=vm_configs())
def test_any_valid_config_round_trips_through_eval_json(tmp_path: Path, data: dict) -> None:
    first = tmp_path / "first.toml"
    first.write_text(tomli_w.dumps(data))
    model = load_vm(first).config
    result = CliRunner().invoke(app, ["eval", "--json", str(first)])
    assert result.exit_code == 0, result.output
    second = tmp_path / "second.toml"
    second.write_text(tomli_w.dumps(json.loads(result.output)))
    assert load_vm(second).config == model
    assert VMConfig.model_validate(json.loads(result.output)) == model


def test_check_and_eval_json_shapes(tmp_path: Path) -> None:
    """`check --json`: ok, the VMs, problems and warnings with their file and option; `eval --json`: the config."""
    runner = CliRunner()
    good = REPO / "examples" / "hello" / "vm.toml"
    result = runner.invoke(app, ["check", "--json", str(good)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "file": str(good), "ok": True, "host": False, "vms": [{"name": "hello", "hypervisor": "qemu"}],
        "problems": [], "warnings": [],
    }  # fmt: skip

    bad = write_vm(tmp_path, '[guest]\nhostName = "x"\n[microvm]\nmem = 0\n')
    result = runner.invoke(app, ["check", "--json", str(bad)])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["vms"] == [] and report["warnings"] == []
    (problem,) = report["problems"]
    assert problem["file"] == str(bad) and problem["option"] == "microvm.mem" and "greater than 0" in problem["message"]

    result = runner.invoke(app, ["eval", "--json", str(good)])
    assert result.exit_code == 0
    config = json.loads(result.stdout)
    assert config["guest"]["hostName"] == "hello" and config["microvm"]["hypervisor"] == "qemu"
    assert VMConfig.model_validate(config).dump() == config  # the full config, every default filled in


def test_public_dump_hides_secrets_but_shows_that_they_changed() -> None:
    """What the runner's vm.json holds for every user to read (issue 15: 2)."""

    def vm(password: str) -> VMConfig:
        files = {"/etc/key": {"text": "k3y", "mode": "0600"}, "/etc/motd": {"text": "hello", "mode": "0644"}}
        users = {"alice": {"hashedPassword": password}}
        return VMConfig.model_validate({"guest": {"hostName": "v", "base": "debian", "users": users, "files": files}})

    one, two = vm("$6$salt$one").public_dump(), vm("$6$salt$two").public_dump()
    text = json.dumps(one)
    assert "$6$salt$one" not in text and "k3y" not in text
    assert one["guest"]["files"]["/etc/motd"]["text"] == "hello"  # others may read it in the guest too
    assert one["guest"]["users"]["alice"]["hashedPassword"] != two["guest"]["users"]["alice"]["hashedPassword"]
    VMConfig.model_validate(one)  # still a config: `run` and `diff` read it back
