"""The smallest JSON value a JSON Schema accepts, chosen deterministically.

What the simulator writes for tool-call arguments and `response_format` outputs, so that the gateway's
tool and structured-output paths can be tested end to end. Objects get their required properties (and
more only when minProperties asks), arrays their minimum number of items, strings the empty string or
a fixed example of their format, numbers the value nearest zero in range. `pattern` and `not` are not
honoured: a simulator is not a constraint solver.
"""

from __future__ import annotations

import math
from typing import Any

_MAX_DEPTH = 32

_FORMAT_EXAMPLES = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "duration": "PT0S",
    "email": "user@example.com",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def minimal_instance(schema: Any) -> Any:
    return _instance(schema, schema, 0)


def _instance(schema: Any, root: Any, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "$ref" in schema:
        return _instance(_resolve(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _instance({**_without(schema, key), **schema[key][0]}, root, depth + 1)
    if schema.get("allOf"):
        return _instance(_merge_all_of(schema, root), root, depth + 1)
    kind = _type_of(schema)
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    return None


def _type_of(schema: dict) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        # Prefer a concrete type to null: the output then shows the field's shape.
        kind = next((k for k in kind if k != "null"), "null" if kind else None)
    if kind is not None:
        return kind
    if {"properties", "required", "additionalProperties", "minProperties"} & schema.keys():
        return "object"
    if {"items", "prefixItems", "minItems"} & schema.keys():
        return "array"
    if {"minLength", "maxLength", "format", "pattern"} & schema.keys():
        return "string"
    if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"} & schema.keys():
        return "number"
    return None


def _object(schema: dict, root: Any, depth: int) -> dict:
    properties = schema.get("properties") or {}
    names = list(dict.fromkeys(schema.get("required") or []))
    for name in properties:
        if len(names) >= schema.get("minProperties", 0):
            break
        if name not in names:
            names.append(name)
    return {name: _instance(properties.get(name, {}), root, depth + 1) for name in names}


def _array(schema: dict, root: Any, depth: int) -> list:
    items = [_instance(item, root, depth + 1) for item in schema.get("prefixItems") or []]
    item_schema = schema.get("items") if isinstance(schema.get("items"), dict) else {}
    while len(items) < schema.get("minItems", 0):
        items.append(_instance(item_schema, root, depth + 1))
    return items


def _string(schema: dict) -> str:
    value = _FORMAT_EXAMPLES.get(schema.get("format", ""), "")
    value = value.ljust(schema.get("minLength", 0), "a")
    if "maxLength" in schema:
        value = value[: schema["maxLength"]]
    return value


def _number(schema: dict, *, integer: bool) -> int | float:
    low, high = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
    step = schema.get("multipleOf") or (1 if integer else 0)
    if "exclusiveMinimum" in schema:
        low = max(low, schema["exclusiveMinimum"] + (step or 1))
    if "exclusiveMaximum" in schema:
        high = min(high, schema["exclusiveMaximum"] - (step or 1))
    value = min(max(0, low), high)
    if step:
        value = math.ceil(value / step) * step
    return int(value) if integer else value


def _resolve(reference: str, root: Any) -> Any:
    """A local reference ("#/$defs/Item"); anything else resolves to the empty schema."""
    if not reference.startswith("#"):
        return {}
    node = root
    for part in reference.lstrip("#").strip("/").split("/") if reference != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _without(schema: dict, key: str) -> dict:
    return {k: v for k, v in schema.items() if k != key}


def _merge_all_of(schema: dict, root: Any) -> dict:
    merged = _without(schema, "allOf")
    for part in schema["allOf"]:
        if isinstance(part, dict) and "$ref" in part:
            part = _resolve(part["$ref"], root)
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged
