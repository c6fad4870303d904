"""The pure message flow: decode -> envelope -> resolve schema -> validate body -> build model -> route.

Each step raises :class:`~toolkit.errors.MessageError` with its stage (``decode``, ``envelope``,
``schema``, ``validation``, ``model``, ``routing``) when the record is at fault. A registry that cannot be
reached raises :class:`~toolkit.errors.RegistryUnavailable`, which is not the record's fault. Nothing else
escapes. Only :meth:`Pipeline.resolve` may do I/O (a registry lookup on a cache miss); the runtime calls
it off the event loop when :meth:`Pipeline.cached` has no answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from toolkit.consumer.deep import is_too_deep, validate_deep
from toolkit.consumer.handlers import HandlerRegistry, Route
from toolkit.envelope import MAX_DEPTH, DecodedRecord, Header, SerializerLike, allow_depth, decode_record
from toolkit.errors import InvalidArgumentType, MessageError, RegistryUnavailable, SchemaNotFound
from toolkit.registry.base import (
    RegisteredSchema,
    SchemaRegistry,
    SubjectContext,
    SubjectStrategy,
    schema_name_strategy,
)

_MAX_PLANS = 10_000


@dataclass(slots=True)
class Message:
    """What a handler receives: the envelope header, the body as the generated model, the record context."""

    header: Header
    body: Any  # the generated model instance (or the validated value when no model index is used)
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int | None = None  # epoch milliseconds from the broker
    raw: bytes = b""
    attempt: int = 1  # 1 on first delivery, then 2, 3 ... on retries

    @property
    def message_id(self) -> str:
        return self.header.message_id

    @property
    def correlation_id(self) -> str:
        return self.header.correlation_id

    @property
    def time(self) -> datetime | None:
        """The broker timestamp as an aware datetime."""
        return None if self.timestamp is None else datetime.fromtimestamp(self.timestamp / 1000, UTC)


@runtime_checkable
class CompiledSchema(Protocol):
    def decode(self, body: Any) -> Any:
        """Validate ``body`` and return it as Python values. Raises MessageError(stage="validation")."""
        ...


@runtime_checkable
class SchemaResolver(Protocol):
    """A caching registry front: :mod:`toolkit.registry.cache` implements it."""

    def resolve(self, subject: str, version: int) -> tuple[RegisteredSchema, CompiledSchema]: ...


class ModelLookup(Protocol):
    def get(self, schema_name: str, version: int) -> type[BaseModel] | None: ...


def as_resolver(registry: Any) -> SchemaResolver:
    """A resolver as is, or a bare :class:`SchemaRegistry` wrapped in a
    :class:`~toolkit.registry.cache.CachedRegistry` (each version fetched and compiled once)."""
    if hasattr(registry, "resolve"):
        return registry
    if isinstance(registry, SchemaRegistry) or hasattr(registry, "get"):
        from toolkit.registry.cache import CachedRegistry

        return CachedRegistry(registry)
    raise InvalidArgumentType(f"registry {registry!r} is neither a SchemaResolver nor a SchemaRegistry")


@dataclass(frozen=True, slots=True)
class Plan:
    """What a record's topic and header decide once its schema is resolved: the compiled schema, the model
    (None without a model index) and the handler route. Looked up once per (topic, schemaName,
    messageType, schemaVersion) that got through every stage, so later records skip the lookups."""

    compiled: CompiledSchema
    model: type[BaseModel] | None
    route: Route


@dataclass(frozen=True, slots=True)
class Prepared:
    """A record that passed every stage: the message for the handler and the route to it."""

    message: Message
    route: Route


class Pipeline:
    """The stages, bound to a resolver, a model index, a handler registry and a serializer."""

    def __init__(self, resolver: SchemaResolver, router: HandlerRegistry, models: ModelLookup | None = None,
                 serializer: SerializerLike | None = None,
                 subject_strategy: SubjectStrategy = schema_name_strategy, *, max_depth: int = MAX_DEPTH):
        self.resolver = resolver
        self.max_depth = max_depth  # EPISTLE_MAX_NESTING_DEPTH: JSON nesting levels of the whole envelope
        allow_depth(max_depth)
        self.router = router
        self.models = models
        self.serializer = serializer
        self.subject_strategy = subject_strategy
        self._compiled: dict[tuple[str, int], CompiledSchema] = {}
        self._subjects: dict[tuple[str, str, str], str] = {}
        self._plans: dict[tuple[str, str, str, str], Plan] = {}

    # -- stages -----------------------------------------------------------------------------------------
    def decode(self, value: bytes | None) -> DecodedRecord:
        """Stages ``decode`` and ``envelope``."""
        return decode_record(value, self.serializer, max_depth=self.max_depth)

    def subject_of(self, topic: str, decoded: DecodedRecord) -> tuple[str, int]:
        header = decoded.header
        names = (topic, header.schema_name, header.message_type)
        subject = self._subjects.get(names)
        if subject is None:  # a strategy is a pure function of its context: ask once per combination
            subject = self.subject_strategy(SubjectContext(*names))
            if len(self._subjects) < _MAX_PLANS:  # bounded: schemaName comes from the records
                self._subjects[names] = subject
        return subject, header.version

    def cached(self, key: tuple[str, int]) -> CompiledSchema | None:
        """The compiled schema if it was resolved before (no I/O)."""
        return self._compiled.get(key)

    def resolve(self, key: tuple[str, int]) -> CompiledSchema:
        """Stage ``schema``; may do registry I/O.

        Raises:
            MessageError: stage ``"schema"``: the subject or version does not exist.
            RegistryUnavailable: the registry cannot be reached (transient; not the record's fault).
        """
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled
        subject, version = key
        try:
            _, compiled = self.resolver.resolve(subject, version)
        except SchemaNotFound as exc:
            raise MessageError("schema", f"unknown schema: subject {subject!r} version {version}: {exc}",
                               details=[{"path": "/header/schemaVersion" if "version" in str(exc).lower()
                                         else "/header/schemaName", "message": str(exc)}]) from None
        except (RegistryUnavailable, MessageError):
            raise
        except Exception as exc:  # a schema the validator cannot compile is not something a retry fixes
            raise MessageError("schema", f"schema {subject!r} v{version} cannot be used: "
                                         f"{type(exc).__name__}: {exc}") from None
        self._compiled[key] = compiled
        return compiled

    def bind(self, decoded: DecodedRecord, compiled: CompiledSchema) -> Any:
        """Stages ``validation`` and ``model``: the body as the generated model instance."""
        value = self._validate(decoded.body, compiled)
        if self.models is None:
            return value
        return self._build(value, self._model(decoded.header))

    @staticmethod
    def _validate(body: Any, compiled: CompiledSchema) -> Any:
        try:
            return compiled.decode(body)
        except MessageError:
            raise
        except RecursionError:
            raise MessageError("validation", "body nested too deeply to validate") from None
        except Exception as exc:
            raise MessageError("validation", f"{type(exc).__name__}: {exc}") from None

    def _model(self, header: Header) -> type[BaseModel]:
        assert self.models is not None
        model = self.models.get(header.schema_name, header.version)
        if model is None:
            raise MessageError("model", f"no generated model for {header.schema_name} v{header.version}; "
                                        "run make codegen and redeploy")
        return model

    @staticmethod
    def _build(value: Any, model: type[BaseModel]) -> Any:
        try:
            try:
                return model.model_validate(value)
            except ValidationError as exc:
                if not is_too_deep(exc.errors(include_url=False)):
                    raise
            return validate_deep(model, value)  # recursive models nested beyond pydantic's fixed limit
        except ValidationError as exc:
            details = [{"path": "/body/" + "/".join(str(p) for p in err["loc"]), "message": err["msg"]}
                       for err in exc.errors(include_url=False)]
            notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
            raise MessageError("model", f"body does not fit {model.__name__}: {len(details)} error(s){notes}",
                               details=details) from None
        except RecursionError:
            raise MessageError("model", "body nested too deeply for the model") from None

    def route(self, topic: str, header: Header) -> Route:
        """Stage ``routing``."""
        return self.router.route(topic, header.message_type, header.schema_name, header.version)

    # -- all at once (tests, and the runtime's hot path once the schema is cached) -----------------------
    def prepare(self, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]] | None = None, timestamp: int | None = None) -> Prepared:
        """Every stage for one record.

        Raises:
            MessageError: the record is at fault (``stage`` says where).
            RegistryUnavailable: the registry cannot be reached.
        """
        decoded = self.decode(value)
        key_ = self.subject_of(topic, decoded)
        compiled = self.resolve(key_)
        return self.finish(decoded, compiled, topic=topic, partition=partition, offset=offset, key=key,
                           value=value, headers=headers, timestamp=timestamp)

    def plan(self, topic: str, header: Header) -> Plan | None:
        """What an earlier record with the same topic and header fields led to (no I/O), or None."""
        return self._plans.get((topic, header.schema_name, header.message_type, header.schema_version))

    def forget_plans(self) -> None:
        """Drop every plan (handlers changed: routes must be looked up again)."""
        self._plans.clear()

    def finish(self, decoded: DecodedRecord, source: CompiledSchema | Plan, *, topic: str, partition: int,
               offset: int, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None,
               timestamp: int | None) -> Prepared:
        """Stages ``validation``, ``model`` and ``routing``, from the resolved schema or from a :class:`Plan`.

        Stages run in the same order either way; the first success for a header remembers its plan, so
        later records skip the model and route lookups.
        """
        header = decoded.header
        if isinstance(source, Plan):
            body = self._validate(decoded.body, source.compiled)
            if source.model is not None:
                body = self._build(body, source.model)
            route = source.route
        else:
            body = self._validate(decoded.body, source)
            model = None
            if self.models is not None:
                model = self._model(header)
                body = self._build(body, model)
            route = self.route(topic, header)
            if len(self._plans) < _MAX_PLANS:  # bounded: header fields come from the records
                plan_key = (topic, header.schema_name, header.message_type, header.schema_version)
                self._plans[plan_key] = Plan(source, model, route)
        message = Message(header, body, topic, partition, offset, key, headers or [], timestamp, value or b"")
        return Prepared(message, route)
