"""Read-only root images (erofs or squashfs) made from a system tree.

The image is made from a private copy of the tree with what the store's sealing
took away given back (the guest's 1777 /tmp, setuid programs, its users' files)
and without the store's own files: neither image tool can change modes on the
way (erofs-utils 1.5 has no pseudo files). Both images are byte-reproducible.
"""

from __future__ import annotations

import os
import shutil
from functools import cache
from pathlib import Path

from .. import proc
from ..store import METADATA, Store, restore

IMAGE_FORMAT = 2  # bump when the image of one tree changes
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
    inputs = {"format": IMAGE_FORMAT, "system": str(system), "kind": kind, "flags": flags, "tool": tool_version(kind)}
    if keep_owners:
        inputs["keepOwners"] = True
    all_root = [] if keep_owners else ["--all-root" if kind == "erofs" else "-all-root"]
    filename = f"root.{kind}"

    def build(out: Path) -> None:
        image = out / filename
        tree = out / "tree"  # in the store's private build directory, gone before the entry is finished
        proc.run(["cp", "-a", "--reflink=auto", f"{system}/.", tree])
        for meta in METADATA:
            (tree / meta).unlink(missing_ok=True)
        restore(tree, store.permissions(system))
        if os.geteuid() == 0:
            os.chown(tree, 0, 0)
        tree.chmod(0o755)  # the guest's /; the entry's own mode says who on the host may read it
        if kind == "erofs":
            proc.run([tool, *flags, *all_root, "-T0", image, tree])  # -T0: reproducible
        else:
            fixed_times = ["-mkfs-time", "0", "-all-time", "0"]  # with -reproducible (the default): reproducible
            proc.run([tool, tree, image, "-noappend", *all_root, *fixed_times, "-quiet", "-no-progress", *flags])
        shutil.rmtree(tree)

    entry, _ = store.add(f"rootimage-{name}", inputs, build, references=(system,), private=True)
    return entry / filename
