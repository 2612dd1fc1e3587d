"""The benchmark script runs end to end in quick mode and writes every section (no timing checks)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECTIONS = (
    "## Machine",
    "## Build and evaluation",
    "## Boot",
    "## Host cost per VM",
    "## Density",
    "## Image sizes",
    "## CLI on installed VMs",
    "## Command start-up",
    "## Suspend to disk and resume",
)


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


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
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for heading in SECTIONS:
        assert heading in text, heading
    assert "bench/run.py --quick" in text
    assert re.search(r"- libvirt: quick mode", text)  # skipped parts say why
    assert re.search(r"- Debian guest: quick mode", text)

    build = section(text, "## Build and evaluation")
    assert re.search(r"Cold build.*\| \d+\.\d+ s \|", build)
    assert re.search(r"Warm build.*\| \d+ ms \|", build)
    assert re.search(r"eval --host.* 50 VMs \| \d+ ms \|", build)

    boot = section(text, "## Boot")
    for method in ("microvm runner", "`microvm run FILE`", "plain qemu `-M microvm`"):
        row = next((line for line in boot.splitlines() if line.startswith(f"| {method}")), None)
        assert row is not None, method
        assert re.search(r"\| \d+\.\d+ s \|.*\| \d+\.\d+ s \| \d+\.\d+ \| n/a \|$", row), row  # no libvirt: n/a
    assert re.search(r"against \d+ ms for the runner alone: .* cost \*\*[+-]\d+ ms\*\*", boot)

    cost = section(text, "## Host cost per VM")
    assert re.search(r"microvm runner.*\| \d+\.\d+ MiB \| \d+\.\d+ MiB \|", cost)
    density = section(text, "## Density")
    assert re.search(r"^\| 1 \| \d+\.\d+ s \|", density, re.MULTILINE)

    sizes = section(text, "## Image sizes")
    for row in ("bzImage", "vmlinux", "Initrd", "erofs", "squashfs", "Total"):
        assert re.search(rf"{row}.*\| \d+\.\d+ MiB", sizes), row

    cli = section(text, "## CLI on installed VMs")
    for row in ("`microvm list` (3 VMs)", "`microvm status NAME`", "`microvm create NAME` of an already-built VM"):
        assert re.search(rf"{re.escape(row)} \| \d+ ms \|", cli), row

    startup = section(text, "## Command start-up")
    floor = r"\| \d+ ms \| – \| 1\.0× \| – \| – \| \d+ ms \(1\.0×\) \|"
    assert re.search(r"\| `python -c pass` \(the floor\) " + floor, startup), startup
    for row in ("`microvm --help`", "`microvm status NAME`", "`microvm check FILE` (one VM)"):
        assert re.search(rf"{re.escape(row)} \| \d+ ms \| – \| \d+\.\d× \| ≤ \d+× \| (yes|\*\*no\*\*) \|", startup), row
    for count in (3, 10):  # quick mode's installed VMs
        assert re.search(rf"^\| {count} \| \d+ ms \| \d+\.\d× \| n/a \|$", startup, re.MULTILINE), count
    assert re.search(r"costs \*\*-?\d+\.\d+ ms per extra installed VM\*\*", startup)

    suspend = section(text, "## Suspend to disk and resume")
    row = r"\| microvm \(`microvm suspend`.*\| \d+\.\d+ s \| \d+\.\d+ s \| \d+ MiB \| \d+\.\d+ s \(–\) \|"
    assert re.search(row, suspend), suspend


def test_ratio_interval_of_the_report() -> None:
    """The bootstrap interval: exact for noiseless samples, around the ratio of medians otherwise."""
    sys.path.insert(0, str(REPO / "bench"))
    from run import ratio_interval

    assert ratio_interval([2.0] * 5, [4.0] * 5) == (0.5, 0.5)
    low, high = ratio_interval([2.8, 3.0, 3.2, 3.4, 4.4], [3.9, 4.0, 4.2, 4.4, 5.5])
    assert low < 3.2 / 4.2 < high
    assert ratio_interval([2.8, 3.0, 3.2, 3.4, 4.4], [3.9, 4.0, 4.2, 4.4, 5.5]) == (low, high)  # seeded


def test_debian_section_of_the_report(tmp_path: Path) -> None:
    """The Debian part: every step's median and range, and each artifact's size (the squashfs one may be missing)."""
    from types import SimpleNamespace

    sys.path.insert(0, str(REPO / "bench"))
    from debian import DebianResults, report_section

    files = {name: tmp_path / name for name in ("vmlinux", "initrd", "root.erofs")}
    for i, path in enumerate(files.values()):
        path.write_bytes(b"x" * ((i + 1) << 20))
    built = SimpleNamespace(
        kernel=SimpleNamespace(vmlinux=files["vmlinux"]), initrd=files["initrd"], root_image=files["root.erofs"]
    )
    times = {
        "cold build": [80.0, 90.0],
        "warm build": [0.5, 0.7],
        "one-file rebuild": [9.0, 11.0],
        "boot to login": [20.0],
    }
    text = "\n".join(report_section(DebianResults(times, built, None)))
    assert "| cold build | 85.00 s | 80.00 s – 90.00 s |" in text
    assert "| boot to login | 20.00 s | – |" in text
    assert "| Root image, erofs (default, lz4hc) | 3.00 MiB |" in text
    assert re.search(r"squashfs.*\| n/a \|", text)


def test_the_start_up_section_replaces_its_old_self() -> None:
    """bench/cli.py run alone rewrites its own section of the report and leaves the others as they are."""
    sys.path.insert(0, str(REPO / "bench"))
    from cli import splice

    report = "# r\n\n## Boot\n\nboots\n\n## Suspend to disk and resume\n\nsaves\n"
    first = splice(report, "## Command start-up\n\nold\n")
    assert first == "# r\n\n## Boot\n\nboots\n\n## Command start-up\n\nold\n\n## Suspend to disk and resume\n\nsaves\n"
    assert splice(first, "## Command start-up\n\nnew\n") == first.replace("old", "new")
    assert splice("# r\n", "## Command start-up\n\nnew\n") == "# r\n\n## Command start-up\n\nnew\n"
