"""A small JSON Schema (draft 2020-12) validator for the keywords our vector schemas use.

It refuses schemas with keywords it does not implement (``SchemaError``), so it never silently
accepts what a full validator would reject. Implemented: ``$ref`` (local ``#/...`` pointers),
``type``, ``enum``, ``const``, ``properties``, ``required``, ``additionalProperties``,
``propertyNames``, ``items``, ``minItems``, ``uniqueItems``, ``pattern``, ``minLength``,
``minimum``, ``allOf``, ``anyOf``, ``oneOf``, ``not``, ``if``/``then``/``else``; the annotations
``$schema``, ``$id``, ``$defs``, ``$comment``, ``title``, ``description`` are ignored.
"""

from __future__ import annotations

import re
from typing import Any

ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description"})
KEYWORDS = frozenset({
    "$ref", "type", "enum", "const", "properties", "required", "additionalProperties", "propertyNames",
    "items", "minItems", "uniqueItems", "pattern", "minLength", "minimum", "allOf", "anyOf", "oneOf",
    "not", "if", "then", "else",
}) | ANNOTATIONS


class SchemaError(Exception):
    """The schema itself uses something this validator does not implement."""


def _is_type(x: Any, t: str) -> bool:
    if t == "null":
        return x is None
    if t == "boolean":
        return isinstance(x, bool)
    if t == "object":
        return isinstance(x, dict)
    if t == "array":
        return isinstance(x, list)
    if t == "string":
        return isinstance(x, str)
    if isinstance(x, bool):
        return False
    if t == "number":
        return isinstance(x, int | float)
    if t == "integer":  # 2020-12: a number with a zero fractional part
        return isinstance(x, int) or (isinstance(x, float) and x.is_integer())
    raise SchemaError(f"unknown type {t!r}")


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0), booleans distinct from numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _resolve(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        raise SchemaError(f"only local $ref is supported, got {ref!r}")
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def validate(instance: Any, schema: Any, root: Any | None = None, path: str = "$") -> list[str]:
    """Return the list of violations (empty when ``instance`` is valid)."""
    root = schema if root is None else root
    if schema is True:
        return []
    if schema is False:
        return [f"{path}: no value is allowed here"]
    if not isinstance(schema, dict):
        raise SchemaError(f"a schema must be an object or a boolean, got {schema!r}")
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise SchemaError(f"unsupported keywords {sorted(unknown)}")
    errs: list[str] = []
    x = instance
    if "$ref" in schema:
        errs += validate(x, _resolve(root, schema["$ref"]), root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(x, t) for t in types):
            errs.append(f"{path}: {x!r} is not of type {types}")
            return errs
    if "enum" in schema and not any(json_equal(x, e) for e in schema["enum"]):
        errs.append(f"{path}: {x!r} is not one of {schema['enum']}")
    if "const" in schema and not json_equal(x, schema["const"]):
        errs.append(f"{path}: {x!r} != {schema['const']!r}")
    if isinstance(x, str):
        if "pattern" in schema and re.search(schema["pattern"], x) is None:
            errs.append(f"{path}: {x!r} does not match {schema['pattern']!r}")
        if "minLength" in schema and len(x) < schema["minLength"]:
            errs.append(f"{path}: {x!r} is shorter than {schema['minLength']}")
    if _is_type(x, "number") and "minimum" in schema and x < schema["minimum"]:
        errs.append(f"{path}: {x!r} < {schema['minimum']}")
    if isinstance(x, list):
        if "minItems" in schema and len(x) < schema["minItems"]:
            errs.append(f"{path}: fewer than {schema['minItems']} items")
        if schema.get("uniqueItems") and any(json_equal(a, b) for i, a in enumerate(x) for b in x[i + 1:]):
            errs.append(f"{path}: items are not unique")
        if "items" in schema:
            for i, item in enumerate(x):
                errs += validate(item, schema["items"], root, f"{path}[{i}]")
    if isinstance(x, dict):
        for k in schema.get("required", []):
            if k not in x:
                errs.append(f"{path}: missing required property {k!r}")
        props = schema.get("properties", {})
        for k, v in x.items():
            if "propertyNames" in schema:
                errs += validate(k, schema["propertyNames"], root, f"{path}.<name {k!r}>")
            if k in props:
                errs += validate(v, props[k], root, f"{path}.{k}")
            elif "additionalProperties" in schema:
                errs += validate(v, schema["additionalProperties"], root, f"{path}.{k}")
    for sub in schema.get("allOf", []):
        errs += validate(x, sub, root, path)
    if "anyOf" in schema and not any(not validate(x, s, root, path) for s in schema["anyOf"]):
        errs.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema:
        n = sum(1 for s in schema["oneOf"] if not validate(x, s, root, path))
        if n != 1:
            errs.append(f"{path}: matches {n} branches of oneOf (exactly 1 required)")
    if "not" in schema and not validate(x, schema["not"], root, path):
        errs.append(f"{path}: matches a 'not' schema")
    if "if" in schema:
        branch = "then" if not validate(x, schema["if"], root, path) else "else"
        if branch in schema:
            errs += validate(x, schema[branch], root, path)
    return errs
