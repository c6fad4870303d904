"""The pure message flow: decode -> envelope -> resolve schema -> validate body -> build model -> route.

Each step raises :class:`~toolkit.errors.MessageError` with its stage (``decode``, ``envelope``,
``schema``, ``validation``, ``model``, ``routing``) when the record is at fault. A registry that cannot be
reached raises :class:`~toolkit.errors.RegistryUnavailable`, which is not the record's fault; a schema the
registry does not know raises :class:`~toolkit.errors.SchemaNotYetKnown` (wait and ask again) until it
has been unknown for the grace period, and only then ``MessageError("schema")``. Nothing else escapes.
Only :meth:`Pipeline.resolve` may do I/O (a registry lookup on a cache miss); the runtime calls it off the
event loop when :meth:`Pipeline.cached` has no answer.

A topic whose value format (``value_formats``, ``EPISTLE_VALUE_FORMATS``) is ``confluent``, or ``auto``
with a first byte 0, is read in Confluent's wire format (:mod:`toolkit.wire`): :meth:`Pipeline.decode`
splits off the schema id (a :class:`~toolkit.wire.WireRecord`), :meth:`Pipeline.subject_of` gives a
:class:`~toolkit.wire.SchemaIdKey` instead of ``(subject, version)``, :meth:`Pipeline.resolve` looks the
id up (the same grace for an unknown id as for an unknown version), and :meth:`Pipeline.finish` picks the
subject, decodes the payload, builds the model and synthesizes the header. The runtime's calls are the same
for both kinds of record, with the topic passed to ``decode`` (or :meth:`Pipeline.locate` doing it all).

A topic whose key format (``key_formats``, ``EPISTLE_KEY_FORMATS``) is ``confluent``, or ``auto`` with a
first byte 0, has its record keys decoded the same way: :meth:`Pipeline.key_to_resolve` says which schema
id to resolve first (the runtime resolves it off the event loop, as a value's), and :meth:`Pipeline.finish`
decodes the key into ``Message.key_value`` (the generated model when there is one for the key's subject and
version, else the decoded value), the raw bytes staying in ``Message.key``. The key's subject is the one
:func:`~toolkit.registry.base.key_strategy_for` names: ``<topic>-key`` under the topic strategy.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast, runtime_checkable

from pydantic import BaseModel, ValidationError

from toolkit.consumer.deep import is_too_deep, validate_deep
from toolkit.consumer.handlers import HandlerRegistry, Route
from toolkit.envelope import (
    MAX_DEPTH,
    DecodedRecord,
    Header,
    SerializerLike,
    allow_depth,
    decode_record,
    load_document,
    parse_envelope,
)
from toolkit.errors import (
    ConfigError,
    InvalidArgumentType,
    MessageError,
    RegistryUnavailable,
    SchemaCannotExist,
    SchemaNotFound,
    SchemaNotYetKnown,
    quoted,
)
from toolkit.registry.base import (
    RegisteredSchema,
    SchemaRegistry,
    SubjectContext,
    SubjectStrategy,
    key_strategy_for,
    schema_name_strategy,
    supports_schema_ids,
)
from toolkit.wire import (
    DEFAULT_TOPIC,
    KEY_SETTING,
    SETTING,
    KeyFormat,
    SchemaIdKey,
    ValueFormat,
    WireRecord,
    WireSchema,
    header_fields,
    key_looks_confluent,
    looks_confluent,
    split,
    synthesize_header,
)

if TYPE_CHECKING:
    from toolkit.consumer.transport import Record

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
    delivery_count: int | None = None  # share groups: the broker's delivery count (the attempt); else None
    schema_id: int | None = None  # the registry's schema id of a record in Confluent's wire format
    subject: str | None = None  # the registry subject of that id the record was read as (wire format only)
    # A key in Confluent's wire format (key format confluent or auto): the decoded key (the generated model
    # of its subject and version when there is one, else the decoded value), its schema id and subject.
    key_value: Any = None
    key_schema_id: int | None = None
    key_subject: str | None = None

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


_header_slot = Message.__dict__["header"]  # the slot under the lazy header of _WireMessage
_message_fields = tuple(f.name for f in fields(Message))


class _WireMessage(Message):
    """A :class:`Message` of a record in Confluent's wire format whose header is synthesized when first read
    (most handlers never read it; it cost a record as much as the engine's own work): the same fields, repr
    and equality as a Message; a copy stays lazy, a deep copy or a pickle is a Message, and
    :func:`dataclasses.replace` makes one of this class with the header set. The header of a record whose
    broker timestamp datetime cannot hold (or that has none) is made at once, so a header is the same
    whenever it is made."""

    __slots__ = ("_header_of",)
    _header_of: tuple[Any, ...]  # synthesize_header's arguments

    def _read_header(self) -> Header:
        try:
            return _header_slot.__get__(self, Message)  # type: ignore[no-any-return]
        except AttributeError:
            fields_, message_type, schema_name, version = self._header_of
            header = synthesize_header(
                fields_,
                message_type=message_type,
                schema_name=schema_name,
                version=version,
                topic=self.topic,
                partition=self.partition,
                offset=self.offset,
                timestamp=self.timestamp,
            )
            _header_slot.__set__(self, header)  # (two threads at once: two equal headers, either kept)
            return header

    header = property(_read_header, _header_slot.__set__)  # type: ignore[assignment]

    def labels(self) -> tuple[str, str]:
        """``(messageType, schemaVersion)`` of the header, without making it (for metrics' labels)."""
        try:
            header = _header_slot.__get__(self, Message)
        except AttributeError:
            _, message_type, _, version = self._header_of
            return message_type, str(version)
        return header.message_type, header.schema_version

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return _values(self) == _values(other)  # (tuples: an item is equal to itself, as a Message's are)

    __hash__ = None  # type: ignore[assignment]  # (as a Message's: mutable, compared by value)

    def __repr__(self) -> str:
        return "Message" + Message.__repr__(self).removeprefix(type(self).__qualname__)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (and deep-copied) as a Message, the header made
        return (_as_message, _values(self))

    def __copy__(self) -> _WireMessage:
        copied = _new_wire(_WireMessage)
        try:
            copied._header_of = self._header_of
        except AttributeError:  # made by dataclasses.replace: the header is set
            pass
        try:
            _header_slot.__set__(copied, _header_slot.__get__(self, Message))
        except AttributeError:  # not read yet: made when the copy's is read
            pass
        for name in _message_fields[1:]:
            setattr(copied, name, getattr(self, name))
        return copied


_new_wire = object.__new__
_LAST_MS = 253402300799999  # the last millisecond of year 9999: a broker time datetime can hold
_NO_FIELDS: Mapping[str, str] = MappingProxyType({})


def _wire_message(
    header_of: tuple[Any, ...],
    body: Any,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    headers: list[tuple[str, bytes | None]],
    timestamp: int | None,
    raw: bytes,
    schema_id: int,
    subject: str,
) -> _WireMessage:
    """A wire record's message, its header made from ``header_of`` (fields, messageType, schemaName,
    version) when first read (read it at once when ``timestamp`` is None or beyond datetime: the header
    takes the time it is made)."""
    message = _new_wire(_WireMessage)
    message._header_of = header_of
    message.body = body
    message.topic = topic
    message.partition = partition
    message.offset = offset
    message.key = key
    message.headers = headers
    message.timestamp = timestamp
    message.raw = raw
    message.attempt = 1
    message.delivery_count = None
    message.schema_id = schema_id
    message.subject = subject
    message.key_value = None
    message.key_schema_id = None
    message.key_subject = None
    return message


def _validation_error(exc: Exception) -> MessageError:
    """The MessageError of stage ``validation`` for what a validator raised (other than a MessageError)."""
    if isinstance(exc, RecursionError):
        return MessageError("validation", "body nested too deeply to validate")
    return MessageError("validation", f"{type(exc).__name__}: {exc}")


def _values(message: Message[Any]) -> tuple[Any, ...]:
    return tuple(getattr(message, name) for name in _message_fields)


def message_labels(message: Message[Any]) -> tuple[str, str]:
    """``(messageType, schemaVersion)`` of the message's header, without making a wire record's header."""
    if message.__class__ is _WireMessage:
        return message.labels()  # type: ignore[attr-defined, no-any-return]
    header = message.header
    return header.message_type, header.schema_version


def _as_message(*values: Any) -> Message[Any]:
    return Message(*values)


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
class WirePlan:
    """What a record in the wire format led to, per (topic, schema id, messageType, schemaName header): the
    schemaName, subject and version it was read as, the model and the route."""

    schema_name: str
    subject: str
    version: int
    model: type[BaseModel] | None
    route: Route


@dataclass(slots=True)  # (not frozen: a frozen dataclass's __init__ costs 3x, and one is made per record)
class Prepared:
    """A record that passed every stage: the message for the handler and the route to it."""

    message: Message
    route: Route


class Pipeline:
    """The stages, bound to a resolver, a model index, a handler registry and a serializer."""

    def __init__(
        self,
        resolver: SchemaResolver,
        router: HandlerRegistry,
        models: ModelLookup | None = None,
        serializer: SerializerLike | None = None,
        subject_strategy: SubjectStrategy = schema_name_strategy,
        *,
        max_depth: int = MAX_DEPTH,
        unknown_schema_grace_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        value_formats: Mapping[str, ValueFormat | str] | None = None,
        key_formats: Mapping[str, KeyFormat | str] | None = None,
    ):
        self.resolver = resolver
        self.max_depth = max_depth  # EPISTLE_MAX_NESTING_DEPTH: JSON nesting levels of the whole envelope
        allow_depth(max_depth)
        self.router = router
        self.models = models
        self.serializer = serializer
        self.subject_strategy = subject_strategy
        self.unknown_schema_grace_s = float(unknown_schema_grace_s)
        self._clock = clock
        self._fresh_lookups = _takes_fresh(resolver.resolve)
        self._fresh_id_lookups = _takes_fresh(getattr(resolver, "resolve_id", None))
        from toolkit.consumer.options import check_key_formats, check_value_formats

        keys = check_key_formats(key_formats or {})
        self._default_key_format = keys.pop(DEFAULT_TOPIC, KeyFormat.RAW)
        self.key_formats = keys  # topic -> format; topics not listed: the "*" entry, else raw
        key_topics = [t for t, f in keys.items() if f is not KeyFormat.RAW]
        if self._default_key_format is not KeyFormat.RAW:
            key_topics.append(DEFAULT_TOPIC)
        self._keys_raw = not key_topics  # the common case: no key is decoded
        self.reads_keys = not self._keys_raw
        self.key_subject_strategy = key_strategy_for(subject_strategy)
        self._key_plans: dict[tuple[str, int], tuple[str, int, type[BaseModel] | None]] = {}
        if key_topics and not supports_schema_ids(resolver):
            from toolkit.registry.local import no_schema_ids

            raise ConfigError(
                f"{KEY_SETTING} (key_formats) reads the keys of {', '.join(sorted(key_topics))} in Confluent's "
                f"wire format, but {no_schema_ids(getattr(resolver, 'registry', resolver))}",
                setting="SCHEMA_REGISTRY_URL",
            )
        formats = check_value_formats(value_formats or {})
        self._default_format = formats.pop(DEFAULT_TOPIC, ValueFormat.ENVELOPE)
        self.value_formats = formats  # topic -> format; topics not listed: the "*" entry, else envelope
        wire_topics = [t for t, f in formats.items() if f is not ValueFormat.ENVELOPE]
        if self._default_format is not ValueFormat.ENVELOPE:
            wire_topics.append(DEFAULT_TOPIC)
        self._envelopes_only = not wire_topics
        if wire_topics and not supports_schema_ids(resolver):
            from toolkit.registry.local import no_schema_ids

            raise ConfigError(
                f"{SETTING} (value_formats) reads {', '.join(sorted(wire_topics))} in Confluent's "
                f"wire format, but {no_schema_ids(getattr(resolver, 'registry', resolver))}",
                setting="SCHEMA_REGISTRY_URL",
            )
        self._index_names: tuple[str, ...] | None = None
        self._wire_plans: dict[tuple[str, int, str | None, str | None], WirePlan] = {}
        # (subject, version) or schema id the registry did not know -> (first miss, latest miss), monotonic s
        self._unknown: dict[tuple[str, int] | SchemaIdKey, tuple[float, float]] = {}
        self._compiled: dict[tuple[str, int] | SchemaIdKey, CompiledSchema | WireSchema] = {}
        self._subjects: dict[tuple[str, str, str | None, bool], str] = {}
        self._plans: dict[tuple[str, str, str, str], Plan] = {}

    # -- stages -----------------------------------------------------------------------------------------
    def value_format(self, topic: str | None) -> ValueFormat:
        """The topic's value format (``None``: the format of topics not listed)."""
        return self.value_formats.get(topic, self._default_format) if topic is not None else self._default_format

    def decode(self, value: bytes | None, topic: str | None = None) -> DecodedRecord | WireRecord:
        """Stages ``decode`` and ``envelope``, as the topic's value format says: an envelope's header and
        body, or a record in Confluent's wire format split into its schema id and payload (the payload is
        decoded by :meth:`finish`, once the id's schema is known). Without ``topic``, the format of topics
        not listed (``envelope`` unless ``value_formats`` has a ``*`` entry)."""
        fmt = self.value_format(topic) if self.value_formats or topic is None else self._default_format
        if fmt is ValueFormat.ENVELOPE or (fmt is ValueFormat.AUTO and not looks_confluent(value)):
            return decode_record(value, self.serializer, max_depth=self.max_depth)
        return split(value)

    def locate(
        self, value: bytes | None, topic: str
    ) -> tuple[DecodedRecord | WireRecord, Plan | CompiledSchema | WireSchema | tuple]:
        """:meth:`decode`, then what :meth:`finish` needs: the plan of an earlier record with the same
        header, else the schema if already resolved, else the key to :meth:`resolve` (a tuple) (no I/O).

        Raises:
            MessageError: stage ``decode`` or ``envelope``.
        """
        if self._envelopes_only:  # the common case: no wire format anywhere, no format to look up
            decoded: DecodedRecord | WireRecord = decode_record(value, self.serializer, max_depth=self.max_depth)
        else:
            decoded = self.decode(value, topic)
            if decoded.__class__ is WireRecord:  # its id's schema, looked up with the tuple a SchemaIdKey equals
                wire = self._compiled.get((decoded.schema_id,))  # type: ignore[union-attr, arg-type]
                return decoded, SchemaIdKey(decoded.schema_id) if wire is None else wire  # type: ignore[union-attr]
        header = decoded.header
        if header is not None:
            plan = self._plans.get((topic, header.schema_name, header.message_type, header.schema_version))
            if plan is not None:
                return decoded, plan
        return decoded, self._source(topic, decoded)

    def _source(self, topic: str, decoded: DecodedRecord | WireRecord) -> CompiledSchema | WireSchema | tuple:
        """:meth:`locate` without a plan: the record's schema if it was resolved, else its key to resolve."""
        key = self.subject_of(topic, decoded)
        compiled = self._compiled.get(key)
        return key if compiled is None else compiled

    def key_format(self, topic: str | None) -> KeyFormat:
        """The topic's key format (``None``: the format of topics not listed)."""
        if topic is None:
            return self._default_key_format
        return self.key_formats.get(topic, self._default_key_format)

    def key_to_resolve(self, topic: str, key: bytes | None) -> SchemaIdKey | None:
        """The schema id of ``key`` to :meth:`resolve` before :meth:`finish` (may do I/O there), or None:
        the key is not read in the wire format, its id is resolved already, or its prefix is bad (then
        :meth:`finish` raises). No I/O."""
        if self._keys_raw or not key or key[0] != 0 or len(key) < 5:
            return None
        fmt = self.key_format(topic)
        if fmt is KeyFormat.RAW or (fmt is KeyFormat.AUTO and not key_looks_confluent(key)):
            return None
        id_key = SchemaIdKey(int.from_bytes(key[1:5], "big"))
        return None if id_key in self._compiled else id_key

    def subject_of(self, topic: str, decoded: DecodedRecord | WireRecord) -> tuple[str, int] | SchemaIdKey:
        """The key to resolve: ``(subject, version)`` of an envelope, the schema id of a wire-format record."""
        if decoded.__class__ is WireRecord:
            return SchemaIdKey(decoded.schema_id)  # type: ignore[union-attr]
        header = decoded.header
        assert header is not None
        names = (topic, header.schema_name, header.message_type, False)
        subject = self._subjects.get(names)
        if subject is None:  # a strategy is a pure function of its context: ask once per combination
            subject = self.subject_strategy(SubjectContext(*names[:3]))
            if len(self._subjects) < _MAX_PLANS:  # bounded: schemaName comes from the records
                self._subjects[names] = subject
        return subject, header.version

    def cached(self, key: tuple[str, int] | SchemaIdKey) -> CompiledSchema | WireSchema | None:
        """The compiled schema if it was resolved before (no I/O)."""
        return self._compiled.get(key)

    def resolve(self, key: tuple[str, int] | SchemaIdKey) -> CompiledSchema | WireSchema:
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
        if key.__class__ is SchemaIdKey:
            return self._resolve_id(key)  # type: ignore[arg-type]
        subject, version = cast(tuple[str, int], key)
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
            raise MessageError(
                "schema", f"schema {subject!r} v{version} cannot be used: {type(exc).__name__}: {exc}"
            ) from None
        self._unknown.pop(key, None)
        self._compiled[key] = compiled
        return compiled

    def resolve_key(self, key: SchemaIdKey) -> WireSchema:
        """:meth:`resolve` for a record key's schema id; a final failure's reason starts with
        ``key (schema id N)``, so it does not read as the value's.

        Raises:
            as :meth:`resolve`.
        """
        try:
            return cast(WireSchema, self.resolve(key))
        except MessageError as exc:
            raise MessageError(
                exc.stage, f"key (schema id {key.schema_id}): {exc.reason}", details=exc.details
            ) from None

    def _resolve_id(self, key: SchemaIdKey) -> WireSchema:
        """Stage ``schema`` for a schema id: the registry's schema and its payload reader. The grace clock
        is the id's; it stops once :meth:`finish` found a subject the topic reads among the id's."""
        schema_id = key.schema_id
        resolve_id = self.resolver.resolve_id  # type: ignore[attr-defined]
        try:
            if self._fresh_id_lookups and self._waiting(key):
                schema, compiled = resolve_id(schema_id, fresh=True)
            else:
                schema, compiled = resolve_id(schema_id)
            wire = WireSchema.build(schema, compiled, max(1, self.max_depth - 1))
        except SchemaNotFound as exc:
            raise self._unknown_schema(key, exc) from None
        except (RegistryUnavailable, MessageError):
            raise
        except Exception as exc:  # a schema the validator cannot compile is not something a retry fixes
            raise MessageError("schema", f"schema id {schema_id} cannot be used: {type(exc).__name__}: {exc}") from None
        self._compiled[key] = wire
        return wire

    def _waiting(self, key: tuple[str, int] | SchemaIdKey) -> bool:
        """The registry did not know ``key`` at the last lookup and its grace is not over."""
        seen = self._unknown.get(key)
        return seen is not None and self._clock() - seen[0] < self.unknown_schema_grace_s

    def _unknown_schema(self, key: tuple[str, int] | SchemaIdKey, exc: SchemaNotFound) -> Exception:
        if key.__class__ is SchemaIdKey:
            what, subject, version, path = f"schema id {key[0]}", None, None, "/schemaId"
        else:
            subject, version = key  # type: ignore[misc]
            what = f"subject {quoted(subject)} version {version}"
            path = "/header/schemaVersion" if "version" in str(exc).lower() else "/header/schemaName"
        if isinstance(exc, SchemaCannotExist):  # a name the registry can never hold: no grace to wait out
            return MessageError(
                "schema",
                f"unknown schema: {what}: {exc}",
                details=[{"path": "/header/schemaName", "message": str(exc), "unknown_for_s": 0.0, "grace_s": 0.0}],
            )
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
        if waited < grace:
            left = grace - waited
            return SchemaNotYetKnown(
                f"{what} not in the registry (yet): {exc}; asking again for up to "
                f"{left:.1f}s more ({GRACE_SETTING}={grace:g})",
                unknown_for_s=waited,
                grace_s=grace,
                retry_in_s=min(UNKNOWN_RETRY_MAX_S, max(left, 0.01)),
                subject=subject,
                version=version,
            )
        waited_text = (
            f"still unknown after {waited:.1f}s of asking again ({GRACE_SETTING}={grace:g})"
            if grace > 0
            else f"not waited for ({GRACE_SETTING}=0)"
        )
        return MessageError(
            "schema",
            f"unknown schema: {what}: {exc}; {waited_text}",
            details=[{"path": path, "message": str(exc), "unknown_for_s": round(waited, 3), "grace_s": grace}],
        )

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
        except Exception as exc:  # noqa: BLE001 - stage validation, whatever the validator raised
            raise _validation_error(exc) from None

    def _model(self, header: Header) -> type[BaseModel]:
        assert self.models is not None
        model = self.models.get(header.schema_name, header.version)
        if model is None:
            raise MessageError(
                "model", f"no generated model for {header.schema_name} v{header.version}; run make codegen and redeploy"
            )
        return model

    @staticmethod
    def _build(value: Any, model: type[BaseModel]) -> Any:
        try:  # (model_validate's own call, without its Python frame and keywords: ~1 us a record)
            return model.__pydantic_validator__.validate_python(value)
        except (ValidationError, RecursionError) as exc:
            return Pipeline._refused(value, model, exc)

    @staticmethod
    def _refused(value: Any, model: type[BaseModel], exc: ValidationError | RecursionError) -> Any:
        """Stage ``model`` after pydantic refused ``value`` with ``exc``: a body of a recursive model nested
        beyond pydantic's fixed limit is built without that limit; anything else is the stage's failure.

        Raises:
            MessageError: stage ``model``.
        """
        try:
            if isinstance(exc, RecursionError) or not is_too_deep(exc.errors(include_url=False)):
                raise exc
            return validate_deep(model, value)  # recursive models nested beyond pydantic's fixed limit
        except ValidationError as error:
            details = [
                {"path": "/body/" + "/".join(str(p) for p in err["loc"]), "message": err["msg"]}
                for err in error.errors(include_url=False)
            ]
            notes = "".join(f"; {note}" for note in getattr(error, "__notes__", ()))
            raise MessageError(
                "model", f"body does not fit {model.__name__}: {len(details)} error(s){notes}", details=details
            ) from None
        except RecursionError:
            raise MessageError("model", "body nested too deeply for the model") from None

    def route(self, topic: str, header: Header) -> Route:
        """Stage ``routing``."""
        return self.router.route(topic, header.message_type, header.schema_name, header.version)

    # -- all at once (tests, and the runtime's hot path once the schema is cached) -----------------------
    def prepare(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]] | None = None,
        timestamp: int | None = None,
    ) -> Prepared:
        """Every stage for one record.

        Raises:
            MessageError: the record is at fault (``stage`` says where).
            RegistryUnavailable: the registry cannot be reached.
        """
        decoded = self.decode(value, topic)
        key_ = self.subject_of(topic, decoded)
        compiled = self.resolve(key_)
        pending = self.key_to_resolve(topic, key)
        if pending is not None:
            self.resolve_key(pending)
        return self.finish(
            decoded,
            compiled,
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
            headers=headers,
            timestamp=timestamp,
        )

    def plan(self, topic: str, header: Header | None) -> Plan | None:
        """What an earlier record with the same topic and header fields led to (no I/O), or None (always
        for a record in the wire format, whose header is None until :meth:`finish`)."""
        if header is None:
            return None
        return self._plans.get((topic, header.schema_name, header.message_type, header.schema_version))

    def forget_plans(self) -> None:
        """Drop every plan (handlers changed: routes must be looked up again)."""
        self._plans.clear()
        self._wire_plans.clear()

    def ready(self, record: Record) -> tuple[Message[Any], Route] | BaseException | None:
        """The engine's fast lane, in one call: a record whose schema is resolved (no registry lookup)
        through every stage, as its message and route; the exception of the stage that failed (its outcome
        is decided by the engine, as if it had run the stage); None when the registry must be asked (the
        engine takes the record from the start). Never raises.

        The common record (an envelope whose header an earlier record got through with: a :class:`Plan`)
        runs stages ``decode`` to ``model`` here without a call of each stage's own; each stage raises what
        it raises on the general path (:meth:`locate`, :meth:`finish`). Keys are not read: a pipeline that
        reads keys in the wire format (``reads_keys``) is not given to the fast lane."""
        try:
            value, topic = record.value(), record.topic()
            if self._envelopes_only and value.__class__ is bytes:  # (None, a tombstone: locate says so)
                envelope = parse_envelope(load_document(value, self.serializer, self.max_depth))
                header = envelope.header
                plan = self._plans.get((topic, header.schema_name, header.message_type, header.schema_version))
                if plan is None:
                    decoded: DecodedRecord | WireRecord = envelope
                    source: Any = self._source(topic, envelope)
                else:  # (the common case: _validate and _build without calls of their own)
                    try:
                        body = plan.compiled.decode(envelope.body)
                    except MessageError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - as _validate tells it
                        raise _validation_error(exc) from None
                    model = plan.model
                    if model is not None:
                        try:
                            body = model.__pydantic_validator__.validate_python(body)
                        except (ValidationError, RecursionError) as exc:  # (validated once: _build's rest)
                            body = self._refused(body, model, exc)
                    _, timestamp = record.timestamp()
                    message: Message[Any] = Message(
                        header,
                        body,
                        topic,
                        record.partition(),
                        record.offset(),
                        record.key(),
                        record.headers() or [],
                        timestamp if timestamp > 0 else None,
                        value,
                    )
                    return message, plan.route
            else:
                decoded, source = self.locate(value, topic)
                if source.__class__ is Plan:
                    prepared = self.finish_record(record, decoded, source)
                    return prepared.message, prepared.route
            if isinstance(source, tuple):
                return None
            if decoded.__class__ is WireRecord:
                return self.planned_wire(decoded, source, record)  # type: ignore[arg-type]
            prepared = self.finish_record(record, decoded, source)
            return prepared.message, prepared.route
        except BaseException as exc:  # noqa: BLE001 - every failure is an outcome (no await here: not a cancel)
            return exc

    def finish_record(
        self, record: Record, decoded: DecodedRecord | WireRecord, source: CompiledSchema | Plan | WireSchema
    ) -> Prepared:
        """:meth:`finish` with the record's context read from ``record``."""
        _, timestamp = record.timestamp()
        return self.finish(
            decoded,
            source,
            topic=record.topic(),
            partition=record.partition(),
            offset=record.offset(),
            key=record.key(),
            value=record.value(),
            headers=record.headers(),
            timestamp=timestamp if timestamp > 0 else None,
        )

    def finish(
        self,
        decoded: DecodedRecord | WireRecord,
        source: CompiledSchema | Plan | WireSchema,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]] | None,
        timestamp: int | None,
    ) -> Prepared:
        """Stages ``validation``, ``model`` and ``routing``, from the resolved schema or from a :class:`Plan`.

        Stages run in the same order either way; the first success for a header remembers its plan, so
        later records skip the model and route lookups. A record in the wire format goes through
        :meth:`_finish_wire` (``source`` is the id's :class:`~toolkit.wire.WireSchema`).
        """
        if decoded.__class__ is WireRecord:
            return Prepared(
                *self._finish_wire(
                    decoded,  # type: ignore[arg-type]
                    source,  # type: ignore[arg-type]
                    topic,
                    partition,
                    offset,
                    key,
                    value,
                    headers,
                    timestamp,
                )
            )
        header = decoded.header
        assert header is not None
        if isinstance(source, Plan):
            body = self._validate(decoded.body, source.compiled)  # type: ignore[union-attr]
            if source.model is not None:
                body = self._build(body, source.model)
            route = source.route
        else:
            body = self._validate(decoded.body, source)  # type: ignore[union-attr, arg-type]
            model = None
            if self.models is not None:
                model = self._model(header)
                body = self._build(body, model)
            route = self.route(topic, header)
            if len(self._plans) < _MAX_PLANS:  # bounded: header fields come from the records
                plan_key = (topic, header.schema_name, header.message_type, header.schema_version)
                self._plans[plan_key] = Plan(source, model, route)  # type: ignore[arg-type]
        message = Message(header, body, topic, partition, offset, key, headers or [], timestamp, value or b"")
        if not self._keys_raw and key is not None:
            self._read_key(topic, key, message)
        return Prepared(message, route)

    # -- Confluent's wire format ---------------------------------------------------------------------------
    def planned_wire(self, decoded: WireRecord, wire: WireSchema, record: Record) -> tuple[Message[Any], Route]:
        """:meth:`finish` for a record in the wire format, its context read from ``record`` (the engine's fast
        lane: no Prepared, no keyword arguments).

        Raises:
            MessageError: stages ``schema``, ``decode``, ``validation``, ``model`` or ``routing``.
            SchemaNotYetKnown: no subject of the id is one the topic reads yet.
        """
        _, timestamp = record.timestamp()
        if 0 < timestamp <= _LAST_MS and self._keys_raw and wire.__class__ is WireSchema:  # the common case
            headers = record.headers()
            fields = header_fields(headers) if headers else _NO_FIELDS
            message_type = fields.get("messageType") or wire.message_type
            topic = record.topic()
            plan = self._wire_plans.get((topic, wire.schema_id, message_type, fields.get("schemaName")))
            if plan is not None:  # the stages of _finish_wire with a plan, in its order
                body = wire.read(decoded.payload)
                if not wire.avro:
                    body = self._validate(body, wire.compiled)
                if plan.model is not None:
                    body = self._build(body, plan.model)
                schema_name = plan.schema_name
                message = _wire_message(
                    (fields, message_type or schema_name, schema_name, plan.version),
                    body,
                    topic,
                    record.partition(),
                    record.offset(),
                    record.key(),
                    headers or [],
                    timestamp,
                    record.value() or b"",
                    wire.schema_id,
                    plan.subject,
                )
                return message, plan.route
        return self._finish_wire(
            decoded,
            wire,
            record.topic(),
            record.partition(),
            record.offset(),
            record.key(),
            record.value(),
            record.headers(),
            timestamp if timestamp > 0 else None,
        )

    def _finish_wire(
        self,
        record: WireRecord,
        wire: WireSchema,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]] | None,
        timestamp: int | None,
    ) -> tuple[Message[Any], Route]:
        """Stages ``schema`` (the subject among the id's that the topic reads), ``decode`` (the payload),
        ``validation`` (a JSON payload), ``model`` and ``routing``, then the synthesized header."""
        if not isinstance(wire, WireSchema):
            raise InvalidArgumentType(
                f"a record in Confluent's wire format is finished with the WireSchema of "
                f"its id, not a {type(wire).__name__}"
            )
        fields = header_fields(headers)
        message_type = fields.get("messageType") or wire.message_type
        named = fields.get("schemaName")
        plan_key = (topic, wire.schema_id, message_type, named)
        plan = self._wire_plans.get(plan_key)
        if plan is None:
            schema_name, subject, version = self._choose_subject(topic, wire, message_type, named)
        else:
            schema_name, subject, version = plan.schema_name, plan.subject, plan.version
        body = wire.read(record.payload)
        if not wire.avro:  # Avro binary is checked by decoding it with the writer's schema
            body = self._validate(body, wire.compiled)
        message_type = message_type or schema_name
        if plan is None:
            model = None
            if self.models is not None:
                model = self.models.get(schema_name, version)
                if model is None:
                    raise MessageError(
                        "model",
                        f"no generated model for {schema_name} v{version} (schema id "
                        f"{wire.schema_id}, subject {subject!r}); run make codegen and "
                        "redeploy",
                    )
                body = self._build(body, model)
            route = self.router.route(topic, message_type, schema_name, version)
            plan = WirePlan(schema_name, subject, version, model, route)
            if len(self._wire_plans) < _MAX_PLANS:  # bounded: header fields come from the records
                self._wire_plans[plan_key] = plan
        elif plan.model is not None:
            body = self._build(body, plan.model)
        message = _wire_message(
            (fields, message_type, schema_name, version),
            body,
            topic,
            partition,
            offset,
            key,
            headers or [],
            timestamp,
            value or b"",
            wire.schema_id,
            subject,
        )
        if timestamp is None or not 0 < timestamp <= _LAST_MS:
            message._read_header()  # made now: without a broker time datetime can hold, its time is now
        if not self._keys_raw and key is not None:
            self._read_key(topic, key, message)
        return message, plan.route

    def _choose_subject(
        self, topic: str, wire: WireSchema, message_type: str | None, named: str | None, *, key: bool = False
    ) -> tuple[str, str, int]:
        """``(schemaName, subject, version)`` for a record of ``topic`` carrying ``wire``'s id.

        The subject strategy says which subjects a topic reads; the id's own ``(subject, version)`` pairs
        say which it is registered as. A schemaName fits when the strategy maps it (for this topic and
        messageType) to one of the id's subjects. Tried in order: the record's ``schemaName`` Kafka header;
        then the model index's schemaNames, the topic name and the id's subjects, keeping those with a
        generated model for the version when there is a model index (several: the one named like the topic,
        else the one whose generated class is named like the schema's record or title, else the record is
        refused as ambiguous), else the first that fits.

        Raises:
            SchemaNotYetKnown: no subject of the id is one the topic reads, within the grace (the id is
                looked up again: the schema may be registered under the topic's subject meanwhile).
            MessageError: stage ``schema``: the same after the grace, or an ambiguous schemaName.
        """
        id_key = SchemaIdKey(wire.schema_id)
        versions = dict(wire.schema.versions)
        mt = message_type or None
        reader = f"the keys of topic {topic!r} are read as" if key else f"topic {topic!r} reads"

        def fits(name: str) -> str | None:
            subject = self._subject_for(topic, name, mt, key)
            return subject if subject in versions else None

        if named and (subject := fits(named)):
            self._unknown.pop(id_key, None)
            return named, subject, versions[subject]
        hits = [
            (name, subject)
            for name in dict.fromkeys((*self._model_names(), topic, *versions))
            if (subject := fits(name))
        ]
        if not hits:
            registered = ", ".join(f"{s!r} v{v}" for s, v in versions.items()) or "no subject"
            self._compiled.pop(id_key, None)  # asked again on the retry: the id may gain the topic's subject
            raise self._unknown_schema(
                id_key,
                SchemaNotFound(
                    f"schema id {wire.schema_id} is registered as {registered}, none of them a subject {reader} "
                    "under the subject strategy (SCHEMA_REGISTRY_SUBJECT_STRATEGY"
                    + (f"; {self._subject_for(topic, topic, None, True)!r} for keys)" if key else ")")
                ),
            )
        if self.models is not None:
            modelled = [hit for hit in hits if self._has_model(hit[0], versions[hit[1]])]
            if key:
                # <topic>-key fits every schemaName: a key's model is the one named as its subject, else the
                # one named like its record or title; none (a primitive key): the decoded value
                modelled = [hit for hit in modelled if hit[0] == hit[1]] or self._named_like(
                    modelled, versions, wire.message_type
                )
                if not modelled:
                    self._unknown.pop(id_key, None)
                    return "", hits[0][1], versions[hits[0][1]]
            if len(modelled) > 1:
                names = ", ".join(sorted({name for name, _ in modelled}))
                modelled = [hit for hit in modelled if hit[0] == topic] or self._named_like(
                    modelled, versions, wire.message_type
                )
                if len(modelled) != 1:
                    raise MessageError(
                        "schema",
                        f"schema id {wire.schema_id} on topic {topic!r} fits several "
                        f"schemaNames with a generated model ({names}); send the "
                        "schemaName as a Kafka header (the toolkit's producer does), "
                        "or name the schema folder after the topic",
                        details=[{"path": "/schemaId", "message": f"ambiguous: {names}"}],
                    )
            if modelled:
                hits = modelled
        name, subject = hits[0]
        self._unknown.pop(id_key, None)
        return name, subject, versions[subject]

    def _named_like(
        self, hits: list[tuple[str, str]], versions: dict[str, int], message_type: str | None
    ) -> list[tuple[str, str]]:
        """The hits whose generated root class is named like the schema's record or title (codegen names it
        so: ``com.acme.Payment`` -> ``Payment``)."""
        if not message_type:
            return []
        short = message_type.rsplit(".", 1)[-1]
        assert self.models is not None
        return [
            (name, subject)
            for name, subject in hits
            if getattr(self.models.get(name, versions[subject]), "__name__", None) == short
        ]

    def _subject_for(self, topic: str, schema_name: str, message_type: str | None, key: bool = False) -> str:
        names = (topic, schema_name, message_type, key)
        subject = self._subjects.get(names)
        if subject is None:
            strategy = self.key_subject_strategy if key else self.subject_strategy
            subject = strategy(SubjectContext(topic, schema_name, message_type))
            if len(self._subjects) < _MAX_PLANS:
                self._subjects[names] = subject
        return subject

    def _read_key(self, topic: str, key: bytes, message: Message) -> None:
        """A key in the wire format decoded into ``message`` (``key_value``, ``key_schema_id``,
        ``key_subject``); a key the topic's key format leaves raw is left alone.

        Raises:
            MessageError: stage ``decode`` (the prefix or the payload), ``schema`` (an id no subject of the
                topic's keys has, after the grace) or ``model`` (the key does not fit its model).
            SchemaNotYetKnown, RegistryUnavailable: as :meth:`resolve` (only when :meth:`key_to_resolve`
                was not resolved first).
        """
        fmt = self.key_format(topic)
        if fmt is KeyFormat.RAW or (fmt is KeyFormat.AUTO and not key_looks_confluent(key)):
            return
        record = split(key, "key")
        id_key = SchemaIdKey(record.schema_id)
        wire = self._compiled.get(id_key)
        if wire is None:
            wire = self.resolve_key(id_key)
        assert isinstance(wire, WireSchema)
        plan = self._key_plans.get((topic, record.schema_id))
        if plan is None:
            name, subject, version = self._choose_subject(topic, wire, wire.message_type, None, key=True)
            # a key schema without a generated model (a primitive, often) gives the decoded value
            model = self.models.get(name, version) if self.models is not None and name else None
            plan = (subject, version, model)
            if len(self._key_plans) < _MAX_PLANS:  # bounded: schema ids come from the records
                self._key_plans[(topic, record.schema_id)] = plan
        subject, version, model = plan
        try:
            value = wire.read(record.payload)
            if not wire.avro:
                value = self._validate(value, wire.compiled)
            if model is not None:
                value = self._build(value, model)
        except MessageError as exc:
            details = [
                {**d, "path": "/key/" + str(d.get("path", "")).removeprefix("/body/")}
                for d in exc.details or []
                if isinstance(d, dict)
            ]
            raise MessageError(
                exc.stage, f"key (schema id {record.schema_id}): {exc.reason}", details=details or None
            ) from None
        message.key_value = value
        message.key_schema_id = record.schema_id
        message.key_subject = subject

    def _model_names(self) -> tuple[str, ...]:
        """The schemaNames of the model index, when it can list them (a :class:`ModelIndex` can)."""
        if self._index_names is None:
            names: tuple[str, ...] = ()
            if self.models is not None and isinstance(self.models, Iterable):
                try:
                    names = tuple(sorted({str(entry[0]) for entry in self.models}))
                except (TypeError, IndexError):
                    names = ()
            self._index_names = names
        return self._index_names

    def _has_model(self, schema_name: str, version: int) -> bool:
        assert self.models is not None
        if hasattr(self.models, "__contains__"):  # a ModelIndex: no import of the model's module
            return (schema_name, version) in self.models  # type: ignore[operator]
        return self.models.get(schema_name, version) is not None


def _takes_fresh(method: Any) -> bool:
    """Whether a resolver's lookup takes ``fresh=`` (ask the registry past a remembered miss)."""
    if method is None:
        return False
    try:
        return "fresh" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
