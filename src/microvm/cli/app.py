"""The typer application and the terminal output every command shares."""

from __future__ import annotations

import typer
from rich.console import Console

from ..errors import ConfigError

app = typer.Typer(
    name="microvm",
    help="Declarative, lightweight Linux virtual machines.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def warn(warnings: list[ConfigError]) -> None:
    for warning in warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", markup=True, soft_wrap=True)


# The command modules register themselves on `app`; last, as they import what is above.
from . import build_cmds, cluster_cmds, config_cmds, host_cmds, net_cmds, remote_cmds, vm_cmds, web_cmds  # noqa: F401
