"""The registry file: its format, environment expansion, name resolution and reloading."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import grpc
import pytest

from services.common.errors import ModelNotFoundError
from services.router.registry import RegistryError, RegistryFile, expand_env, parse_registry
from services.router.settings import DEFAULT_REGISTRY_PATH

MODELS = textwrap.dedent(
    """
    models:
      - id: acme/chat-small
        provider: acme
        aliases: [small]
        quality: 0.4
        input_price: 0.1
        output_price: 0.2
        context_window: 8192
        replicas: ["10.0.0.1:50061"]
      - id: acme/coder:2
        provider: acme
        quality: 0.7
        input_price: 1
        output_price: 2
        context_window: 32768
        capabilities: {tools: true, lora_adapters: [acme-sql]}
        engine_model: coder-v2
        replicas: "10.0.0.2:50061, 10.0.0.3:50061"
      - id: globex/chat-small
        provider: globex
        quality: 0.5
        input_price: 0.1
        output_price: 0.2
        context_window: 8192
        replicas: ["10.0.0.4:50061"]
    """
)


def test_names_resolve_by_id_alias_adapter_and_unambiguous_short_name():
    registry = parse_registry(MODELS, environ={})
    assert registry.resolve("acme/chat-small").entry.id == "acme/chat-small"
    assert registry.resolve("small").entry.id == "acme/chat-small"
    assert registry.resolve("coder:2").entry.id == "acme/coder:2"
    adapter = registry.resolve("acme-sql")
    assert (adapter.entry.id, adapter.engine_model) == ("acme/coder:2", "acme-sql")
    assert registry.resolve("acme/coder:2").engine_model == "coder-v2"
    # Two models are called "chat-small": the short name is ambiguous and resolves to nothing.
    with pytest.raises(ModelNotFoundError) as caught:
        registry.resolve("chat-small")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert registry.aliases(registry.resolve("acme/coder:2").entry) == ["coder:2"]
    assert registry.aliases(registry.resolve("small").entry) == ["small"]


def test_replicas_may_be_one_comma_separated_string():
    registry = parse_registry(MODELS, environ={})
    assert registry.resolve("coder:2").entry.replicas == ("10.0.0.2:50061", "10.0.0.3:50061")
    assert registry.replica_addresses() == {f"10.0.0.{i}:50061" for i in range(1, 5)}


def test_environment_expansion_with_defaults():
    assert expand_env("${HOST:-127.0.0.1}:${PORT}", {"PORT": "50061"}) == "127.0.0.1:50061"
    assert expand_env("${HOST:-127.0.0.1}", {"HOST": ""}) == "127.0.0.1", "an empty value takes the default"
    with pytest.raises(RegistryError, match="PORT"):
        expand_env("${PORT}", {})


def test_expanded_values_cannot_change_the_yaml_structure():
    text = MODELS.replace('"10.0.0.1:50061"', '"${ENGINE}"')
    registry = parse_registry(text, environ={"ENGINE": "a:1]\n  - evil: [x"})
    assert registry.resolve("small").entry.replicas == ("a:1]\n  - evil: [x",)


def test_the_embedded_default_serves_the_local_engine_named_by_the_environment():
    text = DEFAULT_REGISTRY_PATH.read_text()
    default = parse_registry(text, environ={})
    assert [(m.id, m.replicas) for m in default.models] == [("switchyard/sim", ("127.0.0.1:50061",))]
    local = parse_registry(
        text,
        environ={
            "SWITCHYARD_LOCAL_MODEL": "switchyard/tiny-llama",
            "SWITCHYARD_LOCAL_ENGINE": "127.0.0.1:6000",
        },
    )
    assert [(m.id, m.replicas) for m in local.models] == [("switchyard/tiny-llama", ("127.0.0.1:6000",))]


def test_the_example_registry_is_valid():
    example = parse_registry(
        (DEFAULT_REGISTRY_PATH.parents[1] / "models.example.yaml").read_text(), environ={}
    )
    assert {m.provider for m in example.models} >= {"meta", "qwen", "mistral"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("acme/chat-small", "chat-small"), "id"),  # not owner/name
        (("quality: 0.4", "quality: 1.4"), "quality"),
        (("aliases: [small]", "aliases: [coder:2]"), "already the short name"),
        (("aliases: [small]", "aliases: [globex/chat-small]"), "already the name"),
        (("globex/chat-small", "acme/chat-small"), "declared twice"),
        (("provider: acme\n    aliases", "provider: acme\n    colour: blue\n    aliases"), "colour"),
    ],
)
def test_invalid_registries_are_refused_with_the_reason(change, message):
    with pytest.raises(RegistryError, match=message):
        parse_registry(MODELS.replace(*change, 1), environ={})


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    # Filesystems with coarse timestamps: make each write visibly newer than the last.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_the_file_is_reloaded_when_it_changes_and_a_broken_edit_is_ignored(tmp_path):
    path = tmp_path / "models.yaml"
    _write(path, MODELS)
    registry = RegistryFile(path)
    created = registry.current.created["acme/chat-small"]
    assert registry.refresh() is False, "nothing changed"

    _write(path, MODELS.replace("quality: 0.4", "quality: 0.45"))
    assert registry.refresh() is True
    assert registry.current.resolve("small").entry.quality == 0.45
    assert registry.current.created["acme/chat-small"] == created, "a kept model keeps its creation time"

    _write(path, "models: [")
    assert registry.refresh() is False
    assert registry.current.resolve("small").entry.quality == 0.45, "the previous registry stays in force"
