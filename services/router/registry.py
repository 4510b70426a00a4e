"""The model registry: which models exist, what they cost and can do, and which engines serve them.

The registry is a YAML file (format: deploy/models.example.yaml). String values may use `${VAR}` and
`${VAR:-default}`, so `switchyard up` and Kubernetes inject engine addresses without editing the file;
a `replicas` value given as one string is split on commas for the same reason.

`RegistryFile` re-reads the file when it changes (mtime, size or inode; polled by the server), so
models and replicas change without a restart. A file that fails to load is logged and the previous
registry stays in force.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from services.common.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

MODEL_ID_PATTERN = r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(:[\w.\-]+)?$"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RegistryError(ValueError):
    """The registry file cannot be used (syntax, a missing variable, an invalid or ambiguous entry)."""


def expand_env(value: str, environ: Mapping[str, str]) -> str:
    """`${VAR}` -> its value (an error when unset); `${VAR:-default}` -> its value, or the default when
    unset or empty (the shell's rule)."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        current = environ.get(name)
        if default is not None:
            return current or default
        if current is None:
            raise RegistryError(f"${{{name}}} is used in the registry but not set")
        return current

    return _ENV_REFERENCE.sub(substitute, value)


def _expand_tree(node: object, environ: Mapping[str, str]) -> object:
    # After parsing, not before: a value injected from the environment can never change YAML structure.
    if isinstance(node, str):
        return expand_env(node, environ)
    if isinstance(node, list):
        return [_expand_tree(item, environ) for item in node]
    if isinstance(node, dict):
        return {key: _expand_tree(item, environ) for key, item in node.items()}
    return node


def _short_name(entry: ModelEntry) -> str:
    return entry.id.split("/", 1)[1]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Capabilities(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tools: bool = False
    json_schema: bool = False
    vision: bool = False
    # The most top alternatives a logprobs request may ask for (vLLM's default is 20).
    max_logprobs: int = Field(default=20, ge=0)
    lora_adapters: tuple[str, ...] = ()


class ModelEntry(BaseModel):
    """One model as the registry file declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=MODEL_ID_PATTERN)
    provider: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    quality: float = Field(ge=0.0, le=1.0)
    # Credits per million tokens.
    input_price: float = Field(ge=0.0)
    output_price: float = Field(ge=0.0)
    context_window: int = Field(gt=0)
    capabilities: Capabilities = Capabilities()
    # The name the engine serves the model under; empty means the id.
    engine_model: str = ""
    replicas: Annotated[tuple[str, ...], BeforeValidator(_split_commas)] = Field(min_length=1)
    # Unix seconds; defaults to when this router first loaded the model.
    created: int | None = None

    @field_validator("replicas")
    @classmethod
    def _distinct_replicas(cls, replicas: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(replicas)) != len(replicas):
            raise ValueError("a replica address is listed twice")
        return replicas

    @property
    def served_name(self) -> str:
        return self.engine_model or self.id

    def price(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Credits for this many tokens."""
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1_000_000


class _RegistryDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A name a caller used, resolved: the model, and what the engine is asked to run (the base model
    or one of its LoRA adapters)."""

    entry: ModelEntry
    engine_model: str


class Registry:
    """An immutable, validated registry. Names resolve in this order: model id, declared alias, LoRA
    adapter name, then the short name (the id without its `owner/`) where exactly one model has it."""

    def __init__(self, models: Iterable[ModelEntry], created: Mapping[str, int]) -> None:
        self.models: tuple[ModelEntry, ...] = tuple(models)
        # Every model as the router offers it when choosing (base models, not adapters).
        self.routable: tuple[ResolvedModel, ...] = tuple(
            ResolvedModel(entry, entry.served_name) for entry in self.models
        )
        self.created = dict(created)
        self._names: dict[str, ResolvedModel] = {}
        self._short_names: dict[str, list[ModelEntry]] = {}
        for entry in self.models:
            self._claim(entry.id, ResolvedModel(entry, entry.served_name), "id")
            self._short_names.setdefault(_short_name(entry), []).append(entry)
        for entry in self.models:
            for alias in entry.aliases:
                self._claim(alias, ResolvedModel(entry, entry.served_name), f"alias of {entry.id}")
            for adapter in entry.capabilities.lora_adapters:
                self._claim(adapter, ResolvedModel(entry, adapter), f"LoRA adapter of {entry.id}")

    def _claim(self, name: str, resolved: ResolvedModel, what: str) -> None:
        if name in self._names:
            raise RegistryError(f"'{name}' ({what}) is already the name of {self._names[name].entry.id}")
        owners = [entry.id for entry in self._short_names.get(name, ()) if entry is not resolved.entry]
        if owners:
            raise RegistryError(f"'{name}' ({what}) is already the short name of {', '.join(owners)}")
        self._names[name] = resolved

    def resolve(self, name: str) -> ResolvedModel:
        """The model a caller means by `name`; ModelNotFoundError (NOT_FOUND) when none or ambiguous."""
        resolved = self._names.get(name)
        if resolved is not None:
            return resolved
        owners = self._short_names.get(name)
        if owners is not None and len(owners) == 1:
            return ResolvedModel(owners[0], owners[0].served_name)
        raise ModelNotFoundError(name)

    def find(self, name: str) -> ModelEntry | None:
        """Like resolve, without raising (for lists that may name models this router lacks)."""
        try:
            return self.resolve(name).entry
        except ModelNotFoundError:
            return None

    def aliases(self, entry: ModelEntry) -> list[str]:
        """Every extra name that resolves to `entry`: declared aliases and an unambiguous short name."""
        names = list(entry.aliases)
        short = _short_name(entry)
        if len(self._short_names.get(short, ())) == 1 and short not in self._names:
            names.append(short)
        return names

    def replica_addresses(self) -> set[str]:
        return {address for entry in self.models for address in entry.replicas}


def parse_registry(
    text: str,
    environ: Mapping[str, str] | None = None,
    *,
    previous: Registry | None = None,
    now: int = 0,
) -> Registry:
    """Parses and validates a registry document. `created` survives reloads for models kept."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RegistryError(f"not valid YAML: {error}") from error
    expanded = _expand_tree(document, os.environ if environ is None else environ)
    try:
        models = _RegistryDocument.model_validate(expanded).models
    except ValidationError as error:
        raise RegistryError(str(error)) from error
    seen: set[str] = set()
    for entry in models:
        if entry.id in seen:
            raise RegistryError(f"model '{entry.id}' is declared twice")
        seen.add(entry.id)
    earlier = previous.created if previous is not None else {}
    created = {entry.id: entry.created or earlier.get(entry.id, now) for entry in models}
    return Registry(models, created)


class RegistryFile:
    """The registry loaded from a file, reloaded when the file changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._signature: tuple[int, int, int] | None = None
        self.current = self._load(self._stat(), previous=None)

    def _stat(self) -> os.stat_result:
        try:
            return self.path.stat()
        except OSError as error:
            raise RegistryError(f"cannot read the registry {self.path}: {error}") from error

    def _load(self, stat: os.stat_result, previous: Registry | None) -> Registry:
        # Remembered before parsing: a broken file is reported once, not at every poll.
        self._signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        try:
            text = self.path.read_text()
        except OSError as error:
            raise RegistryError(f"cannot read the registry {self.path}: {error}") from error
        return parse_registry(text, previous=previous, now=int(stat.st_mtime))

    def refresh(self) -> bool:
        """Reloads the file if it changed; True when a new registry is in force. A broken file is
        logged and ignored (the current registry stays), so a bad edit never takes models away."""
        try:
            stat = self._stat()
            if (stat.st_mtime_ns, stat.st_size, stat.st_ino) == self._signature:
                return False
            self.current = self._load(stat, previous=self.current)
        except RegistryError as error:
            logger.error("registry %s not reloaded, keeping the previous one: %s", self.path, error)
            return False
        logger.info("registry %s reloaded: %d models", self.path, len(self.current.models))
        return True
