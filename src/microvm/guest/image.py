"""Read-only root images (erofs or squashfs) made from a system tree."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from .. import proc
from ..store import Store

TOOLS = {"erofs": "mkfs.erofs", "squashfs": "mksquashfs"}
PACKAGES = {"erofs": "erofs-utils", "squashfs": "squashfs-tools"}


@cache
def tool_version(kind: str) -> str:
    """The image tool's package version (the tools have no common --version), part of the inputs."""
    result = proc.run(["dpkg-query", "-W", "-f", "${Version}", PACKAGES[kind]], check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def build_root_image(
    store: Store, system: Path, kind: str, flags: list[str], name: str, keep_owners: bool = False
) -> Path:
    """Build (or find) the ``kind`` image of ``system``; return the image file.

    ``keep_owners``: keep the tree's owners (a Debian system has files of other users);
    else every file is root's, whoever built the tree.
    """
    tool = proc.which(TOOLS[kind], purpose=f"to build {kind} root images")
    inputs = {"system": str(system), "kind": kind, "flags": flags, "tool": tool_version(kind)}
    if keep_owners:
        inputs["keepOwners"] = True
    all_root = [] if keep_owners else ["--all-root" if kind == "erofs" else "-all-root"]
    filename = f"root.{kind}"

    def build(out: Path) -> None:
        image = out / filename
        if kind == "erofs":
            proc.run([tool, *flags, *all_root, "-T0", image, system])  # -T0: reproducible
        else:
            proc.run([tool, system, image, "-noappend", *all_root, "-quiet", "-no-progress", *flags])

    entry, _ = store.add(f"rootimage-{name}", inputs, build, references=(system,))
    return entry / filename
