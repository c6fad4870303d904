"""The registry protocol every backend implements (local folder, Confluent-compatible HTTP).

Backends do I/O only; caching and compiled validators live in :mod:`toolkit.registry.cache`, so a fake
registry for unit tests implements this protocol and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from toolkit import _args
from toolkit.errors import ConfigError, InvalidArgument
from toolkit.layout import SUBJECT_CONFIG, Compatibility, SchemaFormat, Subject, canonical_json


@dataclass(frozen=True)
class RegisteredSchema:
    """One schema version as a registry returns it: the schema text exactly as registered."""

    subject: str
    version: int
    format: SchemaFormat
    text: str
    schema_id: int | None = None
    references: tuple[dict, ...] = ()  # as the registry gives them: {"name", "subject", "version"}
    # The referenced schemas themselves, transitively, dependencies first, with their reference names: filled
    # by CachedRegistry (or the caller) before compiling (toolkit.validation.compile_schema uses them).
    referenced: tuple[tuple[str, RegisteredSchema], ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class SchemaById:
    """A schema as the registry knows it by id, the number Confluent's wire format carries after its magic
    byte: the text, and every ``(subject, version)`` it is registered as (registries give one id to one
    schema content, so an id may belong to several subjects, or, once they are deleted, to none)."""

    schema_id: int
    format: SchemaFormat
    text: str
    versions: tuple[tuple[str, int], ...] = ()
    references: tuple[dict, ...] = ()

    def registered(self) -> RegisteredSchema:
        """As a :class:`RegisteredSchema` (what a validator compiles), named after its first subject and
        version, or ``schema-id-<id>`` version 0 when it has none."""
        subject, version = self.versions[0] if self.versions else (f"schema-id-{self.schema_id}", 0)
        return RegisteredSchema(
            subject=subject,
            version=version,
            format=self.format,
            text=self.text,
            schema_id=self.schema_id,
            references=self.references,
        )


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

    def register(
        self, subject: str, text: str, schema_format: SchemaFormat, *, references: Sequence[Mapping[str, Any]] = ()
    ) -> RegisteredSchema:
        """Register ``text`` under ``subject``; an identical schema already registered is returned as is.
        ``references``: the schemas it uses, ``{"name", "subject", "version"}`` each (:mod:`toolkit.references`).

        Raises:
            RegistryRejected: the registry refused it (incompatible, invalid), with the registry's reasons.
        """
        ...

    def check_compatibility(
        self,
        subject: str,
        text: str,
        schema_format: SchemaFormat,
        version: int | str = "latest",
        *,
        references: Sequence[Mapping[str, Any]] = (),
    ) -> CompatibilityResult: ...

    def close(self) -> None: ...


@runtime_checkable
class SupportsCompatibilityConfig(Protocol):
    """A registry whose per-subject compatibility mode can be set (``PUT /config/{subject}``).

    Kept out of :class:`SchemaRegistry` so a backend without it (the local folder) still is a registry.
    """

    def set_compatibility(self, subject: str, mode: Compatibility) -> None: ...


@runtime_checkable
class SupportsSchemaIds(Protocol):
    """A registry that assigns schema ids and looks schemas up by them (``GET /schemas/ids/{id}``): what
    reading Confluent's wire format needs. Kept out of :class:`SchemaRegistry` because the local
    ``schemas/`` folder has no ids: :class:`~toolkit.registry.local.LocalFolderRegistry` says so
    (``supports_schema_ids`` is False and its ``get_by_id`` raises :class:`~toolkit.errors.ConfigError`).
    """

    supports_schema_ids: bool

    def get_by_id(self, schema_id: int) -> SchemaById:
        """The schema with this id and the subjects and versions it is registered as.

        Raises:
            SchemaNotFound: the registry has no schema with this id.
            RegistryUnavailable: the registry cannot answer (after retries).
        """
        ...


def supports_schema_ids(registry: Any) -> bool:
    """True when ``registry`` (a backend or a :class:`~toolkit.registry.cache.CachedRegistry`) can look
    schemas up by id; no I/O."""
    flag = getattr(registry, "supports_schema_ids", None)
    if flag is not None:
        return bool(flag)
    return callable(getattr(registry, "get_by_id", None)) or callable(getattr(registry, "resolve_id", None))


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
    return canonical_json(document)


def same_schema(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` parse to the same JSON (whitespace and key order do not matter)."""
    return canonical_schema(_args.text("a", a)) == canonical_schema(_args.text("b", b))


def same_references(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """True when two ``references`` lists name the same (name, subject, version) entries, in any order."""
    from toolkit.references import references_of

    return set(references_of(a)) == set(references_of(b)) and len(a) == len(b)


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


def topic_key_strategy(ctx: SubjectContext) -> str:
    """Confluent's TopicNameStrategy for record keys: ``<topic>-key``."""
    return f"{_args.instance('ctx', ctx, SubjectContext, 'a SubjectContext').topic}-key"


def key_strategy_for(value_strategy: SubjectStrategy) -> SubjectStrategy:
    """The subject strategy of record keys that goes with ``value_strategy``: ``<topic>-key`` beside
    ``<topic>-value``; any other strategy (the schemaName, a record name) names key subjects as values'."""
    return topic_key_strategy if value_strategy is topic_value_strategy else value_strategy


SUBJECT_STRATEGIES: dict[str, SubjectStrategy] = {
    "schema_name": schema_name_strategy,
    "topic_value": topic_value_strategy,
}
"""The built-in strategies by their ``SCHEMA_REGISTRY_SUBJECT_STRATEGY`` names."""


def subject_strategy_named(name: str) -> SubjectStrategy:
    """The built-in strategy called ``name`` (a key of :data:`SUBJECT_STRATEGIES`).

    Raises:
        InvalidArgument: no strategy has that name (argument ``strategy``).
    """
    found = SUBJECT_STRATEGIES.get(_args.text("strategy", name))
    if found is None:
        raise InvalidArgument(
            f"strategy: unknown subject strategy {name!r}; use one of {', '.join(SUBJECT_STRATEGIES)}",
            argument="strategy",
        )
    return found


def registry_subjects(subject: Subject, strategy: str = "schema_name") -> list[str]:
    """The registry subjects a local subject's versions are found under: what the strategy named ``strategy``
    calls its schemaName for each topic its ``subject.toml`` lists (the consumer asks the same strategy for the
    subject of each record). ``schema_name`` gives the folder name, ``topic_value`` ``<topic>-value`` per topic.

    Raises:
        ConfigError: a strategy that names subjects after topics, for a subject that lists none.
        InvalidArgument: ``strategy`` is not a built-in strategy's name.
    """
    name_of = subject_strategy_named(strategy)
    topics = subject.config.topics
    if not topics:
        if name_of is not schema_name_strategy:  # every other built-in strategy names the subject after a topic
            raise ConfigError(
                f"{subject.folder / SUBJECT_CONFIG}: the {strategy} subject strategy needs "
                "'topics = [...]' to name the registry subjects",
                setting="SCHEMA_REGISTRY_SUBJECT_STRATEGY",
                path=subject.folder,
            )
        return [name_of(SubjectContext("", subject.name))]
    return list(dict.fromkeys(name_of(SubjectContext(topic, subject.name)) for topic in topics))
