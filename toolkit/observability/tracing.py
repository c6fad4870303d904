"""OpenTelemetry tracing: one span per record, its parent the producer's context (the ``tracing`` extra).

    from toolkit.observability.tracing import TracingMiddleware

    consumer = KafkaConsumer(group_id="orders-service", middleware=[TracingMiddleware(group_id="orders-service")])

:class:`TracingMiddleware` follows OpenTelemetry's messaging semantic conventions:

- a ``process <topic>`` span of kind CONSUMER per record, from the moment its lane takes it up to its final
  outcome, with ``messaging.system`` (kafka), ``messaging.operation.name``/``.type`` (process),
  ``messaging.destination.name`` (the topic), ``messaging.destination.partition.id``,
  ``messaging.kafka.offset``, ``messaging.consumer.group.name``, and once the envelope is read
  ``messaging.message.id`` (messageId), ``messaging.message.conversation_id`` (correlationId) and the
  toolkit's ``epistle.message_type`` and ``epistle.schema`` (``orders v2``);
- its parent is the context propagated in the record's headers (W3C ``traceparent``/``tracestate`` with the
  default ``OTEL_PROPAGATORS``), so the consumer's span continues the producer's trace; a record without one
  starts a trace of its own;
- the handler runs with the span as the current span (also a plain ``def`` handler in its worker thread): a
  span the handler starts is its child, and what it publishes with
  :class:`~toolkit.producer.EnvelopeProducer` carries the trace on;
- ``epistle.outcome`` says how it ended: ``done``, ``dead_letter`` (with ``epistle.dead_letter.stage`` and
  ``error.type``, status ERROR), ``stop`` (ErrorPolicy.STOP, status ERROR) or ``abandoned`` (its partition
  was revoked or the consumer stopped first: it is not committed and comes again); ``epistle.attempts``
  counts handler attempts when there was more than one; each retry and each outage wait is an event
  (``retry``, ``pause``), and each exception a handler raised is recorded;
- a dead letter gets a ``send <topic>.dlq`` child span of kind PRODUCER, from the decision to the broker's
  acknowledgement (each refusal an event); the record's span ends after it.

The hooks run on the event loop (docs/threads.md); nothing here blocks. A recorded span costs the SDK
about half the CPU the toolkit spends on a record: at high rates sample with ``OTEL_TRACES_SAMPLER``. With the
SDK's standard samplers a record without a trace is decided here, on the SDK's rule, and one that is not
sampled never reaches the SDK: a non-recording span of its own is made current, for a few microseconds
(docs/tracing.md, "Sampling" and "Cost"). Without an SDK configured the
OpenTelemetry API is a no-op and the spans cost next to nothing, but the propagated context still flows
through the handler to what it publishes. :func:`configure_tracing` installs the SDK from the standard
``OTEL_*`` variables (``epistle run --tracing`` calls it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from toolkit.consumer.middleware import Middleware
from toolkit.consumer.outcomes import Done, Pause, RetryAfter, Stop, ToDeadLetter
from toolkit.errors import ConfigError

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised without the extra
    raise ConfigError(
        "tracing needs OpenTelemetry, which is not installed: pip install "
        "'ouroboros-epistle-forge[tracing]' (opentelemetry-api and opentelemetry-sdk), or turn "
        "tracing off (EPISTLE_TRACING=0)",
        setting="EPISTLE_TRACING",
    ) from None

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from toolkit.consumer.deadletter import DeadLetterRecord
    from toolkit.consumer.outcomes import Outcome
    from toolkit.consumer.pipeline import Message
    from toolkit.consumer.transport import Record

Headers = Sequence[tuple[str, bytes | str | None]]
_MAX_DESCRIPTION = 500  # a reason can carry a whole validation report: the status keeps its start
_NO_CONTEXT = Context()  # no parent: the span starts a trace of its own
# The key under which the API keeps the current span in a context (read once, through the API).
(_SPAN_KEY,) = trace.set_span_in_context(trace.INVALID_SPAN, Context()).keys()
_UNRESOLVED: Any = object()


class KafkaHeadersGetter(Getter[Headers]):
    """Reads a propagator's fields from Kafka record headers (name, bytes-or-None pairs; names compared
    without case, values UTF-8). A header that is not a (str, bytes) pair, or not UTF-8, is skipped."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = []
        for item in carrier:
            try:
                name, value = item
                if not isinstance(name, str) or name.lower() != key:
                    continue
                if isinstance(value, bytes | bytearray):
                    values.append(value.decode("utf-8"))
                elif isinstance(value, str):
                    values.append(value)
            except (TypeError, ValueError):  # not a pair, not UTF-8
                continue
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [item[0] for item in carrier if isinstance(item, tuple) and item and isinstance(item[0], str)]


GETTER = KafkaHeadersGetter()


def extract_context(headers: Iterable[tuple[str, bytes | str | None]] | None) -> Context:
    """The context propagated in ``headers`` (an empty one when there is none or it cannot be read: the
    span then starts a new trace). Never raises."""
    if not headers:
        return Context()
    try:
        return propagate.extract(list(headers), context=Context(), getter=GETTER)
    except Exception:  # noqa: BLE001 - a record's headers are untrusted input
        return Context()


def _record_headers(record: Record) -> list[tuple[str, bytes | None]] | None:
    try:
        return record.headers()
    except Exception:  # noqa: BLE001 - librdkafka may fail to decode them: the record is still processed
        return None


class _Traced:
    """One record's span, its message once read, and its dead letter's span while it is being delivered."""

    __slots__ = ("record", "span", "message", "send")

    def __init__(self, record: Record, span: Span) -> None:
        self.record, self.span = record, span
        self.message: Message[Any] | None = None
        self.send: Span | None = None


class TracingMiddleware(Middleware):
    """A span per record (see the module's documentation). Give it first in ``middleware=[...]`` so the
    spans of other middleware's ``around_handler`` are inside it.

    Args:
        group_id: the consumer group (``messaging.consumer.group.name``); give the consumer's.
        system: ``messaging.system``: ``kafka``, or ``rabbitmq`` for the RabbitMQ transport (then the
            record's position is ``messaging.rabbitmq.message.delivery_tag``, not ``messaging.kafka.offset``).
        tracer_provider: the provider to use; None is the global one (set by :func:`configure_tracing`,
            ``opentelemetry-instrument`` or the application).
    """

    def __init__(self, group_id: str | None = None, *, system: str = "kafka", tracer_provider: Any = None) -> None:
        self.group_id = group_id
        self.system = system
        self._kafka = system == "kafka"
        self._provider = tracer_provider
        self._tracer = trace.get_tracer("toolkit.consumer", tracer_provider=tracer_provider)
        self._fast: Any = _UNRESOLVED  # how spans start, once the provider is known (_resolve)
        self._open: dict[int, _Traced] = {}  # id(record) -> its span; the entry keeps the record alive
        self._textmap: Any = None
        self._fields: frozenset[str] = frozenset()
        self._static: dict[str, Any] = {
            "messaging.system": system,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
        }
        if group_id:
            self._static["messaging.consumer.group.name"] = group_id

    @property
    def open_spans(self) -> int:
        """Records in flight whose span has not ended yet (a record whose span was dropped without the SDK is
        not kept: nothing of it is recorded)."""
        return len(self._open)

    # -- hooks ------------------------------------------------------------------------------------------
    # The cost per record is the SDK's (docs/tracing.md, "Cost"), so the hot path gives it as little as
    # it can: with the SDK's standard samplers a record they would drop never reaches the SDK (its
    # non-recording span is made in _sampling, and not kept here), the span starts bare (the sampler decides
    # on the name, kind and parent alone), an unsampled record's span never sees an attribute, and a recorded
    # span gets all its attributes in one call (one check per value, one lock) when it ends.
    def on_record(self, record: Record) -> None:
        headers = _record_headers(record)
        parent = self._extract(headers) if headers else _NO_CONTEXT
        fast = self._fast if self._fast is not _UNRESOLVED else self._resolve()
        if fast is None:
            span = self._tracer.start_span(f"process {record.topic()}", context=parent, kind=SpanKind.CONSUMER)
            keep = True
        else:  # the SDK's standard sampler: a record it would drop never reaches the SDK, nor is it kept here
            span, keep = fast.start(f"process {record.topic()}", parent, parent is not _NO_CONTEXT)
        if self._open:
            stale = self._open.pop(id(record), None)
            if stale is not None:  # the same record object again while its earlier run has not ended
                self._finish(stale, "abandoned")
        if keep:
            self._open[id(record)] = _Traced(record, span)
        # The span is the current one for the rest of the record's run: on_record runs in its lane's task,
        # the handler too (a plain one in a copy of the task's context), and so does what the handler
        # publishes. Nothing to undo: the lane's next record replaces it, and the lane's context ends with
        # the lane. (An around_handler hook would cost every record two coroutine frames more.)
        if parent is _NO_CONTEXT:  # (set_span_in_context on an empty context, without its copy and call)
            otel_context.attach(Context({_SPAN_KEY: span}))
        else:
            otel_context.attach(trace.set_span_in_context(span, parent))

    def _resolve(self) -> Any:
        """The fast path's sampling (toolkit.observability._sampling) when the provider is the SDK's and its
        sampler a standard one, else None: then every span starts on the SDK's own path. The global provider
        may be installed after the middleware was made: until then nothing is kept."""
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            return None
        self._fast = None
        if "opentelemetry.sdk.trace" in sys.modules:  # else the provider cannot be the SDK's
            from toolkit.observability._sampling import FastSampling

            self._tracer = provider.get_tracer("toolkit.consumer")  # the proxy's delegate, if it was a proxy
            self._fast = FastSampling.of(self._tracer)
        return self._fast

    def _extract(self, headers: Headers) -> Context:
        """The propagated context, read only when a header the propagators use is there (the common record
        has none of them: then nothing is parsed)."""
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:  # the application may install other propagators at any time
            self._textmap, self._fields = textmap, frozenset(field.lower() for field in textmap.fields)
        fields = self._fields
        for item in headers:
            name = item[0] if isinstance(item, tuple) and item else None
            if isinstance(name, str) and name.lower() in fields:
                return extract_context(headers)
        return _NO_CONTEXT

    def on_outcome(
        self, record: Record, message: Message[Any] | None, outcome: Outcome, attempt: int, delay_s: float | None
    ) -> None:
        traced = self._open.get(id(record))
        if traced is None:
            return
        if message is not None:
            traced.message = message
        if isinstance(outcome, Done):
            self._finish(traced, "done", {"epistle.attempts": attempt} if attempt > 1 else None)
            return
        span = traced.span
        error = getattr(outcome.dead_letter if isinstance(outcome, Stop) else outcome, "error", None)
        if error is not None and message is not None:  # the handler raised it (not the decode ... stages)
            span.record_exception(error, attributes={"epistle.attempt": attempt})
        if isinstance(outcome, RetryAfter):
            span.add_event(
                "retry",
                {
                    "epistle.attempt": attempt,
                    "epistle.retry.delay_s": outcome.delay_s,
                    "epistle.reason": outcome.reason,
                },
            )
        elif isinstance(outcome, Pause):
            span.add_event(
                "pause",
                {"epistle.attempt": attempt, "epistle.retry.delay_s": delay_s or 0.0, "epistle.reason": outcome.reason},
            )
        elif isinstance(outcome, ToDeadLetter):
            self._failed(span, outcome, attempt if message is not None else 0)
            traced.send = self._tracer.start_span(
                "send",
                context=trace.set_span_in_context(span),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": self.system,
                    "messaging.operation.name": "send",
                    "messaging.operation.type": "send",
                    "epistle.dead_letter.stage": outcome.stage,
                },
            )
        elif isinstance(outcome, Stop):
            self._failed(span, outcome.dead_letter, attempt if message is not None else 0)
            self._finish(traced, "stop")

    def on_dead_letter(
        self,
        record: Record,
        dead_letter: DeadLetterRecord,
        outcome: ToDeadLetter,
        error: BaseException | None,
        failures: int,
        delay_s: float | None,
    ) -> None:
        traced = self._open.get(id(record))
        if traced is None or traced.send is None:
            return
        send = traced.send
        send.update_name(f"send {dead_letter.topic}")
        send.set_attribute("messaging.destination.name", dead_letter.topic)
        if error is None:
            self._finish(traced, "dead_letter")
            return
        send.record_exception(error, attributes={"epistle.failures": failures, "epistle.retry.delay_s": delay_s or 0.0})

    def on_abandoned(self, record: Record) -> None:
        traced = self._open.get(id(record))
        if traced is not None:
            self._finish(traced, "abandoned")

    # -- helpers ----------------------------------------------------------------------------------------
    @staticmethod
    def _failed(span: Span, outcome: ToDeadLetter, attempts: int) -> None:
        span.set_attributes(
            {"epistle.dead_letter.stage": outcome.stage, "error.type": outcome.stage, "epistle.attempts": attempts}
        )
        span.set_status(Status(StatusCode.ERROR, f"{outcome.stage}: {outcome.reason}"[:_MAX_DESCRIPTION]))

    def _finish(self, traced: _Traced, how: str, attributes: dict[str, Any] | None = None) -> None:
        """End the record's span (and its dead letter's) for good: ``how`` is ``epistle.outcome``."""
        if self._open.get(id(traced.record)) is traced:
            del self._open[id(traced.record)]
        send, span = traced.send, traced.span
        if send is not None:
            if how == "abandoned":
                send.add_event("abandoned")
            send.end()
            traced.send = None
        if span.is_recording():
            record = traced.record
            final = {**self._static, "messaging.destination.name": record.topic()}
            final["messaging.destination.partition.id"] = str(record.partition())
            if self._kafka:
                final["messaging.kafka.offset"] = record.offset()
                if record.value() is None:
                    final["messaging.kafka.message.tombstone"] = True
            else:  # the transport's offset is the AMQP delivery tag less one
                final["messaging.rabbitmq.message.delivery_tag"] = record.offset() + 1
            message = traced.message
            if message is not None:  # the envelope's ids, once the record was read as a message
                header = message.header
                final["messaging.message.id"] = header.message_id
                final["messaging.message.conversation_id"] = header.correlation_id
                final["epistle.message_type"] = header.message_type
                final["epistle.schema"] = f"{header.schema_name} v{header.schema_version}"
            final["epistle.outcome"] = how
            if attributes:
                final.update(attributes)
            span.set_attributes(final)
        span.end()


def configure_tracing(service_name: str | None = None) -> TracerProvider | None:
    """Install the OpenTelemetry SDK as the global tracer provider, configured by the standard variables,
    unless a provider is installed already (by ``opentelemetry-instrument`` or the application): then
    None. Returns the provider (call its ``shutdown()`` at exit to flush the last spans).

    - ``OTEL_TRACES_EXPORTER``: comma-separated exporter names (default ``otlp``; ``console``; ``none``),
      each found through the ``opentelemetry_traces_exporter`` entry points as the SDK's own configuration
      finds them (``otlp`` comes with ``pip install opentelemetry-exporter-otlp``), each behind a
      ``BatchSpanProcessor`` (``OTEL_BSP_*``) and configured by its own variables
      (``OTEL_EXPORTER_OTLP_ENDPOINT`` ...);
    - ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: the resource (``service_name`` when neither
      names the service); ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: the sampler;
      ``OTEL_SDK_DISABLED=true``: no spans.

    Raises:
        ConfigError: the SDK is not installed, or an exporter named in OTEL_TRACES_EXPORTER is not.
    """
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(
            "tracing needs the OpenTelemetry SDK, which is not installed: pip install "
            "'ouroboros-epistle-forge[tracing]'",
            setting="EPISTLE_TRACING",
        ) from None
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    exporters = []
    for name in (part.strip().lower() for part in names.split(",")):
        if not name or name == "none":
            continue
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            fix = (
                "pip install opentelemetry-exporter-otlp"
                if name.startswith("otlp")
                else "install the package that provides it"
            )
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={names!r}: no span exporter named {name!r} is installed; "
                f"{fix}, or set OTEL_TRACES_EXPORTER=console (spans on stdout) or none",
                setting="OTEL_TRACES_EXPORTER",
            )
        exporters.append(found[0].load())
    resource = Resource.create()
    if service_name and str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter()))
    trace.set_tracer_provider(provider)
    return provider


__all__ = ["GETTER", "KafkaHeadersGetter", "TracingMiddleware", "configure_tracing", "extract_context"]
