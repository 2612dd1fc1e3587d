"""Reaching another host's ``microvm`` command through the user's ssh."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from .. import proc
from ..errors import CommandError, MicrovmError

_TARGET = re.compile(
    r"^(?:ssh://)?(?:(?P<user>[^@/:\s]+)@)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d+))?/?$"
)


@dataclass(frozen=True)
class Remote:
    """``ssh://[user@]host[:port]`` (or ``[user@]host``)."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Remote:
        match = _TARGET.match(text)
        if not match:
            raise MicrovmError(f"{text!r} is not a host", hint="ssh://[user@]host[:port] or [user@]host")
        port = match["port"]
        return cls(match["host"].strip("[]"), match["user"], int(port) if port else None)

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}"

    def argv(self, args: Sequence[str]) -> list[str]:
        """ssh running ``microvm ARGS`` there; ``$MICROVM_REMOTE_COMMAND`` names it if not ``microvm`` on PATH."""
        remote = shlex.split(os.environ.get("MICROVM_REMOTE_COMMAND", "microvm"))
        ssh = ["ssh", "-o", "BatchMode=yes", *(["-p", str(self.port)] if self.port else []), "-T"]
        return [*ssh, *(["-l", self.user] if self.user else []), self.host, "--", shlex.join([*remote, *args])]

    def run(self, *args: str, input: str | None = None, timeout: float | None = None) -> str:
        """Run ``microvm ARGS`` there; its stdout. A failure there is raised with its own message."""
        try:
            return proc.run(self.argv(args), input=input, timeout=timeout).stdout
        except CommandError as exc:
            raise self.failure(exc.returncode, exc.output, args) from None

    def spawn(self, *args: str, stdin: int | None = None, stdout: int | None = None) -> subprocess.Popen[bytes]:
        return proc.spawn(self.argv(args), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)

    def failure(self, returncode: int, output: str, args: Sequence[str]) -> MicrovmError:
        """The error of a remote command: ssh's own (255: unreachable, refused) or the microvm's there."""
        text = output.strip().removeprefix("error: ").strip()
        if returncode == 255:
            return MicrovmError(f"cannot reach {self} over ssh: {text}", hint="check `ssh HOST true` works")
        if returncode == 127:
            return MicrovmError(f"{self} has no microvm command: {text}", hint="install microvm there")
        return MicrovmError(f"on {self}: microvm {args[0]} failed: {text}")
