"""``python -m microvm.control``: what the runner's bin/microvm-shutdown and -balloon run.

Kept free of the CLI's imports so the scripts start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import MicrovmError
from ..hypervisors import get


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microvm.control")
    sub = parser.add_subparsers(dest="command", required=True)
    shutdown = sub.add_parser("shutdown", help="shut the VM down gracefully, then hard after a timeout")
    shutdown.add_argument("--timeout", type=float, default=60.0)
    balloon = sub.add_parser("balloon", help="set the balloon size in MB and print the size reached")
    balloon.add_argument("--mem", type=int, required=True, help="the guest's memory in MB")
    balloon.add_argument("size", type=int)
    for p in (shutdown, balloon):
        p.add_argument("--hypervisor", required=True)
        p.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        backend = get(args.hypervisor)
        if args.command == "shutdown":
            backend.shutdown(args.socket, args.timeout)
        else:
            print(backend.balloon(args.socket, args.size, args.mem))
    except MicrovmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
