"""Fuzzing ``microvm check`` (issue 15): whatever the file holds, an error or success, never a traceback,
and never a file written.

Configs are generated from the option model's JSON schema (so most reach the
cross-option and destination checks), then mutated: a leaf replaced by a wrong
type or a hostile value, an unknown key, deep nesting, a key dropped, odd
bytes in the file, imports of missing, looping or broken files. ``check`` runs
in-process through the CLI, with HOME, the store, the state directory and the
working directory in a temporary directory that must not change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from microvm.cli.app import app
from microvm.errors import MicrovmError
from microvm.model.options import HostConfig, VMConfig

# Per test: 300 in all in the default run, about 16 s on the 2-core machine; more for a longer campaign.
EXAMPLES = int(os.environ.get("MICROVM_FUZZ_EXAMPLES", "150"))

HOSTILE_STRINGS = st.sampled_from(
    [
        "",
        "\n",
        "web\n",
        "a\x00b",
        "\r\nExecStartPre=/bin/reboot",
        "../../../etc/passwd",
        "/",
        "a,b=c",
        "$(reboot)",
        "%i %n",
        "-rf",
        "'\"\\",
        "x" * 5000,
        "\u2028",
        "😀",
        "ﬁ",
        " ",
        "\t",
    ]
)
HOSTILE = st.one_of(
    HOSTILE_STRINGS,
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
NAMES = st.one_of(
    st.sampled_from(["web", "a", "vm-a", "ro-store"]), st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
)
COMMON_STRINGS = ["web", "vm-a", "/srv/data", "var.img", "02:00:00:00:00:01", "10.0.0.2/24", "x"]


def from_schema(node: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that (mostly) fit a JSON schema node: enough valid configs to reach the later checks."""
    if "$ref" in node:
        return from_schema(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "anyOf" in node:  # the option's examples and default describe every branch
        hints = {key: node[key] for key in ("examples", "default") if key in node}
        return st.one_of([from_schema({**n, **hints}, defs) for n in node["anyOf"] if n.get("type") != "null"])
    kind = node.get("type")
    if kind == "object" and "properties" in node:
        required = set(node.get("required", []))
        fields = {key: from_schema(value, defs) for key, value in node["properties"].items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    if kind == "object":
        values = node.get("additionalProperties")
        return st.dictionaries(NAMES, from_schema(values, defs) if isinstance(values, dict) else HOSTILE, max_size=2)
    if kind == "array":
        return st.lists(from_schema(node.get("items", {}), defs), max_size=3)
    if kind == "string":
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True)
        # valid-looking values: the hostile ones come from the mutation, one at a time, so they reach the checks
        default = [node["default"]] if isinstance(node.get("default"), str) else []
        return st.sampled_from(node.get("examples", []) + default or COMMON_STRINGS)
    if kind == "integer":
        low = node.get("minimum", node.get("exclusiveMinimum", -1) + 1)
        high = node.get("maximum", node.get("exclusiveMaximum", 2**16 + 1) - 1)
        return st.integers(min_value=low, max_value=high)
    if kind == "boolean":
        return st.booleans()
    return HOSTILE


SCHEMAS = {model: model.model_json_schema() for model in (VMConfig, HostConfig)}
CONFIGS = {model: from_schema(schema, schema.get("$defs", {})) for model, schema in SCHEMAS.items()}


def _paths(data: Any, path: tuple = ()) -> list[tuple]:
    """Every key and index path into ``data`` (the root too)."""
    found = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, (*path, index))
    return found


def _nest(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


@st.composite
def mutated(draw: st.DrawFn, model: type) -> dict[str, Any]:
    """A config of ``model`` with one thing (or nothing) made wrong."""
    data = draw(CONFIGS[model])
    kind = draw(st.sampled_from(["none", "leaf", "unknown key", "deep", "drop", "leaf"]))
    path = draw(st.sampled_from(_paths(data)))
    path = path[: draw(st.integers(0, len(path)))]  # every depth alike: a whole table as often as a leaf
    if not path:
        return {**data, draw(st.text(min_size=1, max_size=8)): draw(HOSTILE)} if kind == "unknown key" else data
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if kind == "leaf":
        parent[last] = draw(HOSTILE)
    elif kind == "unknown key" and isinstance(parent[last], dict):
        parent[last][draw(st.one_of(HOSTILE_STRINGS, st.text(min_size=1, max_size=8)))] = draw(HOSTILE)
    elif kind == "deep":
        parent[last] = _nest(parent[last], draw(st.integers(30, 150)), draw(st.booleans()))  # deeper: raw bytes below
    elif kind == "drop" and isinstance(parent, dict):
        del parent[last]
    return data


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for root in roots
        for p in [root, *root.rglob("*")]
        if p.exists()
    }


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Path]]:
    """A directory for the config files, and the directories that ``check`` must leave alone."""
    watched = [tmp_path / name for name in ("home", "store", "state", "cwd")]
    for directory in watched:
        directory.mkdir()
    monkeypatch.setenv("HOME", str(watched[0]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(watched[0] / ".cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(watched[0] / ".local/state"))
    monkeypatch.setenv("MICROVM_STORE", str(watched[1]))
    monkeypatch.setenv("MICROVM_STATE_DIR", str(watched[2]))
    monkeypatch.chdir(watched[3])
    configs = tmp_path / "configs"
    configs.mkdir()
    return configs, watched


def check_survives(sandbox: tuple[Path, list[Path]], files: dict[str, bytes]) -> None:
    """``microvm check`` of ``vm.toml`` among ``files``: success or a MicrovmError, and nothing written."""
    configs, watched = sandbox
    for old in configs.iterdir():
        old.unlink()
    for name, content in files.items():
        (configs / name).write_bytes(content)
    before = _snapshot(*watched)
    result = CliRunner().invoke(app, ["check", str(configs / "vm.toml")])
    event("check: ok" if result.exit_code == 0 else "check: error")
    if result.exception is not None and not isinstance(result.exception, (MicrovmError, SystemExit)):
        raise AssertionError(f"traceback from check: {type(result.exception).__name__}: {result.exception}")
    assert "Traceback" not in result.output
    assert _snapshot(*watched) == before, "check wrote a file"


def _toml(data: dict[str, Any]) -> bytes:
    return tomli_w.dumps(data).encode()


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis directory in the working directory
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(
    data=st.one_of(mutated(VMConfig), mutated(HostConfig)),
    imports=st.sampled_from([[], ["other.toml"], ["missing.toml"], ["vm.toml"], ["loop.toml"], ["/"], ["a\0b"]]),
    other=mutated(VMConfig),
)
def test_check_of_generated_configs_never_tracebacks_nor_writes(
    sandbox: tuple[Path, list[Path]], data: dict[str, Any], imports: list[str], other: dict[str, Any]
) -> None:
    files = {"vm.toml": _toml({"imports": imports, **data} if imports else data), "other.toml": _toml(other)}
    if imports == ["loop.toml"]:
        files["loop.toml"] = _toml({"imports": ["vm.toml"]})
    check_survives(sandbox, files)


@SETTINGS
@given(
    data=mutated(VMConfig),
    position=st.floats(0, 1),
    junk=st.one_of(
        st.binary(min_size=1, max_size=16),
        st.sampled_from([b"\xff", b"\x00", b"[", b"\n[[", b'"\\u', b"\na = " + b"[" * 1000 + b"]" * 1000 + b"\n"]),
        st.integers(100, 2000).map(lambda depth: b"\n" + b".".join([b"k"] * depth) + b" = 1\n"),
    ),
    whole=st.booleans(),
)
def test_check_of_odd_bytes_never_tracebacks_nor_writes(
    sandbox: tuple[Path, list[Path]], data: dict[str, Any], position: float, junk: bytes, whole: bool
) -> None:
    text = _toml(data)
    at = int(len(text) * position)
    content = junk * 64 if whole else text[:at] + junk + text[at:]
    check_survives(sandbox, {"vm.toml": content})


def test_the_sandbox_sees_a_written_file(sandbox: tuple[Path, list[Path]]) -> None:
    """The fuzz tests' "nothing written" can fail: a file in the watched working directory is seen."""
    _, watched = sandbox
    before = _snapshot(*watched)
    (Path(os.getcwd()) / "written").write_text("x")
    assert _snapshot(*watched) != before
