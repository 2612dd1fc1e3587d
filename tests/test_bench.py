"""The benchmark script runs end to end and writes a report with its three sections (no timing checks)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.boot
@pytest.mark.xdist_group("boot")
@pytest.mark.timeout(900)
def test_bench_quick_writes_report(tmp_path: Path) -> None:
    out = tmp_path / "b.md"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Machine", "## Build", "## Boot", "## Image sizes"):
        assert heading in text
    build = text.split("## Build", 1)[1].split("## Boot", 1)[0]
    boot = text.split("## Boot", 1)[1].split("## Image sizes", 1)[0]
    sizes = text.split("## Image sizes", 1)[1]
    assert re.search(r"Cold build.*\| \d+\.\d+ s \|", build)
    assert re.search(r"Warm build.*\| \d+ ms \|", build)
    assert re.search(r"Launch to marker \(median\) \| \d+\.\d+ s \| \d+\.\d+ s \| \d+\.\d+ \|", boot)
    assert re.search(r"Launch to power-off \(median\) \| \d+\.\d+ s \| \d+\.\d+ s \| \d+\.\d+ \|", boot)
    for row in ("bzImage", "vmlinux", "Initrd", "erofs", "squashfs"):
        assert re.search(rf"{row}.*\| \d+\.\d+ MiB", sizes), row
    assert "bench/run.py --quick" in text
