"""Long work shows its steps: one line per step when stderr is not a terminal; a failed step is named,
with the tool's own last lines."""

from __future__ import annotations

from pathlib import Path

from helpers import microvm, write_vm

VM = """
[guest]
hostName = "steps"
shell = false
commands = ["poweroff"]
[microvm]
mem = 128
storeDiskErofsFlags = [{flags}]
"""


def test_build_prints_a_line_per_step_and_names_the_step_that_failed(tmp_path: Path) -> None:
    good = write_vm(tmp_path / "good", VM.format(flags='"-zlz4hc"'))
    result = microvm("build", str(good))
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if line.startswith("building steps: ")]
    assert steps == [f"building steps: {step}" for step in ("kernel", "guest system", "erofs root image",
                                                           "initrd", "accelerator", "runner")]  # fmt: skip

    bad = write_vm(tmp_path / "bad", VM.format(flags='"--no-such-flag"'))
    result = microvm("build", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index("error: ") :]
    assert error.startswith("error: building steps: erofs root image failed: command failed with exit code")
    tail = error.split("\n", 1)[1]  # below the command line: the tool's own last lines
    assert "--no-such-flag" in error.split("\n", 1)[0] and "Available compressors are" in tail
