"""``python -m microvm.host.install NAME (--runner PATH | --source URL)``: what install-microvm-NAME runs.

A fully declared VM (``--runner``) gets ``current`` pointed at the runner `microvm host apply`
built; a VM deployed from a source (``--source``) is created once when missing and
never touched again (later changes are `microvm update`'s), as microvm.nix does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import MicrovmError
from ..store import Store
from . import lifecycle
from .statedir import locked, owner_ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microvm.host.install")
    parser.add_argument("name")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--runner", type=Path, help="the runner of a fully declared VM")
    how.add_argument("--source", help="the source of a VM deployed once")
    parser.add_argument("--update-source", help="the source recorded for later updates (default: --source)")
    parser.add_argument("--owner", required=True, help="user:group owning the VM's state directory")
    args = parser.parse_args(argv)
    try:
        owner = owner_ids(*args.owner.split(":", 1))
        if args.runner:
            with locked(args.name) as state:
                state.path.mkdir(parents=True, exist_ok=True)
                os.chown(state.path, *owner)
                if state.current != args.runner:
                    state.switch_current(args.runner)
        else:
            with locked(args.name) as state:
                exists = state.installed
            if exists:
                print(f"{args.name} is installed; updates are `microvm update {args.name}`'s")
            else:
                lifecycle.create(args.name, args.source, Store(), owner=owner, update_source=args.update_source)
    except (MicrovmError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
