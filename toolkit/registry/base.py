"""The registry protocol every backend implements (local folder, Confluent-compatible HTTP).

Backends do I/O only; caching and compiled validators live in :mod:`toolkit.registry.cache`, so a fake
registry for unit tests implements this protocol and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from toolkit import _args
from toolkit.layout import Compatibility, SchemaFormat


@dataclass(frozen=True)
class RegisteredSchema:
    """One schema version as a registry returns it: the schema text exactly as registered."""

    subject: str
    version: int
    format: SchemaFormat
    text: str
    schema_id: int | None = None
    references: tuple[dict, ...] = ()


@dataclass(frozen=True)
class CompatibilityResult:
    """A registry's answer to "would this schema be accepted?": from :meth:`SchemaRegistry.check_compatibility`
    or from registering in a scratch subject (:class:`toolkit.compat.registry.ScratchRegistry`)."""

    compatible: bool
    messages: tuple[str, ...] = field(default=())


@runtime_checkable
class SchemaRegistry(Protocol):
    """Look up, register and check schemas by subject and version.

    Lookups raise :class:`~toolkit.errors.SchemaNotFound` when the subject or version does not exist and
    :class:`~toolkit.errors.RegistryUnavailable` when the registry cannot answer (after retries).
    """

    def get(self, subject: str, version: int) -> RegisteredSchema: ...

    def latest(self, subject: str) -> RegisteredSchema: ...

    def subjects(self) -> list[str]: ...

    def versions(self, subject: str) -> list[int]: ...

    def register(self, subject: str, text: str, schema_format: SchemaFormat) -> RegisteredSchema:
        """Register ``text`` under ``subject``; an identical schema already registered is returned as is.

        Raises:
            RegistryRejected: the registry refused it (incompatible, invalid), with the registry's reasons.
        """
        ...

    def check_compatibility(self, subject: str, text: str, schema_format: SchemaFormat,
                            version: int | str = "latest") -> CompatibilityResult: ...

    def close(self) -> None: ...


@runtime_checkable
class SupportsCompatibilityConfig(Protocol):
    """A registry whose per-subject compatibility mode can be set (``PUT /config/{subject}``).

    Kept out of :class:`SchemaRegistry` so a backend without it (the local folder) still is a registry.
    """

    def set_compatibility(self, subject: str, mode: Compatibility) -> None: ...


def canonical_schema(text: str) -> str:
    """The schema's parsed JSON, serialised with sorted keys and no whitespace.

    Registries may store a schema re-indented or with keys reordered (Apicurio keeps the text as sent but
    matches by a canonical hash), so two texts are the same schema when their canonical forms are equal.
    Text that is not JSON is returned stripped, so it compares by content.
    """
    _args.text("text", text)
    try:
        document = json.loads(text)
    except ValueError:
        return text.strip()
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def same_schema(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` parse to the same JSON (whitespace and key order do not matter)."""
    return canonical_schema(_args.text("a", a)) == canonical_schema(_args.text("b", b))


@dataclass(frozen=True)
class SubjectContext:
    """What a subject-name strategy may use to name the subject of a message's schema."""

    topic: str
    schema_name: str
    message_type: str | None = None


# A strategy must be a pure function of its context: the consumer asks it once per (topic, schemaName,
# messageType) and remembers the answer.
SubjectStrategy = Callable[[SubjectContext], str]


def schema_name_strategy(ctx: SubjectContext) -> str:
    """The default: the subject is the envelope's ``schemaName``."""
    return _args.instance("ctx", ctx, SubjectContext, "a SubjectContext").schema_name


def topic_value_strategy(ctx: SubjectContext) -> str:
    """Confluent's TopicNameStrategy: ``<topic>-value``."""
    return f"{_args.instance('ctx', ctx, SubjectContext, 'a SubjectContext').topic}-value"
