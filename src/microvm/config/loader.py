"""Loading TOML config files: imports, merging, and errors that name the file.

Merging works like NixOS modules: a file's ``imports`` are merged first, in
order; tables merge recursively, lists concatenate (imports first, then the
file's own items), and a file's own scalar overrides what its imports set.
Two imports that set one scalar to different values is an error naming both
files, unless the importing file settles it by setting the value itself.

Every leaf remembers the file that set it, so a validation error can name the
file and the option path (``microvm.interfaces[1].mac``).
"""

from __future__ import annotations

import difflib
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, ConfigErrors
from ..model import options
from ..model.problems import OptionPath, format_path


@dataclass
class _Leaf:
    """A scalar (or a whole inline value) and the file that set it."""

    value: Any
    file: Path


@dataclass
class _List:
    """A list whose items each remember their file (lists concatenate)."""

    items: list[tuple[Any, Path]] = field(default_factory=list)


def _annotate(raw: Any, file: Path) -> Any:
    if isinstance(raw, dict):
        return {key: _annotate(value, file) for key, value in raw.items()}
    if isinstance(raw, list):
        return _List([(item, file) for item in raw])
    return _Leaf(raw, file)


def value_at(tree: Any, path: OptionPath) -> Any:
    """What the tables of ``tree`` hold at ``path``; None if nothing."""
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _kind(node: Any) -> str:
    return "table" if isinstance(node, dict) else "list" if isinstance(node, _List) else "value"


def _first_file(node: Any) -> Path | None:
    if isinstance(node, _Leaf):
        return node.file
    if isinstance(node, _List):
        return node.items[0][1] if node.items else None
    for child in node.values():
        if (found := _first_file(child)) is not None:
            return found
    return None


def _merge(base: Any, top: Any, path: OptionPath, *, own: Any = None, importer: Path | None = None) -> Any:
    """Merge ``top`` over ``base``.

    With ``own`` given, ``base`` and ``top`` are two imports of ``importer``
    and differing scalars are a conflict unless ``own`` sets that path.
    Without it, ``top`` is the file's own value and simply wins.
    """
    if isinstance(base, dict) and isinstance(top, dict):
        merged = dict(base)
        for key, value in top.items():
            merged[key] = _merge(base[key], value, (*path, key), own=own, importer=importer) if key in base else value
        return merged
    if isinstance(base, _List) and isinstance(top, _List):
        return _List(base.items + top.items)
    if own is None or value_at(own, path) is not None:
        if _kind(base) != _kind(top) and own is None:
            raise ConfigError(
                f"is a {_kind(top)} here but a {_kind(base)} in {_first_file(base)}",
                file=str(_first_file(top)),
                option=format_path(path),
            )
        return top
    if isinstance(base, _Leaf) and isinstance(top, _Leaf) and base.value == top.value:
        return top
    raise ConfigError(
        f"set to {_describe(top)} in {_first_file(top)} and to {_describe(base)} in {_first_file(base)}",
        file=str(importer),
        option=format_path(path),
        hint=f"set {format_path(path)} in {importer} to choose",
    )


def _describe(node: Any) -> str:
    return repr(node.value) if isinstance(node, _Leaf) else f"a {_kind(node)}"


def _unwrap(node: Any, path: OptionPath, origins: dict[OptionPath, Path]) -> Any:
    if isinstance(node, dict):
        return {key: _unwrap(value, (*path, key), origins) for key, value in node.items()}
    if isinstance(node, _List):
        for index, (_, file) in enumerate(node.items):
            origins[(*path, index)] = file
        if node.items:
            origins[path] = node.items[-1][1]
        return [item for item, _ in node.items]
    origins[path] = node.file
    return node.value


@dataclass
class Loaded:
    """A config file after imports and merging, before validation."""

    file: Path
    data: dict[str, Any]
    origins: dict[OptionPath, Path]
    files: list[Path]

    def origin(self, path: OptionPath) -> Path:
        """The file that set ``path`` (or the nearest enclosing value)."""
        for end in range(len(path), 0, -1):
            if (found := self.origins.get(path[:end])) is not None:
                return found
        return self.file


# Deeper than this is no config (the options nest a few levels) and would exhaust Python's stack.
MAX_NESTING = 64
MAX_IMPORT_DEPTH = 64  # files importing files importing ... this deep


@dataclass(frozen=True)
class Referrer:
    """The file and option that name another config file: errors about that file are reported there."""

    file: Path
    option: str
    what: str = "imported file"


def _nesting(data: Any) -> int:
    """How deep tables and lists nest in ``data`` (iteratively: the answer must not need the stack it measures)."""
    deepest, todo = 0, [(data, 0)]
    while todo:
        node, depth = todo.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth + 1)
            todo += [(child, depth + 1) for child in children]
    return deepest


def _read_toml(file: Path, referrer: Referrer | None) -> dict[str, Any]:
    def error(problem: str) -> ConfigError:
        if referrer is None:
            return ConfigError(problem, file=str(file))
        return ConfigError(f"{referrer.what} {file} {problem}", file=str(referrer.file), option=referrer.option)

    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise error("does not exist") from None
    except OSError as exc:
        raise error(f"cannot be read: {exc.strerror or exc}") from None
    except ValueError:  # the name holds a NUL, which no file name can
        raise error("cannot be read: its name contains a NUL character") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"is not valid UTF-8 (line {line}, byte {exc.start})") from None
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"is not valid TOML: {exc}") from None
    except RecursionError:
        raise error(f"nests tables and lists too deeply; at most {MAX_NESTING} levels") from None
    if (depth := _nesting(parsed)) > MAX_NESTING:
        raise error(f"nests tables and lists {depth} levels deep; at most {MAX_NESTING}")
    return parsed


def _load_tree(file: Path, stack: tuple[Path, ...], files: list[Path], referrer: Referrer | None) -> Any:
    file = file.absolute()
    if file in stack:
        cycle = " -> ".join(str(p) for p in (*stack[stack.index(file) :], file))
        raise ConfigError(f"imports form a cycle: {cycle}", file=str(stack[-1]), option="imports")
    if len(stack) >= MAX_IMPORT_DEPTH and referrer is not None:
        raise ConfigError(
            f"imports nest more than {MAX_IMPORT_DEPTH} files deep (the chain starts at {stack[0]})",
            file=str(referrer.file),
            option=referrer.option,
        )
    raw = _read_toml(file, referrer)
    files.append(file)
    imports = raw.pop("imports", [])
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise ConfigError(
            f"must be a list of file names, got {imports!r}",
            file=str(file),
            option="imports",
            hint='imports = ["common.toml"]',
        )
    own = _annotate(raw, file)
    merged: Any = {}
    for index, name in enumerate(imports):
        child = _load_tree(file.parent / name, (*stack, file), files, Referrer(file, f"imports[{index}]"))
        merged = _merge(merged, child, (), own=own, importer=file) if merged else child
    return _merge(merged, own, ()) if merged else own


def load(file: Path, referrer: Referrer | None = None) -> Loaded:
    """Read ``file`` and its imports and merge them; ``referrer``: the file and option that name ``file``."""
    files: list[Path] = []
    tree = _load_tree(Path(file), (), files, referrer)
    origins: dict[OptionPath, Path] = {}
    data = _unwrap(tree, (), origins)
    return Loaded(Path(file).absolute(), data, origins, files)


# --- validation errors --------------------------------------------------------


def _inner_models(annotation: Any) -> list[type[BaseModel]]:
    """The option tables an annotation can hold (through list/dict/Optional)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _inner_models(arg)
    return found


def _model_at(root: type[BaseModel], loc: OptionPath) -> type[BaseModel] | None:
    """The options table a location points into, for "did you mean"."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        fields = {(f.alias or name): f for name, f in model.model_fields.items()}
        if part not in fields:
            # a dict key such as services.<name>: stay on the value type
            continue
        models = _inner_models(fields[part].annotation)
        model = models[0] if models else None
    return model


def _suggest(root: type[BaseModel], loc: OptionPath) -> str | None:
    model = _model_at(root, loc[:-1])
    if model is None or not loc:  # a key named like one of pydantic's markers (`str = 1`) leaves no location
        return None
    known = [f.alias or name for name, f in model.model_fields.items()]
    wrong = str(loc[-1])
    lowered = {k.lower(): k for k in known}
    matches = ([lowered[wrong.lower()]] if wrong.lower() in lowered else []) or difflib.get_close_matches(
        wrong, known, n=1, cutoff=0.6
    )
    if matches:
        return f"did you mean {format_path((*loc[:-1], matches[0]))}?"
    return f"valid options here: {', '.join(sorted(known))}"


_TYPE_NAMES = {str: "string", int: "integer", float: "float", bool: "boolean", list: "list", dict: "table"}


def _message(error: dict[str, Any]) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown option"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    value = error.get("input")
    got = f"{value!r}" + (f" ({_TYPE_NAMES[type(value)]})" if type(value) in _TYPE_NAMES else "")
    return f"{msg[0].lower()}{msg[1:]}; got {got}"


def validation_errors(
    exc: ValidationError, loaded: Loaded, root: type[BaseModel], prefix: OptionPath = ()
) -> ConfigErrors:
    """Turn pydantic's errors into ours: file, option path, message, hint."""
    errors = []
    for error in exc.errors():
        loc = (*prefix, *(_clean_loc(error["loc"]) or error["loc"][-1:]))
        hint = _suggest(root, loc[len(prefix) :]) if error["type"] == "extra_forbidden" else None
        errors.append(ConfigError(_message(error), file=str(loaded.origin(loc)), option=format_path(loc), hint=hint))
    return ConfigErrors(errors)


_BRANCH_MARKERS = {"str", "int", "bool", "float", "none", "list", "dict", "constrained-int", "constrained-str"}
_BRANCH_CALL = re.compile(r"[a-z-]+\[.*\]")  # function-after[_name(), str], list[str]: not a key such as "["


def _clean_loc(loc: tuple[Any, ...]) -> OptionPath:
    """Drop pydantic's union-branch markers (``str``, ``VMConfig``, ``function-after[...]``) from a location."""
    return tuple(
        part
        for part in loc
        if isinstance(part, int)
        or not (part in _BRANCH_MARKERS or _BRANCH_CALL.fullmatch(part) or part in _option_model_names())
    )


def _option_model_names() -> set[str]:
    return {name for name, obj in vars(options).items() if isinstance(obj, type) and issubclass(obj, BaseModel)}


def validate(loaded: Loaded, model: type[BaseModel], data: dict[str, Any] | None = None) -> Any:
    """Validate merged data against ``model``; raise :class:`ConfigErrors`."""
    try:
        return model.model_validate(loaded.data if data is None else data)
    except ValidationError as exc:
        raise validation_errors(exc, loaded, model) from None
