"""The options reference, generated from the model (``microvm options``, docs/options.md)."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .options import HostConfig, VMConfig


@dataclass
class OptionDoc:
    path: str
    type: str
    default: Any
    required: bool
    computed: bool
    description: str
    example: Any = None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return ("null or " if type(None) in args else "") + " or ".join(names)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "table" if args[1] is Any else f"table of {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return {str: "string", int: "integer", bool: "boolean", float: "number", dict: "table"}.get(
        annotation, str(annotation)
    )


def _table(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The options table inside an annotation and the path suffix to reach it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    if origin is typing.Annotated:
        return _table(args[0])
    if origin is list and (inner := _table(args[0])):
        return inner[0], "[]" + inner[1]
    if origin is dict and (inner := _table(args[1])):
        return inner[0], ".<name>" + inner[1]
    if origin in (typing.Union, types.UnionType):
        tables = [t for a in args if (t := _table(a))]
        return tables[0] if len(tables) == 1 and not any(a is str for a in args) else None
    return None


def options_of(
    model: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None, described_by: str = ""
) -> list[OptionDoc]:
    """Every option below ``model``, depth first in declaration order.

    ``defaults`` is the parent's default instance of ``model``, whose values
    override the model's own field defaults (``optimize.enable`` is true).
    ``described_by`` is the parent field's description, for options without
    one of their own (the ``enable`` of an on/off table).
    """
    rows: list[OptionDoc] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}.{key}" if prefix else key
        required = field.default is PydanticUndefined and field.default_factory is None
        default = None if required else field.get_default(call_default_factory=True, validated_data={})
        if defaults is not None:
            default = getattr(defaults, name)
        table = _table(field.annotation)
        if table and typing.get_origin(field.annotation) is not list and table[1] == "":
            rows += options_of(
                table[0], path, default if isinstance(default, BaseModel) else None, field.description or ""
            )
            continue
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json", by_alias=True, exclude_none=True)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        rows.append(
            OptionDoc(
                path=path,
                type=_type_name(field.annotation),
                default=default,
                required=required,
                computed=bool(extra.get("computed")),
                description=field.description or described_by,
                example=field.examples[0] if field.examples else None,
            )
        )
        if table:
            rows += options_of(table[0], path + table[1])
    return rows


FILES = {"VM file": VMConfig, "host file": HostConfig}


def reference_json() -> str:
    return json.dumps({kind: [asdict(r) for r in options_of(m)] for kind, m in FILES.items()}, indent=1)


def reference_markdown() -> str:
    out = [
        "# Options reference",
        "",
        "Generated from the option model by `microvm options --format md`; do not edit by hand.",
        "Names follow microvm.nix; see [from-microvm-nix.md](from-microvm-nix.md) for the differences.",
        "Computed defaults (marked *computed*) depend on other options; `microvm eval` shows their values.",
    ]
    for kind, model in FILES.items():
        out += ["", f"## {kind}", ""]
        for row in options_of(model):
            default = "*required*" if row.required else "*computed*" if row.computed else f"`{json.dumps(row.default)}`"
            out += [f"### `{row.path}`", "", row.description, "", f"- type: {row.type}", f"- default: {default}"]
            if row.example is not None:
                out.append(f"- example: `{json.dumps(row.example)}`")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
