"""Errors the user sees.

Every failure a user can cause or fix is a :class:`MicrovmError`; the CLI
prints its message (and hint) without a traceback and exits non-zero.
"""

from __future__ import annotations

import re
from pathlib import Path


class MicrovmError(Exception):
    """An expected failure with a message meant for the user."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(MicrovmError):
    """A config file is wrong: names the file, the option path and what is valid."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        option: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ": ".join(part for part in (file, option) if part)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file = file
        self.option = option


class ConfigErrors(MicrovmError):
    """Several config problems found at once, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        lines = [str(e) for e in errors]
        super().__init__(
            lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n" + "\n".join(f"- {line}" for line in lines)
        )


class CommandError(MicrovmError):
    """An external program failed."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(
            f"command failed with exit code {returncode}: {' '.join(argv)}" + (f"\n{tail}" if tail else "")
        )
        self.argv = argv
        self.returncode = returncode
        self.output = output


def io_error(step: str, exc: OSError, where: Path | None = None) -> MicrovmError:
    """One line for a failed file operation (a full disk, an I/O error, no permission, a read-only file system):
    the step, the reason and the path, instead of a traceback (shutil's copytree lists every file that failed).

    ``where`` is named when the error has no path of its own (a failed write).
    """
    import shutil  # late on purpose: every helper a runner starts imports this module; only errors need it

    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        _, path, why = exc.args[0][0]
        reason = re.sub(r"^\[Errno \d+\] ", "", str(why)).split(":")[0]
    else:
        reason = exc.strerror or str(exc)
        path = exc.filename2 or exc.filename or where  # a copy's or a rename's destination
    return MicrovmError(f"{step}: {reason}" + (f": {path}" if path else ""))
