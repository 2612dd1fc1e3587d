"""``python -m microvm.host.network restore STATE_DIR``: what microvm-network.service runs at boot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...errors import MicrovmError
from .planning import restore_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microvm.host.network")
    parser.add_argument("command", choices=["restore"])
    parser.add_argument("state_dir", type=Path, nargs="?", help="the host's microvm.stateDir")
    args = parser.parse_args(argv)
    try:
        restore_plan(args.state_dir).apply(print)
    except MicrovmError as exc:
        print(f"microvm network: {exc}", file=sys.stderr)
        return 1
    return 0
