"""Progress of long work (kernel download, guest system or Debian bootstrap, root image, initrd): a spinner
on a terminal, one line per step on stderr otherwise (logs and CI show what ran), and a failure that
names the step it happened in (the tool's own last lines are in the error already)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from ..errors import MicrovmError
from .app import err


@contextlib.contextmanager
def steps(what: str) -> Iterator[Callable[[str], None]]:
    """``with steps("building web") as say: ...build(progress=say)``."""
    current = ["starting"]
    spinner = err.status(what, spinner="dots") if err.is_terminal else contextlib.nullcontext()

    def say(step: str) -> None:
        current[0] = step
        if err.is_terminal:
            spinner.update(f"{what}: {step}")  # type: ignore[union-attr]
        else:
            print(f"{what}: {step}", file=sys.stderr, flush=True)

    try:
        with spinner:
            yield say
    except MicrovmError as exc:
        raise MicrovmError(f"{what}: {current[0]} failed: {exc.message}", hint=exc.hint) from exc
