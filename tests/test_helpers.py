"""microvm.helpers: the one entry of the programs runners and units run.

What the runner's scripts and the units call must parse, reach a function
taking exactly those arguments, and import nothing another helper needs
(they run on every VM start).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import guest_for

from microvm.helpers import HELPERS, main, parser
from microvm.host import units
from microvm.host.statedir import VMState
from microvm.host.vsock import ssh_argv
from microvm.hypervisors import get
from microvm.layout import HELPERS as HELPERS_MODULE
from microvm.model.options import VMConfig
from microvm.runner.script import run_script, runner_files

RUNNER = Path("/var/lib/microvm/store/r-web")


def _helper_args(argv: list[str]) -> list[str]:
    """The helper's arguments in a command line that runs it; fails if it runs something else."""
    assert argv[:3] == [sys.executable, "-m", HELPERS_MODULE], argv
    return argv[3:]


def _runner_commands() -> list[list[str]]:
    """Every helper command line of a qemu runner using every helper, as the shell would split it."""
    vm = VMConfig.model_validate(
        {
            "microvm": {
                "vcpu": 2,
                "balloon": True,
                "readiness": True,
                "socket": "web.sock",
                "registerWithMachined": True,
                "credentialFiles": {"token": "/etc/microvm/token"},
                "interfaces": [
                    {"type": "tap", "id": "vm-web", "mac": "02:00:00:00:00:01"},
                    {"type": "macvtap", "id": "vm-mv", "mac": "02:00:00:00:00:02", "macvtap": {"link": "eth0"}},
                ],
            },
            "guest": {"hostName": "web", "arch": "x86_64"},
        }
    )
    qemu = get("qemu")
    spec = qemu.runner(vm, guest_for("qemu"))
    found = []
    for rel, (content, _) in runner_files(vm, qemu, spec, RUNNER, None).items():
        if rel.startswith("bin/") and rel != "bin/microvm-run":
            line = content.splitlines()[-1]
            number = {"bin/microvm-balloon": "256", "bin/microvm-register": "4242"}.get(rel, "")
            found.append(shlex.split(line.replace('"$@"', number))[1:])
    for line in run_script(vm, qemu, spec, RUNNER).splitlines():
        if HELPERS_MODULE in line:
            found.append(shlex.split(line.replace('"$$"', "4242").rstrip("&")))
    return found


def _unit_commands(state_dir: Path) -> list[list[str]]:
    """The helper command lines the units start, as systemd would split them."""
    starts = [
        units.virtiofsd_service(state_dir).replace("{vm}", "%i"),
        units.install_service("web", state_dir, state_dir / "store", ["--runner", str(RUNNER)]),
    ]
    lines = [line for unit in starts for line in unit.splitlines() if line.startswith("ExecStart=")]
    return [shlex.split(line.removeprefix("ExecStart=")) for line in lines]


def _ocf_agent_command(state_dir: Path) -> list[str]:
    """The resource agent's exec line, with an action as Pacemaker passes it."""
    line = units.ocf_agent(state_dir, state_dir / "store").splitlines()[-1]
    return shlex.split(line.removeprefix("exec ").replace('"$@"', "monitor"))


def _ssh_proxy_command(state_dir: Path) -> list[str]:
    """The ProxyCommand of `microvm ssh` for an installed VM with vsock.ssh."""
    runner = state_dir / "runner"
    (runner / "share/microvm").mkdir(parents=True)
    config = {"microvm": {"vsock": {"cid": 5, "ssh": {"enable": True}}}, "guest": {"hostName": "web"}}
    (runner / "share/microvm/vm.json").write_text(json.dumps(config))
    (state_dir / "web").mkdir()
    (state_dir / "web/current").symlink_to(runner)
    argv = ssh_argv(VMState.of("web", state_dir), [])
    return shlex.split(argv[argv.index("-o") + 1].removeprefix("ProxyCommand="))


def _reaches_its_function(args: list[str]) -> str:
    """Parse ``args`` and bind them to the command's function (without calling it); the command."""
    arguments = vars(parser().parse_args(args))
    command = arguments.pop("command")
    module, function = HELPERS[command].target.split(":")
    inspect.signature(getattr(importlib.import_module(module), function)).bind(**arguments)
    return command


def test_every_command_line_generated_parses_and_reaches_its_function(tmp_path: Path) -> None:
    """Every command the runner and the units call parses, and its function takes exactly what the
    parser gives it; besides, ready-now (a runner without a readiness port) and network-restore (its unit is
    host/network.py's)."""
    commands = [
        *_runner_commands(),
        *_unit_commands(tmp_path),
        _ssh_proxy_command(tmp_path),
        _ocf_agent_command(tmp_path),
    ]
    generated = [_helper_args(argv) for argv in commands]
    others = [["ready-now"], ["network-restore", str(tmp_path)]]
    assert sorted(_reaches_its_function(args) for args in [*generated, *others]) == sorted(HELPERS)


def _imported(*args: str) -> set[str]:
    """The modules a run of the dispatcher imports (itself runs as ``__main__``)."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['helpers', *{list(args)!r}]\n"
        "try:\n"
        "    runpy.run_module('microvm.helpers', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.splitlines()[-1].split())  # after what the command printed


def test_the_dispatcher_imports_only_the_command_asked_for(tmp_path: Path) -> None:
    listing = _imported("--help")
    assert {m for m in listing if m.startswith("microvm")} == {"microvm", "microvm.errors"}
    ready = {m for m in _imported("ready-now") if m.startswith("microvm")}
    assert ready == {
        "microvm",
        "microvm.errors",
        "microvm.control",
        "microvm.control.process",
        "microvm.runner",
        "microvm.runner.ready",
    }
    install = _imported("install", "web", "--runner", str(tmp_path), "--owner", "nobody:nogroup-missing")
    assert "microvm.host.install" in install
    assert not {"pydantic", "microvm.host.taps", "microvm.runner.control", "microvm.model.options"} & install


def test_bad_arguments_and_missing_files_are_told_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["install", "web", "--runner", str(tmp_path), "--owner", "nobody"])
    assert exited.value.code == 2 and "'nobody' is not USER:GROUP" in capsys.readouterr().err
    assert main(["tap-down", str(tmp_path / "gone")]) == 1
    assert f"microvm tap-down: [Errno 2] No such file or directory: '{tmp_path}/gone/share/microvm/vm.json'" in (
        capsys.readouterr().err
    )
    assert main(["install", "web", "--runner", str(tmp_path), "--owner", "no-such-user:kvm"]) == 1
    assert "microvm install: web: the owner no-such-user:kvm does not exist here" in capsys.readouterr().err
