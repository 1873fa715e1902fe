"""JSON Schemas of ``results.jsonl`` lines and ``run.json``, generated from the typed records
(``records.CellRecord`` and ``records.RunMeta``: the same source as the README's field table).

The shipped files (``schemas/*.schema.json``) are this module's output; a test keeps them equal
to it. Regenerate with ``python -m fwbench.harness.record_schema``. Any JSON Schema validator
(draft 2020-12) checks a run's files against them without fwbench.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from fwbench.harness import records

FOLDER = Path(__file__).parent / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
FILES = {"results.schema.json": (records.CellRecord, "one line of results.jsonl"),
         "run.schema.json": (records.RunMeta, "run.json")}


def _type(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """The schema of one annotation; nested records go into ``defs`` (``$ref``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        options = [_type(a, defs) for a in args if a is not type(None)]
        found = options[0] if len(options) == 1 else {"anyOf": options}
        return {"anyOf": [found, {"type": "null"}]} if type(None) in args else found
    if dataclasses.is_dataclass(hint):
        if hint.__name__ not in defs:
            defs[hint.__name__] = {}  # a placeholder while its fields are built
            defs[hint.__name__] = _object(hint, defs)
        return {"$ref": f"#/$defs/{hint.__name__}"}
    if origin in (list, tuple):
        items = args[0] if args and (origin is list or args[-1] is Ellipsis) else None
        if origin is tuple and args and args[-1] is not Ellipsis:
            return {"type": "array", "prefixItems": [_type(a, defs) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", **({"items": _type(items, defs)} if items is not None else {})}
    if origin is dict:
        return {"type": "object", **({"additionalProperties": _type(args[1], defs)} if args else {})}
    simple = {str: "string", bool: "boolean", int: "integer", dict: "object", list: "array"}
    if hint in simple:
        return {"type": simple[hint]}
    if hint is float:  # NaN and infinities are written as null (records._json_value)
        return {"type": ["number", "null"]}
    raise TypeError(f"no JSON Schema for the annotation {hint!r}")


def _object(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    """A record's fields: every one known (records refuse unknown ones), those without a
    default required, each with its meaning and unit where the record gives them."""
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        prop = _type(hints[f.name], defs)
        doc, unit = f.metadata.get("doc"), f.metadata.get("unit")
        if doc:
            prop = {**prop, "description": doc + (f" [{unit}]" if unit else "")}
        props[f.name] = prop
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    if cls.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    return out


def schema(cls: type, title: str) -> dict[str, Any]:
    """The whole schema of a top-level record (with its ``schema`` version field)."""
    defs: dict[str, Any] = {}
    top = _object(cls, defs)
    top["properties"] = {"schema": {"const": records.SCHEMA, "description": "records' schema "
                                    "version"}, **top["properties"]}
    top["required"] = ["schema", *top.get("required", [])]
    return {"$schema": DIALECT, "$id": f"https://fwbench.invalid/schemas/{title}", "title": title,
            **top, "$defs": dict(sorted(defs.items()))}


def generated() -> dict[str, str]:
    """File name -> its text, as shipped."""
    return {name: json.dumps(schema(cls, name), indent=1) + "\n" for name, (cls, _) in FILES.items()}


def write() -> list[Path]:
    FOLDER.mkdir(exist_ok=True)
    out = []
    for name, text in generated().items():
        (FOLDER / name).write_text(text)
        out.append(FOLDER / name)
    return out


if __name__ == "__main__":
    for path in write():
        print(f"wrote {path}")
