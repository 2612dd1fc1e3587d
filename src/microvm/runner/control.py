"""``python -m microvm.runner.control``: what the runner's bin/microvm-shutdown and -balloon run.

Kept free of the CLI's imports so the scripts start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import MicrovmError
from ..hypervisors import Balloon, Control, Suspend, capable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microvm.runner.control")
    sub = parser.add_subparsers(dest="command", required=True)
    shutdown = sub.add_parser("shutdown", help="shut the VM down gracefully, then hard after a timeout")
    shutdown.add_argument("--timeout", type=float, default=60.0)
    balloon = sub.add_parser("balloon", help="set the balloon size in MB and print the size reached")
    balloon.add_argument("--mem", type=int, required=True, help="the guest's memory in MB")
    balloon.add_argument("size", type=int)
    resume = sub.add_parser("resume", help="(run by bin/microvm-run) let a VM that loads its saved state run")
    resume.add_argument("--state", type=Path, required=True, help="the saved state: deleted once loaded")
    resume.add_argument("--saved-by", type=Path, required=True, help="the record of the runner that saved it")
    resume.add_argument("--pid", type=int, required=True, help="the hypervisor's pid (this helper's parent)")
    for p in (shutdown, balloon, resume):
        p.add_argument("--hypervisor", required=True)
        p.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "shutdown":
            capable(args.hypervisor, Control).shutdown(args.socket, args.timeout)
        elif args.command == "resume":
            return _resume(capable(args.hypervisor, Suspend), args.socket, (args.state, args.saved_by), args.pid)
        else:
            print(capable(args.hypervisor, Balloon).balloon(args.socket, args.size, args.mem))
    except MicrovmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _resume(backend: Suspend, socket: Path, files: tuple[Path, Path], hypervisor_pid: int) -> int:
    """Delete the saved state once it is loaded (before the VM runs on: it is good for one resume
    only), let the VM run, and tell systemd it is ready when systemd waits for that."""

    def loaded() -> None:
        for path in files:
            path.unlink(missing_ok=True)

    if not backend.finish_resume(socket, lambda: os.getppid() == hypervisor_pid, loaded):
        print(f"microvm: the VM did not resume from {files[0]}", file=sys.stderr)
        return 1
    if notify_socket := os.environ.get("NOTIFY_SOCKET"):
        from .ready import notify

        notify("READY=1", notify_socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
