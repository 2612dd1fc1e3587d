"""Colours on a terminal: what `list`, `status`, `check` and every error print, without rich (start-up speed)."""

from __future__ import annotations

import os
from typing import TextIO

ANSI = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}


def use_colour(stream: TextIO) -> bool:
    """Colours on a terminal unless NO_COLOR (https://no-color.org) or a dumb terminal says otherwise."""
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def paint(text: str, colour: str | None, on: bool) -> str:
    return f"\033[{ANSI[colour]}m{text}\033[0m" if on and colour and text else text
