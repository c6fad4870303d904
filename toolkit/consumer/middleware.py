"""Middleware: code that runs around every record, for metrics, tracing, logging and users' own needs.

    class Timing(Middleware):
        async def around_handler(self, message, call_next):
            started = time.perf_counter()
            try:
                return await call_next(message)
            finally:
                histogram.observe(time.perf_counter() - started)

    consumer = KafkaConsumer(..., middleware=[Timing()])

Hooks, each optional (override only what you need; a hook left as the base's costs nothing):

- :meth:`Middleware.on_record`: a record was fetched and is about to be decoded (once per record, not per
  attempt).
- :meth:`Middleware.around_handler`: wraps every handler attempt; call ``call_next(message)`` to run the
  handler (or the next middleware) and return its result, or return a result without calling it.
  Middleware given first is outermost.
- :meth:`Middleware.on_handler_time`: how long each handler attempt took, timed by the engine (a timer
  without ``around_handler``'s coroutine frames: a record keeps the engine's fast lane).
- :meth:`Middleware.on_outcome`: each decision about the record (:mod:`toolkit.consumer.outcomes`):
  ``Done``, ``RetryAfter``, ``Pause``, ``ToDeadLetter``, ``Stop``; then :meth:`Middleware.on_dead_letter`
  for every attempt to deliver its dead letter (acknowledged, or refused and retried).
- :meth:`Middleware.on_start` and :meth:`Middleware.on_stop`: the consumer's engine starts (before it joins
  the group) and has stopped (after its final commit); metrics read its state from there.
- :meth:`Middleware.on_abandoned`: the record was given up without a final outcome (see there).

A record given to ``on_record`` ends with exactly one of: ``on_outcome`` with ``Done`` or ``Stop``,
``on_dead_letter`` with no error (acknowledged), or ``on_abandoned``; what a middleware keeps per record
(a span, a timer) can be released there.

Every hook runs on the event loop (docs/threads.md): keep the synchronous ones quick. A hook that raises
is logged and otherwise ignored: middleware cannot lose a record. The consumer's own statistics
(:class:`StatsMiddleware`) and outcome logs (:class:`LoggingMiddleware`) are middleware too, always
installed first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from toolkit.consumer.outcomes import Done, Outcome, Pause, RetryAfter, Stop, ToDeadLetter
from toolkit.errors import BrokerUnavailable, safe_str

if TYPE_CHECKING:
    from toolkit.consumer.deadletter import DeadLetterRecord
    from toolkit.consumer.engine import Engine
    from toolkit.consumer.pipeline import Message
    from toolkit.consumer.stats import ConsumerStats
    from toolkit.consumer.transport import Record

log = logging.getLogger("toolkit.consumer")

CallNext = Callable[["Message[Any]"], Awaitable[Any]]


class Middleware:
    """Base class: every hook does nothing. See the module's documentation."""

    def on_record(self, record: Record) -> None:
        """A record is about to be decoded."""

    async def around_handler(self, message: Message[Any], call_next: CallNext) -> Any:
        """Wrap one handler attempt; the result is what the handler returned (an exception it raised
        propagates through here)."""
        return await call_next(message)

    def on_handler_time(self, message: Message[Any], seconds: float) -> None:
        """A handler attempt for ``message`` ended (returned or raised) ``seconds`` after the engine started it
        (``time.perf_counter``): a wait for a free worker slot is included, and so are the ``around_handler``
        hooks when there are any (one that answers without calling the handler is still an attempt). Called
        before the attempt's ``on_outcome``."""

    def on_outcome(
        self, record: Record, message: Message[Any] | None, outcome: Outcome, attempt: int, delay_s: float | None
    ) -> None:
        """A decision about ``record``: ``message`` is None when it failed before becoming one (decode,
        envelope, schema, validation, model, routing); ``delay_s`` is the wait of a RetryAfter or Pause."""

    def on_dead_letter(
        self,
        record: Record,
        dead_letter: DeadLetterRecord,
        outcome: ToDeadLetter,
        error: BaseException | None,
        failures: int,
        delay_s: float | None,
    ) -> None:
        """A dead letter was acknowledged (``error`` None) or refused (``failures`` so far; resent after
        ``delay_s``)."""

    def on_abandoned(self, record: Record) -> None:
        """``record`` gets no final outcome here: its partition was revoked, or the consumer stopped, while
        it waited (a retry or outage backoff, its dead letter's delivery) or while its handler ran past the
        shutdown timeout. It is not committed: the partition's next owner gets it again."""

    def on_start(self, engine: Engine) -> None:
        """The engine starts, before its transport joins the group (``engine.transport``, ``engine.pipeline``,
        :meth:`~toolkit.consumer.engine.Engine.partitions`)."""

    def on_stop(self, engine: Engine) -> None:
        """The engine stopped: final commit made, transport closed (also after a failed start)."""


def overrides(middleware: Middleware, hook: str) -> bool:
    """True when ``middleware`` has its own ``hook`` (the engine calls only those)."""
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


class Hooks:
    """The overridden hooks of a list of middleware, ready for the engine's hot path: each hook list is
    empty when no middleware has that hook, and calling an empty list costs a length check."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        for item in middleware:
            if not isinstance(item, Middleware):
                from toolkit.errors import ConfigError

                raise ConfigError(
                    f"middleware: {item!r} is not a toolkit.consumer.Middleware; subclass it and "
                    "override the hooks you need",
                    setting="middleware",
                )
        self.middleware = list(middleware)
        self.on_record = [m.on_record for m in middleware if overrides(m, "on_record")]
        self.around = [m.around_handler for m in middleware if overrides(m, "around_handler")]
        self.on_handler_time = [m.on_handler_time for m in middleware if overrides(m, "on_handler_time")]
        self.on_outcome = [m.on_outcome for m in middleware if overrides(m, "on_outcome")]
        # The engine's fast lane does what the built-in StatsMiddleware and LoggingMiddleware do for a done
        # record itself when they are the first on_outcome hooks (as every consumer installs them): a count
        # and a debug line, without two calls per record. ``on_done``: the on_outcome hooks left to call.
        owners = [m for m in middleware if overrides(m, "on_outcome")]
        first = 0
        self.done_stats: ConsumerStats | None = None
        if owners and type(owners[0]) is StatsMiddleware:
            self.done_stats = owners[0].stats  # type: ignore[attr-defined]
            first = 1
        self.done_logs = first < len(owners) and type(owners[first]) is LoggingMiddleware
        self.on_done = self.on_outcome[first + self.done_logs :]
        self.on_dead_letter = [m.on_dead_letter for m in middleware if overrides(m, "on_dead_letter")]
        self.on_abandoned = [m.on_abandoned for m in middleware if overrides(m, "on_abandoned")]
        self.on_start = [m.on_start for m in middleware if overrides(m, "on_start")]
        self.on_stop = [m.on_stop for m in middleware if overrides(m, "on_stop")]

    def wrap(self, call: CallNext) -> CallNext:
        """``call`` inside every ``around_handler``, the first middleware outermost."""
        for around in reversed(self.around):
            call = _link(around, call)
        return call

    def record(self, record: Record) -> None:
        _each(self.on_record, "on_record", record)

    def record_after(self, failed: Any, record: Record) -> None:
        """The engine called the ``on_record`` hooks in a loop of its own and ``failed`` raised: log it and
        call the hooks after it."""
        log.exception("middleware on_record failed")
        hooks = self.on_record
        index = next((i for i, hook in enumerate(hooks) if hook is failed), len(hooks))
        _each(hooks[index + 1 :], "on_record", record)

    @staticmethod
    def logs_done() -> bool:
        """Whether LoggingMiddleware's debug line of a done record is on (the fast lane asks once a slice)."""
        return log.isEnabledFor(logging.DEBUG)

    @staticmethod
    def log_done(record: Record, message: Message[Any] | None) -> None:
        """LoggingMiddleware's line of a done record, for the fast lane (a failure is logged, as a hook's)."""
        try:
            log.debug("done", extra=log_context(record, message))
        except Exception:  # noqa: BLE001 - e.g. a logging filter that raises: middleware cannot stop a record
            log.exception("middleware on_outcome failed")

    def handler_time(self, message: Message[Any], seconds: float) -> None:
        _each(self.on_handler_time, "on_handler_time", message, seconds)

    def outcome(
        self, record: Record, message: Message[Any] | None, outcome: Outcome, attempt: int, delay_s: float | None = None
    ) -> None:
        _each(self.on_outcome, "on_outcome", record, message, outcome, attempt, delay_s)

    def outcome_after(
        self, failed: Any, record: Record, message: Message[Any] | None, outcome: Outcome, attempt: int
    ) -> None:
        """The engine called the ``on_outcome`` hooks in a loop of its own and ``failed`` raised: log it and
        call the hooks after it."""
        log.exception("middleware on_outcome failed")
        hooks = self.on_outcome
        index = next((i for i, hook in enumerate(hooks) if hook is failed), len(hooks))
        _each(hooks[index + 1 :], "on_outcome", record, message, outcome, attempt, None)

    def dead_letter(
        self,
        record: Record,
        dead_letter: DeadLetterRecord,
        outcome: ToDeadLetter,
        error: BaseException | None,
        failures: int,
        delay_s: float | None,
    ) -> None:
        _each(self.on_dead_letter, "on_dead_letter", record, dead_letter, outcome, error, failures, delay_s)

    def abandoned(self, record: Record) -> None:
        _each(self.on_abandoned, "on_abandoned", record)

    def start(self, engine: Engine) -> None:
        _each(self.on_start, "on_start", engine)

    def stop(self, engine: Engine) -> None:
        _each(self.on_stop, "on_stop", engine)


def _each(hooks: list[Callable[..., Any]], name: str, *args: Any) -> None:
    """Call every hook; one that raises is logged and the others still run (middleware must not change an
    outcome or lose a record)."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:  # noqa: BLE001
            log.exception("middleware %s failed", name)


def _link(around: Callable[[Message[Any], CallNext], Awaitable[Any]], call_next: CallNext) -> CallNext:
    def call(message: Message[Any]) -> Awaitable[Any]:  # a plain function: no coroutine of its own per record
        return around(message, call_next)

    return call  # type: ignore[return-value]


class StatsMiddleware(Middleware):
    """Keeps :class:`~toolkit.consumer.stats.ConsumerStats` (``consumer.stats``)."""

    def __init__(self, stats: ConsumerStats) -> None:
        self.stats = stats

    def on_outcome(
        self, record: Record, message: Message[Any] | None, outcome: Outcome, attempt: int, delay_s: float | None
    ) -> None:
        stats = self.stats.topics.get(record.topic()) or self.stats[record.topic()]
        if outcome.__class__ is Done:  # every record but a few: first, and without isinstance
            stats.processed += 1
        elif isinstance(outcome, RetryAfter):
            stats.retried += 1
        elif isinstance(outcome, Pause):
            stats.paused += 1

    def on_dead_letter(
        self,
        record: Record,
        dead_letter: DeadLetterRecord,
        outcome: ToDeadLetter,
        error: BaseException | None,
        failures: int,
        delay_s: float | None,
    ) -> None:
        stats = self.stats[record.topic()]
        if error is None:
            stats.dead_lettered[outcome.stage] += 1
        else:
            stats.dead_letter_send_failures += 1


def log_context(record: Record, message: Message[Any] | None = None) -> dict[str, Any]:
    """The structured-log context of a record (topic, partition, offset, messageId, correlationId)."""
    header = message.header if message is not None else None
    return {
        "topic": record.topic(),
        "partition": record.partition(),
        "offset": record.offset(),
        "messageId": header.message_id if header else None,
        "correlationId": header.correlation_id if header else None,
    }


class LoggingMiddleware(Middleware):
    """The consumer's outcome log lines (logger ``toolkit.consumer``), with :func:`log_context`."""

    def on_outcome(
        self, record: Record, message: Message[Any] | None, outcome: Outcome, attempt: int, delay_s: float | None
    ) -> None:
        if outcome.__class__ is Done:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("done", extra=log_context(record, message))
        elif isinstance(outcome, RetryAfter):
            log.info(
                "retrying in %.2fs (attempt %d failed: %s)",
                outcome.delay_s,
                attempt,
                outcome.reason,
                extra=log_context(record, message),
            )
        elif isinstance(outcome, Pause):
            log.warning("waiting %.2fs: %s", delay_s or 0.0, outcome.reason, extra=log_context(record, message))
        elif isinstance(outcome, Stop):
            dl = outcome.dead_letter
            log.error("stopping (ErrorPolicy.STOP) at %s: %s", dl.stage, dl.reason, extra=log_context(record, message))

    def on_dead_letter(
        self,
        record: Record,
        dead_letter: DeadLetterRecord,
        outcome: ToDeadLetter,
        error: BaseException | None,
        failures: int,
        delay_s: float | None,
    ) -> None:
        if error is None:
            log.warning(
                "dead-lettered to %s: %s: %s",
                dead_letter.topic,
                outcome.stage,
                outcome.reason,
                extra=log_context(record),
            )
            return
        # Retried forever (the offset stays uncommitted); persistent failures need an operator.
        level = logging.WARNING if failures < 5 else logging.ERROR
        why = error if isinstance(error, BrokerUnavailable) else f"{type(error).__name__}: {safe_str(error)}"
        log.log(
            level,
            "dead letter not delivered (failure %d), retrying in %.2fs: %s",
            failures,
            delay_s or 0.0,
            why,
            extra=log_context(record),
        )


__all__ = ["CallNext", "Hooks", "LoggingMiddleware", "Middleware", "StatsMiddleware", "log_context"]
