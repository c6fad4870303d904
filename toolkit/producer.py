"""Producing: publish generated models as envelopes (or in Confluent's wire format), validated first.

    async with EnvelopeProducer.from_settings(load_settings()) as producer:
        delivery = await producer.publish("orders", order, key=str(order.order_id))

- The model's ``(schemaName, schemaVersion)`` comes from the generated index (``generated_models._index``),
  read backwards: the class is the key. A class that is not a generated root model is refused.
- The body is validated before anything is sent, by the compiled schema the consumer uses (resolved through
  the same cached registry and subject strategy); an invalid body raises :class:`PublishRefused` with the
  paths at fault and nothing is produced.
- Bodies are what the consumer's validator reads: plain JSON for a JSON Schema (fields left unset in the
  model are omitted, so the consumer's model fills the same defaults); for Avro, Avro's JSON encoding
  written by fastavro's JSON writer (unions wrapped, bytes and decimals as code-point strings, ``big-decimal``
  as Java writes it, timestamps as epoch milliseconds).
- The header is filled: ``messageType`` (the model class name unless given), ``schemaName``,
  ``schemaVersion``, a new ``messageId`` (uuid4), ``timestamp`` (now, UTC), ``producer`` (the producer's
  name) and ``correlationId``: the one given, else inside a handler the correlationId of the message being
  handled (:mod:`toolkit.consumer.context`), else the new messageId (the message starts a conversation).
- Tracing (only when OpenTelemetry is installed: the ``tracing`` extra): :meth:`EnvelopeProducer.send` and
  :meth:`~EnvelopeProducer.publish` make a ``send <topic>`` span of kind PRODUCER (messaging semantic
  conventions), from the call to the broker's acknowledgement, a child of the current span (a handler
  traced by :class:`toolkit.observability.tracing.TracingMiddleware`, or the application's own) or a new
  trace; the record carries its context in W3C ``traceparent``/``tracestate`` headers (the propagators of
  ``OTEL_PROPAGATORS``), so the consumer's span is its child. :meth:`~EnvelopeProducer.build` alone makes no
  span and writes the current one's context. Headers of those names given by the caller are kept as they are.
- acks=all with idempotence; librdkafka's log goes to ``toolkit.kafka`` like the consumer's.
  :meth:`EnvelopeProducer.publish` is awaited until the broker acknowledged the record;
  :meth:`EnvelopeProducer.send` is the synchronous form returning a future. :meth:`close` (and leaving the
  ``with`` / ``async with`` block) flushes what is still in flight; what the broker has not acknowledged
  by the flush timeout is purged and its futures fail with :class:`DeliveryFailed`.
- The building (model to validated record: everything above) is :class:`ModelProducer`'s, shared by both
  brokers' producers: :class:`EnvelopeProducer` (Kafka) and :class:`toolkit.producer_amqp.RabbitProducer`
  (RabbitMQ: publisher confirms, mandatory, persistent). :func:`make_producer` gives the one ``EPISTLE_BROKER``
  names, as ``epistle run`` consumes from it.
- Each topic's value format (``EPISTLE_PRODUCER_VALUE_FORMATS`` or ``value_formats=``: ``topic=format``
  pairs as ``EPISTLE_VALUE_FORMATS`` reads them, ``envelope`` or ``confluent``, ``*`` for every other topic;
  ``EPISTLE_PRODUCER_CONFLUENT_TOPICS`` / ``confluent_topics=`` list topics as ``confluent`` too) says how its
  values are written: envelopes, or Confluent's wire format: magic byte 0, the registry's 4-byte schema
  id, then Avro binary or the JSON body. That needs a registry that assigns schema ids
  (``SCHEMA_REGISTRY_URL``); the toolkit's consumer reads such records on topics whose value format is
  ``confluent`` or ``auto`` (``EPISTLE_VALUE_FORMATS``).
- A key given as a generated model is written in Confluent's wire format on topics whose key format
  (``EPISTLE_PRODUCER_KEY_FORMATS`` or ``key_formats=``: ``raw`` or ``confluent``) is ``confluent``, with
  the schema of its subject (``<topic>-key`` under the topic strategy, else as a value's), validated
  first like the value; a ``str`` or ``bytes`` key is written as it is on every other topic.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import io
import json
import logging
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol, Self

from pydantic import BaseModel

from toolkit.consumer.context import current_message
from toolkit.consumer.kafka_log import kafka_logger
from toolkit.envelope import Header, compact_json, encode_envelope, header_fields
from toolkit.errors import ConfigError, EpistleError, InvalidArgument, MessageError, SchemaNotFound
from toolkit.layout import SchemaFormat
from toolkit.registry.base import SubjectContext, SubjectStrategy, key_strategy_for
from toolkit.settings import KafkaSettings, ProducerSettings, Settings, load_producer_settings
from toolkit.wire import (
    DEFAULT_TOPIC,
    PRODUCER_KEY_SETTING,
    PRODUCER_SETTING,
    KeyFormat,
    ValueFormat,
    parse_formats,
)

log = logging.getLogger("toolkit.producer")

_MAGIC = 0
HeadersLike = Mapping[str, str | bytes | None] | Iterable[tuple[str, str | bytes | None]]


class WireFormat(StrEnum):
    """How a topic's records are written: the toolkit's ``{header, body}`` envelope (default), or
    Confluent's schema-registry wire format."""

    ENVELOPE = "envelope"
    CONFLUENT = "confluent"


class PublishRefused(EpistleError):
    """The model cannot be published as it is; nothing was sent. ``details`` lists ``{"path", "message"}``
    where the body fails its schema."""

    def __init__(
        self,
        message: str,
        *,
        topic: str,
        schema_name: str | None = None,
        version: int | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.topic, self.schema_name, self.version, self.details = topic, schema_name, version, details


class DeliveryFailed(EpistleError):
    """The broker did not acknowledge a record (librdkafka gave up: delivery timeout, record too large,
    no such topic, not authorised). ``retriable`` is librdkafka's verdict; ``code`` its error name."""

    def __init__(self, message: str, *, topic: str, code: str | None = None, retriable: bool = False) -> None:
        super().__init__(message)
        self.topic, self.code, self.retriable = topic, code, retriable


class KafkaProducerClient(Protocol):
    """What the producer needs of confluent-kafka's ``Producer`` (tests pass an in-memory double)."""

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Any = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...

    def purge(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """A record ready to produce: what :meth:`EnvelopeProducer.build` makes of a model."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes | None]] | None
    header: Header
    wire_format: WireFormat
    schema_id: int | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the broker acknowledged. On RabbitMQ: ``partition`` is the index of the queue among the topic's
    queues (0 for a topic of one queue), ``queue`` its name, and ``offset`` -1 (AMQP has none)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None  # epoch milliseconds
    message_id: str
    correlation_id: str
    queue: str | None = None  # RabbitMQ: the queue it was routed to


def _varint(value: int) -> bytes:
    """An Avro int/long: zig-zag, then 7 bits a byte, low bits first."""
    zigzag = value << 1 if value >= 0 else ((-value) << 1) - 1
    out = bytearray()
    while True:
        byte, zigzag = zigzag & 0x7F, zigzag >> 7
        out.append(byte | (0x80 if zigzag else 0))
        if not zigzag:
            return bytes(out)


def _write_big_decimal(value: Any, schema: Any = None) -> Any:
    """Avro 1.12 ``big-decimal`` (bytes) as Java's ``Conversions.BigDecimalConversion`` writes it: the
    unscaled value as Avro ``bytes`` (a length, then minimal two's complement big-endian), then the scale
    as an Avro ``int``. The inverse of :func:`toolkit.validation.avro._read_big_decimal`; fastavro has no
    writer for it. Anything but a Decimal is left for fastavro to check (bytes pass through)."""
    if not isinstance(value, Decimal):
        return value
    if not value.is_finite():
        raise ValueError(f"{value} cannot be written as a big-decimal (not finite)")
    sign, digits, exponent = value.as_tuple()
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    scale = -int(exponent)
    if not -(2**31) <= scale < 2**31:
        raise ValueError(f"{value} cannot be written as a big-decimal (its scale does not fit an int)")
    size = ((unscaled if unscaled >= 0 else ~unscaled).bit_length() + 8) // 8
    data = unscaled.to_bytes(size, "big", signed=True)
    return _varint(len(data)) + data + _varint(scale)


def _big_decimal_writer() -> None:
    """Teach fastavro's writers (and its validator) ``big-decimal``, through its documented hook for custom
    logical types. Only a type fastavro does not know is added; bytes are written as before."""
    from fastavro.write import LOGICAL_WRITERS

    LOGICAL_WRITERS.setdefault("bytes-big-decimal", _write_big_decimal)


def avro_json_body(parsed_schema: Any, value: Any) -> Any:
    """``value`` (Python values: Decimal, datetime, UUID ...) in Avro's JSON encoding, as decoded JSON, by
    fastavro's JSON writer with its validation on (``big-decimal`` written as Java writes it).

    Raises:
        InvalidArgument: ``value`` does not fit the schema (fastavro's message names the field); it is a
            ValueError too.
    """
    from fastavro import json_writer
    from fastavro.validation import ValidationError as AvroValidationError

    _big_decimal_writer()
    buffer = io.StringIO()
    try:
        json_writer(buffer, parsed_schema, [value], validator=True)
    except AvroValidationError as exc:
        raise InvalidArgument("; ".join(str(e) for e in exc.errors) or str(exc), argument="value") from None
    except Exception as exc:  # noqa: BLE001 - fastavro's TypeError, KeyError ... on a value or schema it cannot use
        raise InvalidArgument(f"{type(exc).__name__}: {exc}", argument="value") from None
    return json.loads(buffer.getvalue())


def avro_binary_body(parsed_schema: Any, value: Any) -> bytes:
    """``value`` as schemaless Avro binary (fastavro), what Confluent's Avro serializer writes after the
    5-byte prefix.

    Raises:
        InvalidArgument: ``value`` does not fit the schema (a ValueError too).
    """
    from fastavro import schemaless_writer

    _big_decimal_writer()
    buffer = io.BytesIO()
    try:
        schemaless_writer(buffer, parsed_schema, value)
    except Exception as exc:  # noqa: BLE001 - fastavro's TypeError, ValueError ... name the field or type
        raise InvalidArgument(f"{type(exc).__name__}: {exc}", argument="value") from None
    return buffer.getvalue()


class ModelProducer:
    """What every producer does before the broker: a generated model to a validated record
    (:meth:`build`: the schema from the model index, the registry's compiled schema, the envelope or
    wire-format value, the header filled and the correlationId carried over), and the sending API on top of
    the broker's :meth:`send_record` (:class:`EnvelopeProducer` for Kafka,
    :class:`toolkit.producer_amqp.RabbitProducer` for RabbitMQ). Not used on its own.

    Args:
        registry: a caching resolver (``resolve(subject, version)``) or a bare registry (wrapped in a
            :class:`~toolkit.registry.cache.CachedRegistry`); None builds one from ``settings.registry``
            (the local ``schemas/`` folder when no URL is set). Pass the consumer's to share its cache.
        models: the generated model index (``key_of(model_class)``); None loads ``generated_models``.
        name: the header's ``producer`` (default ``EPISTLE_PRODUCER_NAME``).
        subject_strategy: as the consumer's (default from ``SCHEMA_REGISTRY_SUBJECT_STRATEGY``).
        value_formats: topic -> ``envelope`` or ``confluent`` (``*``: every other topic; default
            ``EPISTLE_PRODUCER_VALUE_FORMATS``); topics not listed get envelopes.
        key_formats: topic -> ``raw`` or ``confluent`` (default ``EPISTLE_PRODUCER_KEY_FORMATS``): where a
            model key is written in Confluent's wire format.
        confluent_topics: topics written in Confluent's wire format, as ``topic: confluent`` in
            ``value_formats`` (default ``EPISTLE_PRODUCER_CONFLUENT_TOPICS``).
        tracer_provider: the OpenTelemetry provider of the PRODUCER spans; None is the global one.
    """

    messaging_system = "kafka"
    """The PRODUCER span's ``messaging.system`` (OpenTelemetry's semantic conventions)."""

    def __init__(
        self,
        *,
        registry: Any = None,
        models: Any = None,
        name: str | None = None,
        subject_strategy: SubjectStrategy | None = None,
        confluent_topics: Iterable[str] | None = None,
        value_formats: Mapping[str, str] | None = None,
        key_formats: Mapping[str, str] | None = None,
        settings: Settings | None = None,
        producer_settings: ProducerSettings | None = None,
        tracer_provider: Any = None,
    ) -> None:
        own = producer_settings or ProducerSettings.model_construct()
        self.settings = settings
        self.name = name or own.name
        self.flush_timeout_s = own.flush_timeout_s
        self.confluent_topics = frozenset(confluent_topics if confluent_topics is not None else own.confluent_topics)
        formats = _formats(value_formats, own.value_formats, "value_formats", PRODUCER_SETTING, ValueFormat)
        for topic in self.confluent_topics:
            if formats.get(topic, ValueFormat.CONFLUENT) is not ValueFormat.CONFLUENT:
                raise ConfigError(
                    f"topic {topic!r} is listed in confluent_topics (EPISTLE_PRODUCER_CONFLUENT_TOPICS) and "
                    f"has the value format {formats[topic]} in value_formats ({PRODUCER_SETTING}); "
                    "list it in one of them",
                    setting="value_formats",
                )
            formats[topic] = ValueFormat.CONFLUENT
        self._default_format = formats.pop(DEFAULT_TOPIC, ValueFormat.ENVELOPE)
        self.value_formats: dict[str, ValueFormat] = formats
        self.confluent_topics = frozenset(t for t, f in formats.items() if f is ValueFormat.CONFLUENT)
        keys = _formats(key_formats, own.key_formats, "key_formats", PRODUCER_KEY_SETTING, KeyFormat)
        self._default_key_format = keys.pop(DEFAULT_TOPIC, KeyFormat.RAW)
        self.key_formats: dict[str, KeyFormat] = keys
        if subject_strategy is None:
            from toolkit.registry.factory import default_subject_strategy

            subject_strategy = default_subject_strategy(settings)
        self._subject_strategy = subject_strategy
        self._key_strategy = key_strategy_for(subject_strategy)
        self._registry_arg = registry
        self._resolver: Any = None
        self._models = models
        self._keys: dict[type, tuple[str, int]] = {}
        self._plans: dict[tuple[str, str, int, str, bool], tuple[str, Any, Any]] = {}
        self._tracer_provider = tracer_provider
        self._tracer: Any = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        registry: Any = None,
        models: Any = None,
        producer_settings: ProducerSettings | None = None,
        **overrides: Any,
    ) -> Self:
        """A producer configured from :func:`~toolkit.settings.load_settings` and ``EPISTLE_PRODUCER_*``.

        Raises:
            ConfigError: an ``EPISTLE_PRODUCER_*`` value is invalid (named with the fix).
        """
        return cls(
            settings=settings,
            registry=registry,
            models=models,
            producer_settings=producer_settings or load_producer_settings(),
            **overrides,
        )

    # -- building a record (no broker) ------------------------------------------------------------------
    def schema_of(self, model: BaseModel | type[BaseModel]) -> tuple[str, int]:
        """``(schemaName, schemaVersion)`` of a generated model (instance or class).

        Raises:
            PublishRefused: it is not a generated root model of the index.
        """
        cls = model if isinstance(model, type) else type(model)
        key = self._keys.get(cls)
        if key is None:
            index = self._model_index()
            key = index.key_of(cls) if hasattr(index, "key_of") else None
            if key is None:
                raise PublishRefused(
                    f"{cls.__module__}.{cls.__qualname__} is not a generated root model of "
                    f"{getattr(index, 'package', 'the model index')}: publish an instance of "
                    "the model class generated for the schema version (e.g. "
                    "generated_models.orders.v2.Order), or run `make codegen`",
                    topic="",
                )
            self._keys[cls] = key
        return key

    def value_format(self, topic: str) -> ValueFormat:
        """How ``topic``'s values are written: ``envelope`` or ``confluent``."""
        return self.value_formats.get(topic, self._default_format)

    def key_format(self, topic: str) -> KeyFormat:
        """How a model key of ``topic`` is written: ``raw`` (refused for a model) or ``confluent``."""
        return self.key_formats.get(topic, self._default_key_format)

    def build(
        self,
        topic: str,
        model: BaseModel,
        *,
        key: str | bytes | BaseModel | None = None,
        headers: HeadersLike | None = None,
        message_type: str | None = None,
        correlation_id: str | None = None,
        message_id: str | None = None,
    ) -> OutgoingRecord:
        """Validate ``model`` (and a model ``key``) against its registry schema and make the record (may ask
        the registry once per schema version; produces nothing).

        Raises:
            PublishRefused: not a generated model, its schema version is not in the registry, the body
                fails the schema (``details`` names the paths), or the key does not fit the topic's key
                format.
            RegistryUnavailable: the registry cannot be reached.
        """
        if not isinstance(model, BaseModel):
            raise PublishRefused(
                f"publish takes a generated pydantic model instance, got {type(model).__name__}", topic=topic
            )
        try:
            schema_name, version = self.schema_of(model)
        except PublishRefused as exc:
            exc.topic = topic
            raise
        message_type = message_type or type(model).__name__
        subject, registered, compiled = self._plan(topic, schema_name, version, message_type)
        wire = WireFormat.CONFLUENT if self.value_format(topic) is ValueFormat.CONFLUENT else WireFormat.ENVELOPE
        key_bytes = self._key_bytes(topic, key)
        where = f"{type(model).__name__} ({schema_name} v{version}) for topic {topic!r}"
        avro, value, body = self._checked_body(model, registered, compiled, where, topic, schema_name, version)

        fields = header_fields(
            schema_name,
            version,
            message_type=message_type,
            producer=self.name,
            message_id=message_id,
            correlation_id=correlation_id or self._carried_correlation_id(),
        )
        header = Header.model_validate(fields)
        record_headers = _with_trace_context(_headers(headers))
        schema_id = registered.schema_id
        if wire is WireFormat.ENVELOPE:
            payload = encode_envelope(fields, body)
        else:
            prefix = self._prefix(topic, subject, registered, schema_name, version, PRODUCER_SETTING, "value")
            data = avro_binary_body(compiled.parsed, value) if avro else compact_json(body)
            payload = prefix + data
            # The header cannot travel inside the value: it goes in the record headers instead.
            record_headers = [*(record_headers or []), *((k, v.encode()) for k, v in fields.items())]
        return OutgoingRecord(topic, key_bytes, payload, record_headers, header, wire, schema_id)

    def _checked_body(
        self, model: BaseModel, registered: Any, compiled: Any, where: str, topic: str, schema_name: str, version: int
    ) -> tuple[bool, Any, Any]:
        """``(avro, Python value, body)`` of ``model``, the body checked by the consumer's own validator.

        Raises:
            PublishRefused: the model does not fit its schema (``details`` names the paths).
        """

        def refused(reason: str, details: Any = None) -> PublishRefused:
            return PublishRefused(
                f"{where} fails its schema, nothing was sent: {reason}",
                topic=topic,
                schema_name=schema_name,
                version=version,
                details=details,
            )

        avro = registered.format == SchemaFormat.AVRO
        value = None
        try:
            if avro:
                value = model.model_dump(by_alias=True, warnings=False)
                body = avro_json_body(compiled.parsed, value)
            else:
                body = model.model_dump(mode="json", by_alias=True, exclude_unset=True, warnings=False)
        except ValueError as exc:  # fastavro's verdict, or pydantic's PydanticSerializationError
            raise refused(str(exc), [{"path": "$", "message": str(exc)}]) from None
        try:
            compiled.decode(body)  # the consumer's own check, on exactly what it will read
        except MessageError as exc:
            raise refused(exc.reason, exc.details) from None
        return avro, value, body

    @staticmethod
    def _prefix(
        topic: str, subject: str, registered: Any, schema_name: str, version: int, setting: str, part: str
    ) -> bytes:
        """The wire format's 5 bytes for ``registered``'s schema id.

        Raises:
            PublishRefused: the registry gave no id (the local schemas/ folder has none).
        """
        if registered.schema_id is None:
            raise PublishRefused(
                f"the {part}s of topic {topic!r} are written in Confluent's wire format, which needs the "
                f"registry's schema id, and the registry gave none for subject {subject!r} "
                f"v{version} (the local schemas/ folder has no ids): set SCHEMA_REGISTRY_URL "
                f"to a Confluent-compatible registry, or set the topic's {part} format in {setting} "
                f"to {'envelope' if part == 'value' else 'raw'}",
                topic=topic,
                schema_name=schema_name,
                version=version,
            )
        return struct.pack(">bI", _MAGIC, registered.schema_id)

    def _key_bytes(self, topic: str, key: str | bytes | BaseModel | None) -> bytes | None:
        """The record key: a ``str`` in UTF-8, ``bytes`` as they are, a generated model in Confluent's wire
        format (on a topic whose key format is ``confluent``), validated like a value.

        Raises:
            PublishRefused: a model key on a topic whose key format is ``raw``, a ``str``/``bytes`` key on one
                whose key format is ``confluent``, or a model key that is not generated or fails its schema.
        """
        fmt = self.key_format(topic)
        if key is None:
            return None
        if not isinstance(key, BaseModel):
            if fmt is KeyFormat.CONFLUENT:
                raise PublishRefused(
                    f"the keys of topic {topic!r} are written in Confluent's wire format "
                    f"({PRODUCER_KEY_SETTING}), so the key must be a generated model, got a "
                    f"{type(key).__name__}: pass the key's model, or set the topic's key format to raw",
                    topic=topic,
                )
            if not isinstance(key, str | bytes):
                raise PublishRefused(
                    f"key must be a str, bytes or a generated model, got a {type(key).__name__}", topic=topic
                )
            return key.encode("utf-8") if isinstance(key, str) else key
        if fmt is not KeyFormat.CONFLUENT:
            raise PublishRefused(
                f"key {type(key).__name__} is a model, and the keys of topic {topic!r} are written raw: set "
                f"{PRODUCER_KEY_SETTING}={topic}=confluent (key_formats=) to write it in Confluent's wire "
                "format, or pass the key as str or bytes",
                topic=topic,
            )
        try:
            schema_name, version = self.schema_of(key)
        except PublishRefused as exc:
            exc.topic = topic
            raise
        subject, registered, compiled = self._plan(topic, schema_name, version, type(key).__name__, key=True)
        where = f"key {type(key).__name__} ({schema_name} v{version}) for topic {topic!r}"
        avro, value, body = self._checked_body(key, registered, compiled, where, topic, schema_name, version)
        prefix = self._prefix(topic, subject, registered, schema_name, version, PRODUCER_KEY_SETTING, "key")
        return prefix + (avro_binary_body(compiled.parsed, value) if avro else compact_json(body))

    @staticmethod
    def _carried_correlation_id() -> str | None:
        message = current_message()
        if message is None:
            return None
        return message.header.correlation_id or None

    def _plan(
        self, topic: str, schema_name: str, version: int, message_type: str, *, key: bool = False
    ) -> tuple[str, Any, Any]:
        """(subject, RegisteredSchema, compiled schema), remembered per (topic, schema, messageType, key?)."""
        plan_key = (topic, schema_name, version, message_type, key)
        plan = self._plans.get(plan_key)
        if plan is not None:
            return plan
        strategy = self._key_strategy if key else self._subject_strategy
        subject = strategy(SubjectContext(topic, schema_name, message_type))
        try:
            registered, compiled = self._schema_resolver().resolve(subject, version)
        except SchemaNotFound as exc:
            raise PublishRefused(
                f"{schema_name} v{version} is not in the registry as subject {subject!r} "
                f"version {version} ({exc}): register it first (`epistle register`), or check "
                "SCHEMA_REGISTRY_URL and SCHEMA_REGISTRY_SUBJECT_STRATEGY",
                topic=topic,
                schema_name=schema_name,
                version=version,
            ) from None
        plan = (subject, registered, compiled)
        if len(self._plans) < 10_000:
            self._plans[plan_key] = plan
        return plan

    def _schema_resolver(self) -> Any:
        if self._resolver is None:
            registry = self._registry_arg
            if registry is None:
                from toolkit.registry.factory import default_cached_registry

                registry = default_cached_registry(self.settings)
            from toolkit.consumer.pipeline import as_resolver

            self._resolver = as_resolver(registry)
        return self._resolver

    def _model_index(self) -> Any:
        if self._models is None:
            from toolkit.codegen.index import load_model_index

            self._models = load_model_index()
        return self._models

    # -- sending ----------------------------------------------------------------------------------------
    def send(
        self,
        topic: str,
        model: BaseModel,
        *,
        key: str | bytes | BaseModel | None = None,
        headers: HeadersLike | None = None,
        message_type: str | None = None,
        correlation_id: str | None = None,
        message_id: str | None = None,
    ) -> concurrent.futures.Future[Delivery]:
        """Validate and produce; the future resolves with the :class:`Delivery` once the broker
        acknowledged the record, or fails with :class:`DeliveryFailed`.

        Raises:
            PublishRefused: see :meth:`build`; nothing was sent.
            EpistleError: the producer is closed.
        """
        span = self._start_span(topic)
        with _traced(span):
            record = self.build(
                topic,
                model,
                key=key,
                headers=headers,
                message_type=message_type,
                correlation_id=correlation_id,
                message_id=message_id,
            )
            return _ending(span, record, self.send_record(record))

    async def publish(
        self,
        topic: str,
        model: BaseModel,
        *,
        key: str | bytes | BaseModel | None = None,
        headers: HeadersLike | None = None,
        message_type: str | None = None,
        correlation_id: str | None = None,
        message_id: str | None = None,
    ) -> Delivery:
        """Validate, produce and wait for the broker's acknowledgement (the event loop keeps running;
        a registry look-up on a cache miss runs in a thread).

        Raises:
            PublishRefused: see :meth:`build`; nothing was sent.
            DeliveryFailed: the broker did not acknowledge the record.
        """
        kwargs: dict[str, Any] = {
            "key": key,
            "headers": headers,
            "message_type": message_type,
            "correlation_id": correlation_id,
            "message_id": message_id,
        }
        cls = type(model)
        known = self._keys.get(cls)
        planned = known is not None and (topic, *known, message_type or cls.__name__, False) in self._plans
        if planned and isinstance(key, BaseModel):  # a model key's schema must be known too
            known_key = self._keys.get(type(key))
            planned = known_key is not None and (topic, *known_key, type(key).__name__, True) in self._plans
        span = self._start_span(topic)
        with _traced(span):
            if planned:
                record = self.build(topic, model, **kwargs)  # schema known: no I/O, no thread hop
            else:  # the first of its kind may ask the registry: off the loop (to_thread copies the context)
                record = await asyncio.to_thread(self.build, topic, model, **kwargs)
            future = _ending(span, record, self.send_record(record))
        return await asyncio.wrap_future(future)

    def _start_span(self, topic: str) -> Any:
        """The PRODUCER span of one send (not current yet), or None without OpenTelemetry."""
        otel = _opentelemetry()
        if otel is None:
            return None
        trace = otel[1]
        if self._tracer is None:
            self._tracer = trace.get_tracer("toolkit.producer", tracer_provider=self._tracer_provider)
        return self._tracer.start_span(
            f"send {topic}",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": self.messaging_system,
                "messaging.operation.name": "send",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
            },
        )

    def send_record(self, record: OutgoingRecord) -> concurrent.futures.Future[Delivery]:
        """Send a record made by :meth:`build`; the future resolves on the broker's acknowledgement (the
        broker's producer implements it)."""
        raise NotImplementedError

    def flush(self, timeout_s: float | None = None) -> int:
        raise NotImplementedError

    def close(self, timeout_s: float | None = None) -> int:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)


class EnvelopeProducer(ModelProducer):
    """Publishes generated models to Kafka, validated against their registry schema first.

    Args:
        bootstrap_servers: the cluster (default ``settings.kafka``).
        registry: a caching resolver (``resolve(subject, version)``) or a bare registry (wrapped in a
            :class:`~toolkit.registry.cache.CachedRegistry`); None builds one from ``settings.registry``
            (the local ``schemas/`` folder when no URL is set). Pass the consumer's to share its cache.
        models: the generated model index (``key_of(model_class)``); None loads ``generated_models``.
        name: the header's ``producer`` (default ``EPISTLE_PRODUCER_NAME``).
        subject_strategy: as the consumer's (default from ``SCHEMA_REGISTRY_SUBJECT_STRATEGY``).
        value_formats, key_formats, confluent_topics: how each topic's values and model keys are written
            (:class:`ModelProducer`).
        kafka_config: extra librdkafka settings (override ours, except ``acks`` and idempotence).
        client: a :class:`KafkaProducerClient` to use instead of confluent-kafka's (tests).
        tracer_provider: the OpenTelemetry provider of the PRODUCER spans; None is the global one.

    Raises:
        ConfigError: ``kafka_config`` weakens acks=all or idempotence, or a setting is invalid.
    """

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        *,
        registry: Any = None,
        models: Any = None,
        name: str | None = None,
        subject_strategy: SubjectStrategy | None = None,
        confluent_topics: Iterable[str] | None = None,
        value_formats: Mapping[str, str] | None = None,
        key_formats: Mapping[str, str] | None = None,
        settings: Settings | None = None,
        producer_settings: ProducerSettings | None = None,
        kafka_config: dict[str, Any] | None = None,
        client: KafkaProducerClient | None = None,
        tracer_provider: Any = None,
    ) -> None:
        confluent_topics = _check_options(locals())
        super().__init__(
            registry=registry,
            models=models,
            name=name,
            subject_strategy=subject_strategy,
            confluent_topics=confluent_topics,
            value_formats=value_formats,
            key_formats=key_formats,
            settings=settings,
            tracer_provider=tracer_provider,
            producer_settings=producer_settings,
        )
        kafka = settings.kafka if settings else KafkaSettings.model_construct()
        extra = dict(kafka_config or {})
        for option, required in (("acks", {"all", "-1", -1}), ("enable.idempotence", {True, "true"})):
            if option in extra and extra[option] not in required:
                raise ConfigError(
                    f"kafka_config {option}={extra[option]!r} is refused: the producer sends with "
                    "acks=all and idempotence so an acknowledged record is never lost or "
                    f"duplicated; remove {option} from kafka_config",
                    setting=option,
                )
        self.config: dict[str, Any] = {
            "logger": kafka_logger(),
            **kafka.client_config(),
            "linger.ms": 5,
            **extra,
            "acks": "all",
            "enable.idempotence": True,
        }
        if bootstrap_servers:
            self.config["bootstrap.servers"] = bootstrap_servers
        self._client: Any = client
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # produce and close exclude each other: no record slips past close
        self._pending: dict[concurrent.futures.Future[Delivery], str] = {}  # future -> topic
        self._thread: threading.Thread | None = None
        self._closed = False
        self._polling = True

    def send_record(self, record: OutgoingRecord) -> concurrent.futures.Future[Delivery]:
        """Produce a record made by :meth:`build`; the future resolves on the broker's acknowledgement.

        Raises:
            EpistleError: the producer is closed (or closing).
        """
        future: concurrent.futures.Future[Delivery] = concurrent.futures.Future()
        header = record.header

        def delivered(err: Any, msg: Any) -> None:
            if future.done():
                return
            if err is not None:
                future.set_exception(
                    DeliveryFailed(
                        f"record {header.message_id} to {record.topic} was not acknowledged: {err.str()}; "
                        "check that the topic exists and the broker is reachable, then publish it again",
                        topic=record.topic,
                        code=err.name(),
                        retriable=bool(err.retriable()),
                    )
                )
                return
            _, timestamp = msg.timestamp()
            future.set_result(
                Delivery(
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    timestamp if timestamp > 0 else None,
                    header.message_id,
                    header.correlation_id,
                )
            )

        with self._send_lock:  # close() waits for this produce, then flushes or purges it
            client = self._started()
            self._pending[future] = record.topic
            future.add_done_callback(lambda done: self._pending.pop(done, None))
            while True:
                try:
                    client.produce(
                        record.topic, value=record.value, key=record.key, headers=record.headers, on_delivery=delivered
                    )
                    break
                except BufferError:  # librdkafka's queue is full: let deliveries drain it
                    client.poll(0.1)
                except Exception as exc:  # noqa: BLE001 - KafkaException: too large, unknown partition ...
                    future.set_exception(
                        DeliveryFailed(
                            f"record {header.message_id} to {record.topic} could not be produced: {exc}",
                            topic=record.topic,
                        )
                    )
                    break
        return future

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _started(self) -> Any:
        if self._closed:
            raise EpistleError("the producer is closed; make a new EnvelopeProducer")
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    if self._client is None:
                        from confluent_kafka import Producer

                        self._client = Producer(self.config)
                    self._thread = threading.Thread(target=self._poll, name="epistle-producer-poll", daemon=True)
                    self._thread.start()
        return self._client

    def _poll(self) -> None:
        while self._polling:
            self._client.poll(0.05)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait for every record in flight to be acknowledged; returns how many are still undelivered."""
        if self._client is None:
            return 0
        return self._client.flush(self.flush_timeout_s if timeout_s is None else timeout_s)

    def close(self, timeout_s: float | None = None) -> int:
        """Refuse new sends, flush (up to ``timeout_s``, default ``EPISTLE_PRODUCER_FLUSH_TIMEOUT_S``) and
        stop; returns how many records were still undelivered (logged as an error).

        Records the broker has not acknowledged by then are purged from librdkafka's queue: their futures
        fail with :class:`DeliveryFailed` (an awaiting :meth:`publish` raises it, never hangs). A send
        racing with close either is produced before the flush or raises "the producer is closed".
        """
        with self._send_lock:
            if self._closed:
                return 0
            self._closed = True
        left = self.flush(timeout_s)
        if left and self._client is not None:
            purge = getattr(self._client, "purge", None)
            if callable(purge):
                try:
                    purge()
                    self._client.poll(0)  # serves the purged records' callbacks: their futures fail
                except Exception as exc:  # noqa: BLE001 - the futures are failed below regardless
                    log.warning("purging the producer's queue failed: %s", exc)
        for future, topic in list(self._pending.items()):  # what no callback settled (a client without purge)
            if not future.done():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(
                        DeliveryFailed(
                            "the producer was closed and the record was not "
                            "acknowledged by the broker; publish it again",
                            topic=topic,
                            code="_PURGE_QUEUE",
                        )
                    )
        self._polling = False
        if self._thread is not None:
            self._thread.join(5)
        if left:
            log.error(
                "producer closed with %d record(s) not acknowledged by the broker; their deliveries "
                "failed with DeliveryFailed",
                left,
            )
        return left


def make_producer(
    settings: Settings,
    registry: Any = None,
    models: Any = None,
    producer_settings: ProducerSettings | None = None,
    *,
    broker: str | None = None,
    **overrides: Any,
) -> ModelProducer:
    """The producer of the broker ``EPISTLE_BROKER`` names (``settings.consumer.broker``, or ``broker``):
    :class:`EnvelopeProducer` for ``kafka``, :class:`toolkit.producer_amqp.RabbitProducer` for ``rabbitmq``,
    configured from the settings and ``EPISTLE_PRODUCER_*``; ``overrides`` go to its constructor.

    Raises:
        ConfigError: ``broker`` is neither, or a setting or override is invalid.
    """
    if not isinstance(settings, Settings):
        raise ConfigError(f"settings (a {type(settings).__name__}): use toolkit.load_settings()", setting="settings")
    chosen = broker if broker is not None else settings.consumer.broker
    if chosen == "kafka":
        return EnvelopeProducer.from_settings(settings, registry, models, producer_settings, **overrides)
    if chosen == "rabbitmq":
        from toolkit.producer_amqp import RabbitProducer

        return RabbitProducer.from_settings(settings, registry, models, producer_settings, **overrides)
    raise ConfigError(f"broker={chosen!r}: use kafka or rabbitmq (EPISTLE_BROKER sets it)", setting="broker")


def _check_options(arguments: Mapping[str, Any]) -> list[str] | None:
    """Check :class:`EnvelopeProducer`'s arguments given (not None), as the consumer checks its own;
    returns ``confluent_topics`` as a list (an iterator is read once, here).

    Raises:
        ConfigError: an argument is of the wrong type; ``setting`` is its name.
    """
    from toolkit.consumer.options import _fail

    given = {name: value for name, value in arguments.items() if value is not None and name != "self"}
    topics = given.get("confluent_topics")
    if topics is not None:
        if isinstance(topics, str | bytes) or not isinstance(topics, Iterable):
            raise _fail("confluent_topics", topics, 'use a list of topic names, e.g. ["payments"]')
        topics = list(topics)
        if not all(isinstance(topic, str) and topic.strip() for topic in topics):
            raise _fail("confluent_topics", topics, 'use a list of non-empty topic names, e.g. ["payments"]')
    checks = {
        "bootstrap_servers": (lambda v: isinstance(v, str) and v.strip(), "use host:9092 (comma-separated)"),
        "partitions": (
            lambda v: (
                isinstance(v, Mapping)
                and all(isinstance(k, str) and k and type(n) is int and 1 <= n <= 1000 for k, n in v.items())
            ),
            'use topic -> queue count (1 to 1000), e.g. {"orders": 4}; RABBITMQ_PARTITIONS sets it',
        ),
        "confirm_timeout_s": (
            lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 3600,
            "use seconds above 0, at most 3600",
        ),
        "name": (lambda v: isinstance(v, str) and v.strip(), "use a non-empty string (the header's producer)"),
        "kafka_config": (
            lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v),
            'use a dict of librdkafka properties, e.g. {"linger.ms": 20}',
        ),
        "subject_strategy": (
            callable,
            "use a function SubjectContext -> subject name, e.g. toolkit.registry.topic_value_strategy",
        ),
        "registry": (
            lambda v: callable(getattr(v, "resolve", None)) or callable(getattr(v, "get", None)),
            "use a SchemaRegistry (e.g. toolkit.registry.LocalFolderRegistry) or a CachedRegistry",
        ),
        "models": (
            lambda v: callable(getattr(v, "key_of", None)),
            "use a model index with key_of(model_class), e.g. toolkit.codegen.load_model_index()",
        ),
        "settings": (lambda v: isinstance(v, Settings), "use toolkit.load_settings()"),
        "producer_settings": (
            lambda v: isinstance(v, ProducerSettings),
            "use toolkit.settings.load_producer_settings()",
        ),
        "client": (
            lambda v: all(callable(getattr(v, m, None)) for m in ("produce", "poll", "flush")),
            "use a confluent_kafka.Producer or an object with produce, poll and flush",
        ),
    }
    for name, (ok, fix) in checks.items():
        if name in given and not ok(given[name]):
            raise _fail(name, given[name], fix)
    return topics


def _formats(given: Any, default: Mapping[str, Any], name: str, setting: str, kind: type) -> dict[str, Any]:
    """``value_formats=`` / ``key_formats=`` (else the setting's) as ``{topic: format}``: what a producer
    writes (``envelope``/``confluent``, ``raw``/``confluent``), parsed as the consumer's formats are.

    Raises:
        ConfigError: not a mapping, or an entry that is not a topic and a format the producer writes.
    """
    if given is None:
        return dict(default)
    allowed = (
        (ValueFormat.ENVELOPE, ValueFormat.CONFLUENT) if kind is ValueFormat else (KeyFormat.RAW, KeyFormat.CONFLUENT)
    )
    if not isinstance(given, Mapping):
        from toolkit.consumer.options import _fail

        raise _fail(
            name, given, f'use a dict of topic -> format, e.g. {{"payments": "confluent"}} ({setting} sets the default)'
        )
    try:
        return parse_formats(given, kind, allowed)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc} ({setting} sets the default)", setting=name) from None


@functools.cache
def _opentelemetry() -> tuple[Any, Any] | None:
    """OpenTelemetry's ``propagate`` and ``trace`` modules, or None without the ``tracing`` extra."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None
    return propagate, trace


@contextlib.contextmanager
def _traced(span: Any) -> Iterator[None]:
    """``span`` current inside (so the record's headers carry it), ended in error if the body raises (the
    record was refused or not produced). A span that is not valid (no SDK: the API's no-op) is not made
    current: the context the caller runs in still travels in the headers."""
    if span is None:
        yield
        return
    trace = _opentelemetry()[1]  # type: ignore[index]  # a span exists: OpenTelemetry is there
    current = span.get_span_context().is_valid
    try:
        if current:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                yield
        else:
            yield
    except BaseException as exc:
        _end_span(span, exc)
        raise


def _ending(span: Any, record: OutgoingRecord, future: concurrent.futures.Future[Delivery]) -> Any:
    """``future``, ``span`` given the record's ids and ended when the broker answered (in the poll thread)."""
    if span is not None and span.is_recording():
        header = record.header
        span.set_attributes(
            {
                "messaging.message.id": header.message_id,
                "messaging.message.conversation_id": header.correlation_id,
                "epistle.message_type": header.message_type,
                "epistle.schema": f"{header.schema_name} v{header.schema_version}",
            }
        )
    if span is not None:
        future.add_done_callback(lambda done: _end_span(span, done.exception(), done))
    return future


def _end_span(span: Any, error: BaseException | None, done: concurrent.futures.Future[Delivery] | None = None) -> None:
    if span.is_recording():
        if error is not None:
            trace = _opentelemetry()[1]  # type: ignore[index]
            span.record_exception(error)
            span.set_attributes({"error.type": getattr(error, "code", None) or type(error).__qualname__})
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)[:500]))
        elif done is not None:
            delivery = done.result()
            if delivery.offset >= 0:  # (RabbitMQ has neither: its Delivery names the queue)
                span.set_attributes(
                    {
                        "messaging.destination.partition.id": str(delivery.partition),
                        "messaging.kafka.offset": delivery.offset,
                    }
                )
    span.end()


def _with_trace_context(headers: list[tuple[str, bytes | None]] | None) -> list[tuple[str, bytes | None]] | None:
    """``headers`` and the current span's context (traceparent ...), when there is a span."""
    otel = _opentelemetry()
    if otel is None:
        return headers
    propagate, trace = otel
    if not trace.get_current_span().get_span_context().is_valid:
        return headers
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    given = {name.lower() for name, _ in headers or ()}
    added = [(name, value.encode("utf-8")) for name, value in carrier.items() if name.lower() not in given]
    return [*(headers or []), *added] if added else headers


def _headers(headers: HeadersLike | None) -> list[tuple[str, bytes | None]] | None:
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name), value.encode("utf-8") if isinstance(value, str) else value) for name, value in items]


__all__ = [
    "Delivery",
    "DeliveryFailed",
    "EnvelopeProducer",
    "KafkaProducerClient",
    "ModelProducer",
    "OutgoingRecord",
    "PublishRefused",
    "WireFormat",
    "avro_binary_body",
    "avro_json_body",
    "make_producer",
]
