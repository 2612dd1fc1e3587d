"""Read-only root images (erofs or squashfs) made from a system tree."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from .. import proc
from .store import Store

TOOLS = {"erofs": "mkfs.erofs", "squashfs": "mksquashfs"}
PACKAGES = {"erofs": "erofs-utils", "squashfs": "squashfs-tools"}


@cache
def tool_version(kind: str) -> str:
    """The image tool's package version (the tools have no common --version), part of the inputs."""
    result = proc.run(["dpkg-query", "-W", "-f", "${Version}", PACKAGES[kind]], check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def build_root_image(store: Store, system: Path, kind: str, flags: list[str], name: str) -> Path:
    """Build (or find) the ``kind`` image of ``system``; return the image file."""
    tool = proc.which(TOOLS[kind], purpose=f"to build {kind} root images")
    inputs = {"system": str(system), "kind": kind, "flags": flags, "tool": tool_version(kind)}
    filename = f"root.{kind}"

    def build(out: Path) -> None:
        image = out / filename
        if kind == "erofs":
            # --all-root: the guest sees root-owned files whoever built them; -T0: reproducible
            proc.run([tool, *flags, "--all-root", "-T0", image, system])
        else:
            proc.run([tool, system, image, "-noappend", "-all-root", "-quiet", "-no-progress", *flags])

    entry, _ = store.add(f"rootimage-{name}", inputs, build, references=(system,))
    return entry / filename
