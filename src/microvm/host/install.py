"""What install-microvm-NAME runs (``python -m microvm.helpers install NAME (--runner PATH | --source URL)``).

A fully declared VM (``--runner``) gets ``current`` pointed at the runner `microvm host apply`
built; a VM deployed from a source (``--source``) is created once when missing and
never touched again (later changes are `microvm update`'s), as microvm.nix does.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MicrovmError
from ..store import Store
from . import lifecycle
from .statedir import locked, owner_ids


def install(
    name: str,
    owner: tuple[str, str],
    runner: Path | None = None,
    source: str | None = None,
    update_source: str | None = None,
) -> str | None:
    """Install VM ``name`` from ``runner`` or ``source``, its state directory owned by (user, group) ``owner``.

    Returns what to tell the user when a VM from a source is installed already.
    """
    try:
        ids = owner_ids(*owner)
    except KeyError as exc:
        raise MicrovmError(f"{name}: the owner {':'.join(owner)} does not exist here ({exc.args[0]})") from None
    if runner is not None:
        with locked(name) as state:
            state.path.mkdir(parents=True, exist_ok=True)
            os.chown(state.path, *ids)
            if state.current != runner:
                state.switch_current(runner)
        return None
    if source is None:
        raise MicrovmError(f"{name}: either a runner or a source to install")
    with locked(name) as state:
        exists = state.installed
    if exists:
        return f"{name} is installed; updates are `microvm update {name}`'s"
    lifecycle.create(name, source, Store(), owner=ids, update_source=update_source)
    return None
