"""A record's sampling decision made without the SDK, so that a record that is not sampled costs next to nothing.

The SDK spends 7 to 8 us on a span it does not sample (the sampler's call and result, the span context, its own
bookkeeping): as much as tracing may cost a record in all. When the provider's sampler is one of the SDK's
standard ones (``ALWAYS_ON``, ``ALWAYS_OFF``, ``TraceIdRatioBased``, ``ParentBased`` with those as its root),
the decision for a record without a parent is a comparison: :class:`FastSampling` draws the trace id with the
provider's own id generator, compares its low 64 bits with the sampler's own ``bound`` (the rule of
``TraceIdRatioBased.should_sample``), and for a record the sampler would drop makes the
:class:`~opentelemetry.trace.NonRecordingSpan` the SDK would have made (the same trace flags, a fresh span id).
A sampled record's span is the SDK's, started with the trace id drawn for the decision, so the SDK's sampler
decides the same. Any other sampler (a custom one, a subclass that decides otherwise), a disabled tracer and
the SDK's own span metrics take the SDK's path for every record.

Imported by :mod:`toolkit.observability.tracing` once its tracer is the SDK's.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, StaticSampler, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags, get_current_span

try:
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
except ImportError:  # an SDK before its own span metrics
    NoOpTracerMetrics = None  # type: ignore[assignment,misc]

_RANDOM_TRACE_ID = int(getattr(TraceFlags, "RANDOM_TRACE_ID", 0))  # W3C trace context level 2 (SDK 1.40 on)


def root_rule(sampler: Sampler | None) -> tuple[int, int] | None:
    """``(mask, bound)``: the sampler samples a span without a parent when ``trace_id & mask < bound``, and
    drops it otherwise; None when that is not known (another sampler, or one that may only record)."""
    decide = getattr(type(sampler), "should_sample", None)
    if decide is ParentBased.should_sample:
        return root_rule(getattr(sampler, "_root", None))
    if decide is TraceIdRatioBased.should_sample:
        assert isinstance(sampler, TraceIdRatioBased)
        return sampler.TRACE_ID_LIMIT, sampler.bound
    if decide is StaticSampler.should_sample:
        return _static(sampler)
    return None


def _drops(sampler: Any) -> bool:
    """The sampler is a static one that drops every span."""
    static = getattr(type(sampler), "should_sample", None) is StaticSampler.should_sample
    return static and _static(sampler) == (0, 0)


def _static(sampler: Any) -> tuple[int, int] | None:
    decision = sampler.should_sample(None, 1, "").decision  # the same for every span
    if decision.is_sampled():
        return 0, 1
    return None if decision.is_recording() else (0, 0)


class DroppedSpan(NonRecordingSpan):
    """The :class:`~opentelemetry.trace.NonRecordingSpan` of a record the sampler dropped, as the SDK would
    make it (the trace id its decision was drawn for, a fresh span id, the trace flags of a span not
    sampled), its span context made when first asked for: most records' never is (only a span started
    under it, or a message published while it is current, asks)."""

    def __init__(self, trace_id: int | None, sampling: FastSampling) -> None:  # (no SpanContext yet)
        self._trace_id, self._sampling = trace_id, sampling

    @property
    def _context(self) -> SpanContext:  # type: ignore[override]  # (read by NonRecordingSpan's methods)
        context: SpanContext | None = self.__dict__.get("_made")
        if context is None:
            sampling = self._sampling
            trace_id = self._trace_id if self._trace_id is not None else sampling._ids.generate_trace_id()
            context = SpanContext(trace_id, sampling._ids.generate_span_id(), False, sampling._flags)
            # (atomic: a handler's worker thread asking at the same time gets the same span context)
            context = self.__dict__.setdefault("_made", context)
        return context

    def __reduce__(self) -> tuple[Any, ...]:  # a copy or a pickle: the SDK's plain span, with this one's context
        return NonRecordingSpan, (self._context,)


class PresetTraceIds(IdGenerator):
    """The tracer's id generator, except that the next trace id can be given in advance: a sampled record's
    span must have the trace id its decision was drawn for, or the SDK's sampler would draw again (and sample
    the rate squared). Given per thread: other threads starting spans on the same tracer draw as before."""

    def __init__(self, ids: IdGenerator) -> None:
        self.ids = ids
        self._given = threading.local()

    def give(self, trace_id: int | None) -> None:
        self._given.trace_id = trace_id

    def generate_trace_id(self) -> int:
        trace_id = getattr(self._given, "trace_id", None)
        if trace_id is None:
            return self.ids.generate_trace_id()
        self._given.trace_id = None
        return int(trace_id)

    def generate_span_id(self) -> int:
        return self.ids.generate_span_id()

    def is_trace_id_random(self) -> bool:
        random = getattr(self.ids, "is_trace_id_random", None)
        return bool(random()) if random is not None else False


class FastSampling:
    """Starts the record spans of one SDK tracer (see the module's documentation)."""

    __slots__ = (
        "tracer",
        "sampler",
        "_ids",
        "_preset",
        "_enabled",
        "_mask",
        "_bound",
        "_flags",
        "_not_sampled",
        "_keep",
    )

    def __init__(
        self, tracer: Tracer, preset: PresetTraceIds, rule: tuple[int, int], not_sampled: bool, keep: bool
    ) -> None:
        self.tracer, self.sampler = tracer, tracer.sampler
        self._preset, self._ids = preset, preset.ids
        self._enabled = getattr(tracer, "_is_enabled", None) or (lambda: True)
        self._mask, self._bound = rule
        self._flags = TraceFlags(_RANDOM_TRACE_ID if preset.is_trace_id_random() else 0)
        self._not_sampled = not_sampled  # a remote parent not sampled: its span is dropped too
        self._keep = keep  # a child of a dropped span may be recorded (the dead letter's send span)

    @classmethod
    def of(cls, tracer: Any) -> FastSampling | None:
        """For an SDK tracer whose sampler's decision is known (see :func:`root_rule`), else None."""
        if not isinstance(tracer, Tracer):
            return None
        metrics = getattr(tracer, "_tracer_metrics", None)
        if metrics is not None and NoOpTracerMetrics is not None and not isinstance(metrics, NoOpTracerMetrics):
            return None  # the SDK counts the spans it starts, dropped ones too: let it start them all
        sampler = tracer.sampler
        rule = root_rule(sampler)
        if rule is None:
            return None
        # A ratio or static sampler decides a child as its parent (the same trace id); ParentBased asks its
        # delegates for a parent that is not sampled, ALWAYS_OFF unless the application chose otherwise.
        not_sampled, keep = False, False
        if type(sampler).should_sample is ParentBased.should_sample:
            not_sampled = _drops(getattr(sampler, "_remote_parent_not_sampled", None))
            keep = not _drops(getattr(sampler, "_local_parent_not_sampled", None))
        ids = tracer.id_generator
        if not isinstance(ids, PresetTraceIds):  # the tracer is the provider's, shared: one wrapper for all
            ids = tracer.id_generator = PresetTraceIds(ids)
        return cls(tracer, ids, rule, not_sampled, keep)

    def start(self, name: str, parent: Context, has_parent: bool) -> tuple[Span, bool]:
        """The record's span, and whether the middleware has anything to do with it later (False: a span
        dropped here, nothing of the record will be recorded). ``parent`` is the propagated context;
        ``has_parent`` is False when there was none to read, the common case: then it is not looked into."""
        tracer = self.tracer
        if tracer.sampler is not self.sampler or not self._enabled():
            return tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER), True
        if has_parent:
            context = get_current_span(parent).get_span_context()
            if context.is_valid:
                if self._not_sampled and context.is_remote and not context.trace_flags.sampled:
                    flags = TraceFlags(context.trace_flags & _RANDOM_TRACE_ID)
                    span_id = self._ids.generate_span_id()
                    dropped = SpanContext(context.trace_id, span_id, False, flags, context.trace_state)
                    return NonRecordingSpan(dropped), self._keep
                return tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER), True
        if not self._bound:  # every root dropped (ALWAYS_OFF, ratio 0): the trace id is drawn only if asked for
            return DroppedSpan(None, self), self._keep
        trace_id = self._ids.generate_trace_id()
        if trace_id & self._mask < self._bound:
            self._preset.give(trace_id)
            try:
                return tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER), True
            finally:
                self._preset.give(None)
        return DroppedSpan(trace_id, self), self._keep
