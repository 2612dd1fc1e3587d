"""``microvm web``: the page and JSON API of the installed VMs (see microvm.web)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import MicrovmError
from ..host.statedir import default_state_dir
from .app import app

DEFAULT_LISTEN = "127.0.0.1:8480"


@app.command()
def web(
    listen: Annotated[
        str, typer.Option(help="unix:/PATH (mode 0660, group --group), or ADDRESS:PORT (with a per-start token).")
    ] = DEFAULT_LISTEN,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): needed beyond loopback.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    group: Annotated[str, typer.Option(help="Group that may use the unix socket.")] = "kvm",
    token_file: Annotated[
        Path | None, typer.Option(help="Write the address with the token here (mode 0600) instead of printing it.")
    ] = None,
) -> None:
    """Serve a page with every installed VM: state, start/stop/restart/suspend/update, live consoles."""
    try:
        # the web stack (starlette, uvicorn) loads only for this command, not at every microvm start-up
        from ..web import serve
    except ImportError as exc:
        raise MicrovmError(f"microvm web needs the web extra: {exc}", hint="pip install 'microvm[web]'") from None
    if (tls_cert is None) != (tls_key is None):
        raise MicrovmError("web: --tls-cert and --tls-key go together")
    tls = serve.TLS(tls_cert, tls_key) if tls_cert and tls_key else None
    serve.serve(serve.Listen.parse(listen), state_dir=default_state_dir(), tls=tls, group=group, token_file=token_file)
