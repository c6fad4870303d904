"""The pure message flow: decode -> envelope -> resolve schema -> validate body -> build model -> route.

Each step raises :class:`~toolkit.errors.MessageError` with its stage (``decode``, ``envelope``,
``schema``, ``validation``, ``model``, ``routing``) when the record is at fault. A registry that cannot be
reached raises :class:`~toolkit.errors.RegistryUnavailable`, which is not the record's fault; a schema the
registry does not know raises :class:`~toolkit.errors.SchemaNotYetKnown` (wait and ask again) until it
has been unknown for the grace period, and only then ``MessageError("schema")``. Nothing else escapes.
Only :meth:`Pipeline.resolve` may do I/O (a registry lookup on a cache miss); the runtime calls it off the
event loop when :meth:`Pipeline.cached` has no answer.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from toolkit.consumer.deep import is_too_deep, validate_deep
from toolkit.consumer.handlers import HandlerRegistry, Route
from toolkit.envelope import MAX_DEPTH, DecodedRecord, Header, SerializerLike, allow_depth, decode_record
from toolkit.errors import (
    InvalidArgumentType,
    MessageError,
    RegistryUnavailable,
    SchemaNotFound,
    SchemaNotYetKnown,
)
from toolkit.registry.base import (
    RegisteredSchema,
    SchemaRegistry,
    SubjectContext,
    SubjectStrategy,
    schema_name_strategy,
)

_MAX_PLANS = 10_000
UNKNOWN_RETRY_MAX_S = 5.0
"""Longest wait between two lookups of a schema the registry does not know yet (within the grace)."""
GRACE_SETTING = "EPISTLE_UNKNOWN_SCHEMA_GRACE_S"


BodyT = TypeVar("BodyT")


@dataclass(slots=True)
class Message(Generic[BodyT]):
    """What a handler receives: the envelope header, the body as the generated model, the record context.

    Generic in the body's type, for handlers' annotations: ``async def handle(self, message:
    Message[OrderCreatedV1]) -> bool``."""

    header: Header
    body: BodyT  # the generated model instance (or the validated value when no model index is used)
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
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
                 subject_strategy: SubjectStrategy = schema_name_strategy, *, max_depth: int = MAX_DEPTH,
                 unknown_schema_grace_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.resolver = resolver
        self.max_depth = max_depth  # EPISTLE_MAX_NESTING_DEPTH: JSON nesting levels of the whole envelope
        allow_depth(max_depth)
        self.router = router
        self.models = models
        self.serializer = serializer
        self.subject_strategy = subject_strategy
        self.unknown_schema_grace_s = float(unknown_schema_grace_s)
        self._clock = clock
        try:
            self._fresh_lookups = "fresh" in inspect.signature(resolver.resolve).parameters
        except (TypeError, ValueError):
            self._fresh_lookups = False
        # (subject, version) the registry did not know -> (first miss, latest miss), monotonic seconds
        self._unknown: dict[tuple[str, int], tuple[float, float]] = {}
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

        A subject or version the registry does not know is not final at once: for ``unknown_schema_grace_s``
        seconds from the first miss of that (subject, version) it raises :class:`SchemaNotYetKnown` (the
        caller waits ``retry_in_s`` and calls again; the retry asks the registry, past any remembered miss).
        The clock is per (subject, version), so records queued behind the first one do not each wait a
        whole grace; it starts again when the key was found meanwhile or not asked about for twice the grace.

        Raises:
            SchemaNotYetKnown: unknown, within the grace (transient; not the record's fault yet).
            MessageError: stage ``"schema"``: unknown after the grace (the reason says how long it waited),
                or a schema the validator cannot compile.
            RegistryUnavailable: the registry cannot be reached (transient; not the record's fault).
        """
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled
        subject, version = key
        try:
            if self._fresh_lookups and self._waiting(key):
                _, compiled = self.resolver.resolve(subject, version, fresh=True)  # type: ignore[call-arg]
            else:
                _, compiled = self.resolver.resolve(subject, version)
        except SchemaNotFound as exc:
            raise self._unknown_schema(key, exc) from None
        except (RegistryUnavailable, MessageError):
            raise
        except Exception as exc:  # a schema the validator cannot compile is not something a retry fixes
            raise MessageError("schema", f"schema {subject!r} v{version} cannot be used: "
                                         f"{type(exc).__name__}: {exc}") from None
        self._unknown.pop(key, None)
        self._compiled[key] = compiled
        return compiled

    def _waiting(self, key: tuple[str, int]) -> bool:
        """The registry did not know ``key`` at the last lookup and its grace is not over."""
        seen = self._unknown.get(key)
        return seen is not None and self._clock() - seen[0] < self.unknown_schema_grace_s

    def _unknown_schema(self, key: tuple[str, int], exc: SchemaNotFound) -> Exception:
        subject, version = key
        grace = self.unknown_schema_grace_s
        now = self._clock()
        since, last = self._unknown.get(key, (now, now))
        if now - last > 2 * grace:  # not asked about for long: a new episode (e.g. the registry lost it again)
            since = now
        if key in self._unknown or len(self._unknown) < _MAX_PLANS:  # bounded: keys come from the records
            self._unknown[key] = (since, now)
        elif grace > 0:
            # list() copies in one step: another io thread may add a key while this one sweeps
            for stale in [k for k, (_, seen) in list(self._unknown.items()) if now - seen > 2 * grace]:
                self._unknown.pop(stale, None)
            self._unknown[key] = (since, now)
        waited = now - since
        what = f"subject {subject!r} version {version}"
        if waited < grace:
            left = grace - waited
            return SchemaNotYetKnown(f"{what} not in the registry (yet): {exc}; asking again for up to "
                                     f"{left:.1f}s more ({GRACE_SETTING}={grace:g})",
                                     unknown_for_s=waited, grace_s=grace,
                                     retry_in_s=min(UNKNOWN_RETRY_MAX_S, max(left, 0.01)),
                                     subject=subject, version=version)
        waited_text = (f"still unknown after {waited:.1f}s of asking again ({GRACE_SETTING}={grace:g})"
                       if grace > 0 else f"not waited for ({GRACE_SETTING}=0)")
        path = "/header/schemaVersion" if "version" in str(exc).lower() else "/header/schemaName"
        return MessageError("schema", f"unknown schema: {what}: {exc}; {waited_text}",
                            details=[{"path": path, "message": str(exc), "unknown_for_s": round(waited, 3),
                                      "grace_s": grace}])

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
                headers: list[tuple[str, bytes | None]] | None = None, timestamp: int | None = None) -> Prepared:
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
               offset: int, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]] | None,
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
