"""The option model, TOML merging, computed defaults and every validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
from conftest import REPO, write_vm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from microvm.cli import translate_legacy
from microvm.cli.app import app
from microvm.config import load_host, load_vm
from microvm.errors import ConfigError, ConfigErrors
from microvm.model.options import VMConfig

MINIMAL = '[guest]\nhostName = "web"\n'


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
        'imports = ["one.toml", "two.toml"]\n' + MINIMAL,
        **{"one.toml": "[microvm]\nmem = 256\n", "two.toml": "[microvm]\nmem = 512\n"},
    )
    assert "microvm.mem" in message and "one.toml" in message and "two.toml" in message


def test_importer_settles_a_disagreement(tmp_path: Path) -> None:
    write_vm(tmp_path, "[microvm]\nmem = 256\n", "one.toml")
    write_vm(tmp_path, "[microvm]\nmem = 512\n", "two.toml")
    file = write_vm(tmp_path, 'imports = ["one.toml", "two.toml"]\n' + MINIMAL + "[microvm]\nmem = 300\n")
    assert load_vm(file).config.microvm.mem == 300


def test_equal_values_from_two_imports_are_fine(tmp_path: Path) -> None:
    write_vm(tmp_path, "[microvm]\nmem = 256\n", "one.toml")
    write_vm(tmp_path, "[microvm]\nmem = 256\n", "two.toml")
    file = write_vm(tmp_path, 'imports = ["one.toml", "two.toml"]\n' + MINIMAL)
    assert load_vm(file).config.microvm.mem == 256


def test_nested_imports_are_relative_to_the_importing_file(tmp_path: Path) -> None:
    write_vm(tmp_path / "lib", "[microvm]\nvcpu = 3\n", "cpu.toml")
    write_vm(tmp_path / "lib", 'imports = ["cpu.toml"]\n', "all.toml")
    file = write_vm(tmp_path, 'imports = ["lib/all.toml"]\n' + MINIMAL)
    assert load_vm(file).config.microvm.vcpu == 3


def test_error_names_the_imported_file_that_set_the_bad_value(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, 'imports = ["bad.toml"]\n' + MINIMAL, **{"bad.toml": '[[microvm.interfaces]]\nid = "a"\nmac = "zz"\n'}
    )
    assert "bad.toml: microvm.interfaces[0].mac" in message


# --- computed defaults ----------------------------------------------------------


def test_computed_defaults(tmp_path: Path) -> None:
    file = write_vm(
        tmp_path,
        MINIMAL
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
    file = write_vm(tmp_path, MINIMAL + '[[microvm.shares]]\ntag = "d"\nsource = "/srv"\nmountPoint = "/d"\n')
    assert load_vm(file).config.guest.kernel.flavor == "generic"


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


# --- bad input: (file text, expected fragments) ---------------------------------------

BAD = {
    "toml syntax": ("[guest\nhostName='x'", ["not valid TOML"]),
    "missing guest": ("[microvm]\nmem = 1\n", ["guest: is required"]),
    "wrong type int": (MINIMAL + '[microvm]\nmem = "512"\n', ["microvm.mem", "valid integer", "'512'"]),
    "wrong type bool": (MINIMAL + "[microvm]\nballoon = 1\n", ["microvm.balloon", "boolean"]),
    "unknown option": (
        MINIMAL + "[microvm]\nhugepagemem = true\n",
        ["unknown option", "did you mean microvm.hugepageMem"],
    ),
    "unknown table": (MINIMAL + "[microvm.qmeu]\nmachine = 'q35'\n", ["microvm.qmeu", "did you mean microvm.qemu"]),
    "unknown top level": (MINIMAL + "[guset]\n", ["guset", "did you mean guest"]),
    "bad hypervisor": (MINIMAL + '[microvm]\nhypervisor = "vbox"\n', ["microvm.hypervisor", "'qemu'", "'vbox'"]),
    "zero mem": (MINIMAL + "[microvm]\nmem = 0\n", ["microvm.mem", "greater than 0"]),
    "own guest with nothing to boot": (
        MINIMAL + "[microvm.guest]\nenable = false\n",
        ["microvm.guest.enable", "nothing to boot", "microvm.initrdPath"],
    ),
    "own guest with readiness": (
        MINIMAL + '[microvm]\nreadiness = true\nkernelParams = ["root=/dev/vda"]\n[microvm.guest]\nenable = false\n',
        ["microvm.readiness", "microvm.guest.enable = false"],
    ),
    "missing initrd": (MINIMAL + '[microvm]\ninitrdPath = "no-such.cpio"\n', ["microvm.initrdPath", "no-such.cpio"]),
    "negative vcpu": (MINIMAL + "[microvm]\nvcpu = -1\n", ["microvm.vcpu", "greater than 0"]),
    "bad mac": (
        MINIMAL + '[[microvm.interfaces]]\nid = "vm-a"\nmac = "02:00:00:00:00"\n',
        ["interfaces[0].mac", "MAC"],
    ),
    "multicast mac": (MINIMAL + '[[microvm.interfaces]]\nid = "vm-a"\nmac = "01:00:00:00:00:01"\n', ["multicast"]),
    "long ifname": (
        MINIMAL + '[[microvm.interfaces]]\nid = "vm-abcdefghijklmn"\nmac = "02:00:00:00:00:01"\n',
        ["at most 15"],
    ),
    "path in ifname": (
        MINIMAL + '[[microvm.interfaces]]\nid = "../etc"\nmac = "02:00:00:00:00:01"\n',
        ["not a valid name"],
    ),
    "shell in ifname": (
        MINIMAL + '[[microvm.interfaces]]\nid = "a;rm -rf"\nmac = "02:00:00:00:00:01"\n',
        ["not a valid name"],
    ),
    "bad hostname": ('[guest]\nhostName = "a;rm -rf /"\n', ["guest.hostName", "not a valid host name"]),
    "dotdot hostname": ('[guest]\nhostName = "../etc"\n', ["not a valid host name"]),
    "duplicate ifname": (
        MINIMAL + '[[microvm.interfaces]]\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n'
        '[[microvm.interfaces]]\nid = "vm-a"\nmac = "02:00:00:00:00:02"\n',
        ["microvm.interfaces[1].id", "also used by microvm.interfaces[0].id"],
    ),
    "duplicate mac": (
        MINIMAL + '[[microvm.interfaces]]\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n'
        '[[microvm.interfaces]]\nid = "vm-b"\nmac = "02:00:00:00:00:01"\n',
        ["MAC address"],
    ),
    "bridge on user": (
        MINIMAL + '[[microvm.interfaces]]\ntype = "user"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\nbridge = "br0"\n',
        ['only interfaces of type "bridge" or "tap"'],
    ),
    "bridge without bridge": (
        MINIMAL + '[[microvm.interfaces]]\ntype = "bridge"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n',
        ["interfaces[0].bridge", "is required"],
    ),
    "macvtap without link": (
        MINIMAL + '[[microvm.interfaces]]\ntype = "macvtap"\nid = "vm-a"\nmac = "02:00:00:00:00:01"\n',
        ["macvtap.link", "is required"],
    ),
    "duplicate volume": (
        MINIMAL + '[[microvm.volumes]]\nimage = "a.img"\nsize = 1\n[[microvm.volumes]]\nimage = "a.img"\nsize = 1\n',
        ["volume image 'a.img'"],
    ),
    "zero volume size": (MINIMAL + '[[microvm.volumes]]\nimage = "a.img"\nsize = 0\n', ["volumes[0].size"]),
    "relative mountpoint": (
        MINIMAL + '[[microvm.volumes]]\nimage = "a.img"\nsize = 1\nmountPoint = "data"\n',
        ["not an absolute path"],
    ),
    "duplicate share tag": (
        MINIMAL + '[[microvm.shares]]\ntag = "a"\nsource = "/a"\nmountPoint = "/a"\n'
        '[[microvm.shares]]\ntag = "a"\nsource = "/b"\nmountPoint = "/b"\n',
        ["share tag 'a'"],
    ),
    "duplicate virtiofs socket": (
        MINIMAL + '[[microvm.shares]]\ntag = "a"\nsource = "/a"\nmountPoint = "/a"\n'
        'proto = "virtiofs"\nsocket = "s"\n[[microvm.shares]]\ntag = "b"\nsource = "/b"\n'
        'mountPoint = "/b"\nproto = "virtiofs"\nsocket = "s"\n',
        ["virtiofs socket 's'"],
    ),
    "duplicate mount point": (
        MINIMAL + '[[microvm.volumes]]\nimage = "a.img"\nsize = 1\nmountPoint = "/a"\n'
        '[[microvm.shares]]\ntag = "a"\nsource = "/a"\nmountPoint = "/a"\n',
        ["mount point '/a'"],
    ),
    "forwardPorts without user": (
        MINIMAL + "[[microvm.forwardPorts]]\nhost.port = 2222\nguest.port = 22\n",
        ['forwarded ports need an interface of type "user"'],
    ),
    "hotplugged over hotplug": (MINIMAL + "[microvm]\nhotplugMem = 128\nhotpluggedMem = 256\n", ["hotpluggedMem"]),
    "balloon mem without balloon": (MINIMAL + "[microvm]\ninitialBalloonMem = 64\n", ["needs microvm.balloon"]),
    "packages on busybox": (MINIMAL + 'packages = ["nginx"]\n', ["guest.packages", 'guest.base = "debian"']),
    "kvm with emulated cpu": (MINIMAL + '[microvm]\naccel = "kvm"\ncpu = "Haswell"\n', ["microvm.accel"]),
    "unknown after": (MINIMAL + '[guest.services.a]\ncommand = "x"\nafter = ["b"]\n', ["no service named 'b'"]),
    "bad machine id": (MINIMAL + 'machineId = "xyz"\n', ["guest.machineId", "32 lowercase hex"]),
    "imports not a list": ('imports = "a.toml"\n' + MINIMAL, ["imports", "list of file names"]),
    "missing import": ('imports = ["nope.toml"]\n' + MINIMAL, ["imports[0]", "does not exist"]),
    "port out of range": (
        MINIMAL + '[[microvm.interfaces]]\nid = "u"\nmac = "02:00:00:00:00:01"\n'
        "[[microvm.forwardPorts]]\nhost.port = 70000\nguest.port = 22\n",
        ["forwardPorts[0].host.port", "less than 65536"],
    ),
    "modulesDir without image": (
        MINIMAL + '[guest.kernel]\nmodulesDir = "/lib/modules/x"\n',
        ["guest.kernel.modulesDir"],
    ),
    "9p on qemu-less hypervisor": (
        MINIMAL + '[microvm]\nhypervisor = "cloud-hypervisor"\n'
        '[[microvm.shares]]\ntag = "a"\nsource = "/a"\nmountPoint = "/a"\n',
        ["cloud-hypervisor does not support 9p shares", "virtiofs"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_a_clear_error_and_writes_nothing(tmp_path: Path, case: str) -> None:
    text, fragments = BAD[case]
    file = write_vm(tmp_path / "cfg", text)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["check", str(file)])
    assert result.exit_code != 0
    message = str(result.exception) if result.exception else result.output
    assert str(file) in message or "toml" in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_there_are_at_least_30_bad_configs() -> None:
    assert len(BAD) >= 30


def test_warnings_do_not_stop(tmp_path: Path) -> None:
    loaded = load_vm(write_vm(tmp_path, MINIMAL + "[microvm]\nmem = 2048\n"))
    assert any("2048" in str(w) for w in loaded.warnings)


def test_import_cycle(tmp_path: Path) -> None:
    write_vm(tmp_path, 'imports = ["b.toml"]\n', "a.toml")
    write_vm(tmp_path, 'imports = ["a.toml"]\n', "b.toml")
    message = load_error(tmp_path, 'imports = ["a.toml"]\n' + MINIMAL)
    assert "cycle" in message


def test_host_file_config_and_source_conflict(tmp_path: Path) -> None:
    file = write_vm(tmp_path, '[microvm.vms.a]\nconfig = "a.toml"\nsource = "/x"\n', "host.toml")
    write_vm(tmp_path, "", "a.toml")
    with pytest.raises(ConfigErrors, match="cannot also set source"):
        load_host(file)


# --- the CLI and the docs ---------------------------------------------------------


def test_eval_json_round_trips(tmp_path: Path) -> None:
    file = write_vm(tmp_path, MINIMAL)
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


def test_example_is_valid() -> None:
    assert load_vm(REPO / "examples/hello/vm.toml").config.guest.hostName == "hello"


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
            "commands": draw(st.lists(st.text(st.characters(blacklist_characters="\x00"), max_size=20), max_size=3)),
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
