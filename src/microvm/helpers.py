"""``python -m microvm.helpers COMMAND ...``: the one entry of the programs runners and host units run.

A runner's bin/ scripts (shutdown, balloon, taps), its resume and readiness
helpers, and the host's units (virtiofsd, install, the host network) call these
on every VM start, so only the module of the command asked for is imported.
The command lines are parsed here only; the modules keep plain functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import MicrovmError


def _show(command: str, result: object) -> int:
    if result is not None:
        print(result)
    return 0


def _names(command: str, names: list[str]) -> int:
    if names:
        print(f"{command}: {' '.join(names)}")
    return 0


class Helper:
    """A command: its function, imported only when it runs; its arguments; how its result is shown.

    A plain class: ``dataclasses`` would import ``inspect``, a few ms of every VM start.
    """

    def __init__(
        self,
        target: str,  # "module:function"
        help: str,
        arguments: Callable[[argparse.ArgumentParser], None],
        report: Callable[..., int] = _show,  # prints the function's result, gives the exit code
    ) -> None:
        self.target, self.help, self.arguments, self.report = target, help, arguments, report


def _control(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hypervisor", required=True)
    parser.add_argument("--socket", type=Path, required=True, help="the hypervisor's control socket")


def _shutdown(parser: argparse.ArgumentParser) -> None:
    _control(parser)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before the hard stop")


def _balloon(parser: argparse.ArgumentParser) -> None:
    _control(parser)
    parser.add_argument("--mem", type=int, required=True, help="the guest's memory in MB")
    parser.add_argument("size", type=int, help="the balloon size in MB")


def _resume(parser: argparse.ArgumentParser) -> None:
    _control(parser)
    parser.add_argument("--state", type=Path, required=True, help="the saved state: deleted once loaded")
    parser.add_argument("--saved-by", type=Path, required=True, help="the record of the runner that saved it")
    parser.add_argument("--pid", type=int, required=True, help="the hypervisor's pid (this helper's parent)")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _forward(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("port", type=Path, metavar="SOCKET", help="the hypervisor's socket of the readiness port")
    parser.add_argument("--pid", type=int, required=True, help="the hypervisor's PID (our parent)")


def _interfaces_down(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runner", type=Path, help="the VM's runner directory")


def _interfaces_up(parser: argparse.ArgumentParser) -> None:
    _interfaces_down(parser)
    parser.add_argument("--user", help="owner of the interfaces (default: microvm.user, else the state dir's owner)")


def _virtiofsd(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workdir", type=Path, help="the VM's state directory")


def _user_group(text: str) -> tuple[str, str]:
    user, colon, group = text.partition(":")
    if not (user and colon and group):
        raise argparse.ArgumentTypeError(f"{text!r} is not USER:GROUP")
    return user, group


def _install(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--runner", type=Path, help="the runner of a fully declared VM")
    how.add_argument("--source", help="the source of a VM deployed once")
    parser.add_argument("--update-source", help="the source recorded for later updates (default: --source)")
    parser.add_argument("--owner", type=_user_group, required=True, help="USER:GROUP owning the VM's state directory")


def _machine_register(parser: argparse.ArgumentParser) -> None:
    _machine_unregister(parser)
    parser.add_argument("--uuid", required=True, help="the machine's id (guest.machineId), 32 hex digits")
    parser.add_argument("--interface", action="append", default=[], help="a host interface of the VM (repeated)")
    parser.add_argument("pid", type=int, help="the hypervisor's PID (the unit's $MAINPID)")


def _machine_unregister(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="the VM's name")


def _vsock_proxy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, required=True, help="the guest's vsock port")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--cid", type=int, help="the guest's context id (AF_VSOCK)")
    where.add_argument("--mux", type=Path, help="cloud-hypervisor's vsock socket (CONNECT <port>)")


def _credentials(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="the credentials disk to write")
    parser.add_argument("credentials", nargs="*", metavar="NAME=PATH", help="microvm.credentialFiles")


def _ocf_action(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", help="start, stop, monitor, migrate_to, migrate_from, validate-all, reload-agent, meta-data"
    )


def _exit_code(command: str, code: int) -> int:
    """The function's result is the exit code itself (an OCF agent answers Pacemaker by it), nothing printed."""
    return code


def _network_restore(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("state_dir", type=Path, nargs="?", help="the host's microvm.stateDir")


HELPERS = {
    "shutdown": Helper(
        "microvm.runner.control:shutdown", "shut the VM down gracefully, hard after a timeout", _shutdown
    ),
    "balloon": Helper("microvm.runner.control:balloon", "set the balloon size, print the size reached", _balloon),
    "resume": Helper(
        "microvm.runner.control:resume", "(bin/microvm-run) let a VM loading its saved state run", _resume
    ),
    "ready-now": Helper("microvm.runner.ready:now", "tell systemd the VM is ready", _no_arguments),
    "ready-forward": Helper("microvm.runner.ready:forward", "pass on what the guest says is its readiness", _forward),
    "tap-up": Helper("microvm.host.taps:tap_up", "create the runner's taps", _interfaces_up, _names),
    "tap-down": Helper("microvm.host.taps:tap_down", "remove the runner's taps", _interfaces_down, _names),
    "macvtap-up": Helper("microvm.host.taps:macvtap_up", "create the runner's macvtaps", _interfaces_up, _names),
    "macvtap-down": Helper("microvm.host.taps:macvtap_down", "remove the runner's macvtaps", _interfaces_down, _names),
    "credentials": Helper(
        "microvm.runner.credentials:pack", "(bin/microvm-run) write the guest's credentials disk", _credentials
    ),
    "virtiofsd": Helper("microvm.runner.virtiofsd:serve", "run the VM's virtiofs daemons", _virtiofsd),
    "install": Helper("microvm.host.install:install", "install a VM (install-microvm-NAME.service)", _install),
    "machine-register": Helper(
        "microvm.host.machined:register", "(ExecStartPost) register the VM with machined", _machine_register
    ),
    "machine-unregister": Helper(
        "microvm.host.machined:unregister", "(ExecStopPost) unregister the VM from machined", _machine_unregister
    ),
    "vsock-proxy": Helper(
        "microvm.host.vsock:proxy", "(ssh ProxyCommand) connect stdin/stdout to a guest's vsock port", _vsock_proxy
    ),
    "ocf-agent": Helper(
        "microvm.cluster.agent:run",
        "the cluster's resource agent ocf:microvm:vm (Pacemaker runs it)",
        _ocf_action,
        _exit_code,
    ),
    "network-restore": Helper(
        "microvm.host.network.restore:restore", "restore the host network (microvm-network.service)", _network_restore
    ),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m microvm.helpers", description="what runners and host units run")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, helper in HELPERS.items():
        helper.arguments(commands.add_parser(name, help=helper.help, description=helper.help))
    return top


def main(argv: list[str] | None = None) -> int:
    arguments = vars(parser().parse_args(argv))
    command = arguments.pop("command")
    helper = HELPERS[command]
    module, function = helper.target.split(":")
    try:
        result = getattr(importlib.import_module(module), function)(**arguments)
    except (MicrovmError, OSError) as exc:  # OSError: a file the helper needs is missing or unreadable
        print(f"microvm {command}: {exc}", file=sys.stderr)
        return 1
    return helper.report(command, result)


if __name__ == "__main__":
    sys.exit(main())
