"""Validation against the official OpenAI response schemas (tests/data/openai_schemas.json, taken
from OpenAI's OpenAPI spec; provenance in openai_schemas.SOURCE.txt).

    assert_matches("CreateChatCompletionResponse", body)
    assert_matches("CreateChatCompletionStreamResponse", chunk)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

SCHEMA_PATH = Path(__file__).parent / "data" / "openai_schemas.json"


@functools.cache
def _bundle() -> tuple[dict[str, Any], Registry]:
    bundle = json.loads(SCHEMA_PATH.read_text())
    resource = Resource.from_contents(bundle)
    return bundle, Registry().with_resource(bundle["$id"], resource)


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    bundle, registry = _bundle()
    if name not in bundle["$defs"]:
        raise KeyError(f"no schema named {name}")
    schema = {"$ref": f"{bundle['$id']}#/$defs/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(name: str, instance: Any) -> list[str]:
    """Every way `instance` deviates from the schema `name`, as readable lines."""
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in _validator(name).iter_errors(instance)
    ]


def assert_matches(name: str, instance: Any) -> None:
    errors = schema_errors(name, instance)
    assert not errors, f"{name} deviations:\n" + "\n".join(errors) + f"\n--- instance:\n{instance!r}"
