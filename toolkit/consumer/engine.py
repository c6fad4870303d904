"""The engine: lanes, outcomes, dead letters, commits and rebalances, over any transport.

A :class:`~toolkit.consumer.transport.Transport` hands batches to :meth:`Engine.on_batch` on the event loop.
Each partition's records go to *lanes* (one per partition in PARTITION ordering, one per key in KEY, one per
record in UNORDERED); a lane handles its records one at a time, so a record waiting for a retry backoff
holds back only its own lane, never other partitions. At most ``max_workers`` handlers run at once (async
handlers on the loop, plain functions in the handler thread pool). An offset becomes committable only when
its record and every earlier one of its partition are done (handled, or dead letter acknowledged by the
broker); watermarks are committed in batches every ``commit_interval_s``, synchronously when partitions
are revoked and on shutdown. At most ``max_in_flight`` records are held; the transport stops fetching when
the window is full, and a partition held up by a backoff with many records buffered is paused.

Over an :class:`~toolkit.consumer.transport.AcknowledgingTransport` (Kafka share groups) there are no offsets
to commit: each record is settled on its own (accepted when done or dead-lettered, released to be delivered
again when it is to be retried or cannot be finished), its attempt is the broker's delivery count, and no
wait outlasts the record's acquisition lock.

Contracts: docs/contracts.md ("Outcomes", "Commits", "Share groups"); threads: docs/threads.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
import functools
import inspect
import logging
import time
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from toolkit.consumer.context import handling
from toolkit.consumer.deadletter import DeadLetterRecord, SourceRecord, build_dead_letter, minimal_dead_letter
from toolkit.consumer.handlers import Route
from toolkit.consumer.middleware import CallNext, Hooks, log_context
from toolkit.consumer.offsets import OffsetTracker
from toolkit.consumer.options import ConsumerOptions
from toolkit.consumer.outcomes import DONE, Done, Pause, RetryAfter, Stop, ToDeadLetter, decide
from toolkit.consumer.pipeline import CompiledSchema, Message, Pipeline, Plan, Prepared
from toolkit.consumer.slots import WorkerSlots
from toolkit.consumer.stats import TopicStats
from toolkit.consumer.transport import (
    AcknowledgingTransport,
    Assignment,
    DeadLetterSink,
    End,
    Position,
    Record,
    Transport,
)
from toolkit.envelope import DecodedRecord
from toolkit.errors import BrokerUnavailable, ConsumerStopped, HandlerTimedOut
from toolkit.settings import OrderingMode
from toolkit.wire import WireRecord, WireSchema

log = logging.getLogger("toolkit.consumer")

_LANE_SLICE_S = 0.005  # longest a lane runs without letting the event loop serve others
_clock = time.perf_counter  # handler attempts timed for Middleware.on_handler_time

# Share groups: the record whose handler is about to run in this lane's task, for the lock check once a worker
# slot is taken (None when it is to be handled whatever its lock: its last delivery).
_locked_record: contextvars.ContextVar[Record | None] = contextvars.ContextVar("epistle_locked_record", default=None)


_NOT_RUN: Any = object()  # (Engine._process: the fast lane did not run the handler)


_THREAD_KEEPS_SLOT = "_epistle_thread_keeps_slot"  # on a HandlerTimedOut whose thread still runs (slot kept)


class _LockLapsed(BaseException):
    """A share group's record waited for a worker slot until its acquisition lock (nearly) expired: it is
    released unhandled. A BaseException, so that middleware catching a handler's exceptions lets it through."""


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What holds an assigned partition back, for metrics and health checks (:meth:`Engine.partitions`)."""

    topic: str
    partition: int
    paused: bool
    """Fetching paused by the engine: a lane waits out a backoff with many records buffered behind it."""
    retrying: int
    """Records waiting out a retry backoff."""
    outage: int
    """Records waiting out a registry or broker outage (or a schema not known yet)."""
    held_dead_letters: int
    """Dead letters the broker refused (or whose topic it would not create), being resent: no new record of
    the partition starts meanwhile."""


class _Partition:
    """One assigned partition: its offset tracker, its lanes, and whether fetching it is paused."""

    __slots__ = (
        "assignment",
        "topic",
        "partition",
        "tracker",
        "lanes",
        "tasks",
        "pending",
        "buffered",
        "paused",
        "revoked",
        "abandon",
        "eof",
        "waiting",
        "waits",
        "held",
        "unheld",
    )

    def __init__(self, assignment: Assignment) -> None:
        self.assignment = assignment
        self.topic, self.partition = assignment.topic, assignment.partition
        self.tracker = OffsetTracker()
        self.lanes: dict[Hashable, deque[Record]] = {}
        self.tasks: dict[Hashable, asyncio.Task[None]] = {}
        self.pending: set[asyncio.Task[None]] = set()  # dead letters waiting for the broker's acknowledgement
        self.buffered = 0
        self.paused = False
        self.revoked = False
        self.abandon = asyncio.Event()  # set on revoke/stop: stop waiting for backoffs, drop queued records
        self.eof = False
        self.waiting = 0  # lanes sleeping out a retry or outage backoff
        self.waits = {"retry": 0, "outage": 0, "dead_letter": 0}  # the same, by what they wait for
        self.held = 0  # dead letters of this partition the broker refused, being resent
        self.unheld = asyncio.Event()  # set when held drops back to 0

    def position(self, offset: int) -> Position:
        return Position(self.topic, self.partition, offset, self.assignment.generation)


class Engine:
    """Runs one consumer's work on the event loop: built and started by
    :class:`~toolkit.consumer.runtime.KafkaConsumer`, or directly with any transport.

    It implements :class:`~toolkit.consumer.transport.TransportEvents` for its transport.
    """

    def __init__(self, options: ConsumerOptions, pipeline: Pipeline, transport: Transport, hooks: Hooks) -> None:
        self.options = options
        self.pipeline = pipeline
        self.transport = transport
        self.hooks = hooks
        self._retry = options.retry
        self._error_policy = options.error_policy
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._in_flight = 0
        self._stopping = False
        self.failure: BaseException | None = None
        self.stopped = asyncio.Event()  # set by request_stop(): run() then shuts down
        self._loop = asyncio.get_running_loop()
        self._workers = WorkerSlots(options.max_workers)
        self._handler_timeout_s = options.handler_timeout_s
        self._handler_pool = ThreadPoolExecutor(options.max_workers, thread_name_prefix="epistle-handler")
        # Registry lookups sleep between retries during an outage: they get their own threads, so creating
        # a dead-letter topic never waits behind them (and the other way round).
        self._registry_pool = ThreadPoolExecutor(2, thread_name_prefix="epistle-registry")
        self._admin_pool = ThreadPoolExecutor(1, thread_name_prefix="epistle-admin")
        self._sink: DeadLetterSink | None = None
        self._wrapped: dict[int, tuple[Route, CallNext]] = {}  # id(route) -> the route in the middleware
        # Share groups: records settled one by one (module docstring); None for offset-committing transports
        self._acks: AcknowledgingTransport | None = transport if isinstance(transport, AcknowledgingTransport) else None

    # -- lifecycle -------------------------------------------------------------------------------------
    async def run(self, topics: list[str]) -> None:
        """Fetch and process until :meth:`request_stop`, then finish in-flight work, commit and close.

        Raises:
            ConfigError: the transport refused its configuration (nothing was started).
            ConsumerStopped: ErrorPolicy.STOP met a failing record, or the client failed fatally.
        """
        self.hooks.start(self)  # before the transport starts: middleware may ask it for statistics
        try:
            options = self.options
            self._sink = self.transport.start(
                topics,
                options.group_id,
                self,
                self._loop,
                max_poll_records=options.max_poll_records,
                max_in_flight=options.max_in_flight,
                dlq_max_message_bytes=options.dlq_max_message_bytes,
            )
        except BaseException:
            self.close_pools()
            self.hooks.stop(self)
            raise
        if self._acks is not None:  # the broker counts the attempts and stops delivering at its limit
            limit = min(self._retry.max_attempts, self._acks.delivery_limit)
            self._retry = dataclasses.replace(self._retry, max_attempts=max(1, limit))
        ticker = asyncio.create_task(self._commit_ticker())
        try:
            await self.stopped.wait()
        finally:
            ticker.cancel()
            try:
                await self._shutdown()
            finally:
                self.hooks.stop(self)
        if self.failure is not None:
            raise self.failure

    def request_stop(self) -> None:
        """Stop fetching and shut down (on the loop)."""
        if not self.stopped.is_set():
            log.info("stopping: no more fetching; finishing in-flight work")
            self.stopped.set()

    def close_pools(self) -> None:
        for pool in (self._handler_pool, self._registry_pool, self._admin_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def in_flight_count(self) -> int:
        """Records fetched and not finished."""
        return self._in_flight

    def in_flight(self) -> int:  # TransportEvents: read from the transport's thread (an int read is atomic)
        return self._in_flight

    def partitions(self) -> list[PartitionState]:
        """The assigned partitions and what holds each back (on the loop)."""
        return [
            PartitionState(
                p.topic, p.partition, p.paused, p.waits["retry"], p.waits["outage"], max(p.held, p.waits["dead_letter"])
            )
            for p in self._parts.values()
        ]

    async def _shutdown(self) -> None:
        self._stopping = True
        self.transport.stop_fetching()
        for part in list(self._parts.values()):
            self._drop_queued(part)
            part.abandon.set()
        tasks = [t for part in self._parts.values() for t in (*part.tasks.values(), *part.pending)]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.options.shutdown_timeout_s)
            for task in pending:
                task.cancel()
        positions = self._watermarks([p for p in self._parts.values() if not p.revoked], only_moved=False)
        try:  # bounded: a synchronous commit can block for as long as the group coordinator is away
            await asyncio.wait_for(
                asyncio.wrap_future(self.transport.commit(positions, sync=True)), self.options.shutdown_timeout_s
            )
        except TimeoutError:
            log.error("the final commit was not answered within %.0fs", self.options.shutdown_timeout_s)
        except Exception as exc:
            log.warning("final commit failed: %s", exc)
        try:
            await asyncio.wait_for(asyncio.wrap_future(self.transport.close()), self.options.shutdown_timeout_s)
        except TimeoutError:
            log.error("the Kafka consumer did not close within %.0fs", self.options.shutdown_timeout_s)
        if self._sink is not None:
            undelivered = await self._loop.run_in_executor(None, self._sink.close)
            if undelivered:
                log.error("%d dead letters were not acknowledged; their offsets were not committed", undelivered)
        self.close_pools()

    async def _commit_ticker(self) -> None:
        while True:
            await asyncio.sleep(self.options.commit_interval_s)
            failed = self.transport.take_commit_failure()  # then commit every watermark again
            # Not a partition being revoked or lost: release() answers its final offset (none when lost).
            kept = [part for part in self._parts.values() if not part.revoked]
            positions = self._watermarks(kept, only_moved=not failed)
            if positions:
                self.transport.commit(positions)

    @staticmethod
    def _watermarks(parts: list[_Partition], only_moved: bool) -> list[Position]:
        positions = []
        for part in parts:
            offset = part.tracker.to_commit() if only_moved else part.tracker.watermark
            if offset is not None:
                positions.append(part.position(offset))
        return positions

    # -- TransportEvents: rebalances ---------------------------------------------------------------------
    def on_assign(self, assigned: list[Assignment]) -> None:
        for assignment in assigned:
            self._parts[(assignment.topic, assignment.partition)] = _Partition(assignment)

    async def release(self, partitions: list[tuple[str, int]], lost: bool) -> list[Position]:
        """Drain revoked partitions: drop queued records, let running handlers finish, return watermarks."""
        parts = [part for tp in partitions if (part := self._parts.get(tp)) is not None]
        for part in parts:
            part.revoked = True
            part.abandon.set()
            self._drop_queued(part)
        tasks = [t for part in parts for t in (*part.tasks.values(), *part.pending)]
        if tasks:
            await asyncio.wait(tasks, timeout=self.options.shutdown_timeout_s)
        positions = []
        for part in parts:
            if self._parts.get((part.topic, part.partition)) is part:  # not a re-assignment made meanwhile
                del self._parts[(part.topic, part.partition)]
            for lane in part.lanes.values():  # a handler that outlived the drain timeout: forget its record
                self._in_flight -= len(lane)
                part.buffered -= len(lane)
                lane.clear()
            if part.tracker.watermark is not None and not lost:
                positions.append(part.position(part.tracker.watermark))
        self._update_pauses()
        return positions

    def on_fatal(self, reason: str) -> None:
        self._fail(ConsumerStopped(reason))

    # -- TransportEvents: fetched records ----------------------------------------------------------------
    def on_batch(self, records: list[Record], ends: Sequence[End]) -> None:
        lane_key_of = self._lane_key
        by_partition = self.options.ordering is OrderingMode.PARTITION
        parts = self._parts
        acks = self._acks
        if acks is None and by_partition and not self._stopping:
            records = self._take_runs(records)  # (the common case: a lane per partition)
        for msg in records:
            part = parts.get((msg.topic(), msg.partition()))
            if acks is not None:  # share groups: no assignments; each record is a lane of its own
                if self._stopping:
                    acks.acknowledge(msg, False)
                    continue
                if part is None:
                    tp = (msg.topic(), msg.partition())
                    part = parts[tp] = _Partition(Assignment(tp[0], tp[1], 0))
                part.eof = False
                lane_key: Hashable = id(msg)
            else:
                if part is None or part.revoked or self._stopping:
                    continue  # fetched before a revoke: the next owner gets it, nothing was committed
                try:
                    part.tracker.add(msg.offset())
                except ValueError:
                    log.warning("skipping redelivered offset", extra=log_context(msg))
                    continue
                part.eof = False
                lane_key = None if by_partition else lane_key_of(msg)
            lane = part.lanes.get(lane_key)
            if lane is None:
                lane = part.lanes[lane_key] = deque()
            lane.append(msg)
            part.buffered += 1
            self._in_flight += 1
            if lane_key not in part.tasks:
                part.tasks[lane_key] = asyncio.create_task(self._run_lane(part, lane_key, lane))
        for end in ends:
            ended = parts.get((end[0], end[1]))
            if ended is not None:
                ended.eof = True
                # Past transaction markers: only where every record below the end went into the tracker (a
                # revoked partition's or a stopping consumer's records were dropped above, uncommitted).
                if len(end) == 3 and acks is None and not ended.revoked and not self._stopping:
                    ended.tracker.end_at(end[2])  # type: ignore[misc]
        self._update_pauses()
        if ends:
            self._check_idle()
        elif acks is not None and not records:  # nothing to deliver for a while, maybe no partition seen yet
            self._check_idle(idle=True)

    def _take_runs(self, records: list[Record]) -> list[Record]:
        """:meth:`on_batch` for a consumer group ordered by partition, record by record as it does, with one
        look-up per run of records of the same partition (a fetch holds runs of hundreds); returns the
        records it left to :meth:`on_batch` (none, unless a record's offset was redelivered)."""
        parts = self._parts
        topic: str | None = None
        partition = -1
        part: _Partition | None = None
        lane: deque[Record] | None = None
        taken = 0
        try:
            for index, msg in enumerate(records):
                if msg.partition() != partition or msg.topic() != topic:
                    if taken and part is not None and lane is not None:
                        self._took(part, lane, taken)
                    taken = 0
                    topic, partition = msg.topic(), msg.partition()
                    part = parts.get((topic, partition))
                    lane = None
                    if part is not None and not part.revoked:
                        lane = part.lanes.get(None)
                        if lane is None:
                            lane = part.lanes[None] = deque()
                if lane is None or part is None:
                    continue  # fetched before a revoke: the next owner gets it, nothing was committed
                try:
                    part.tracker.add(msg.offset())
                except ValueError:  # (on_batch logs and skips it, and takes the rest)
                    return records[index:]
                part.eof = False
                lane.append(msg)
                taken += 1
            return []
        finally:
            if taken and part is not None and lane is not None:
                self._took(part, lane, taken)

    def _took(self, part: _Partition, lane: deque[Record], taken: int) -> None:
        """``taken`` records were appended to ``part``'s lane: count them, and start the lane if it is idle
        (after the records are in it: a task factory may run the lane at once)."""
        part.buffered += taken
        self._in_flight += taken
        if None not in part.tasks:
            part.tasks[None] = asyncio.create_task(self._run_lane(part, None, lane))

    def _lane_key(self, msg: Record) -> Hashable:
        if self.options.ordering is OrderingMode.PARTITION:
            return None
        if self.options.ordering is OrderingMode.KEY:
            return msg.key()
        return msg.offset()

    def _update_pauses(self) -> None:
        """Pause a partition that is held up (a lane waiting out a backoff) with many records buffered, so
        the others keep the window; the whole-window limit is the transport's job. A partition that is
        merely busy is never paused: a pause drops librdkafka's prefetch, and each resume waits for a
        new fetch (that cost 40 % of the throughput when every partition above half the window was paused)."""
        high = max(self.options.max_poll_records, self.options.max_in_flight // 2)
        to_pause: list[Assignment] = []
        to_resume: list[Assignment] = []
        for part in self._parts.values():
            want = (part.waiting > 0 and part.buffered >= high) or (part.paused and part.buffered > high // 2)
            if want != part.paused:
                part.paused = want
                (to_pause if want else to_resume).append(part.assignment)
        if to_pause:
            self.transport.pause(to_pause)
        if to_resume:
            self.transport.resume(to_resume)

    def _check_idle(self, idle: bool = False) -> None:
        """``idle``: an acknowledging transport (share groups) delivered nothing for a while and holds nothing:
        drained once nothing is in flight, even when no record (so no partition) was ever delivered here."""
        # Partitions being revoked do not count: their records are the next owner's, and a member left with
        # none but those is between assignments, not drained.
        kept = [part for part in self._parts.values() if not part.revoked]
        drained = idle or (bool(kept) and all(part.eof for part in kept))
        if self.options.stop_when_idle and drained and self._in_flight == 0:
            log.info("every assigned partition is drained; stopping (stop_when_idle)")
            self.request_stop()

    # -- processing ---------------------------------------------------------------------------------------
    async def _run_lane(self, part: _Partition, lane_key: Hashable, lane: deque[Record]) -> None:
        # A handler that never awaits would keep the loop to this lane for a whole window: hand the loop
        # over every few milliseconds so commits, new batches and signals are served on time.
        yield_at = time.monotonic() + _LANE_SLICE_S
        # The fast lane (most records): no coroutine, no keyword call and no Prepared per record between the
        # lane and the handler; anything it does not cover goes through _process (around_handler middleware
        # too: the stages done here, its chain there).
        hooks = self.hooks
        fast = self._acks is None and not self.pipeline.reads_keys
        timed = self._handler_timeout_s is not None  # (the handler runs in _run_handler, under its limit)
        direct = fast and not hooks.around and not timed  # the handler may be called here (if async, slot free)
        workers = self._workers
        on_record, timers = hooks.on_record, hooks.on_handler_time
        ready_of, monotonic, tracker, acks = self.pipeline.ready, time.monotonic, part.tracker, self._acks
        # The built-in outcome hooks of a done record, done here (Hooks.on_done: the others); a lane is one
        # partition's, so one topic's counters, looked up again every slice (consumer.stats may be reset).
        on_done, done_logs, done_stats = hooks.on_done, hooks.done_logs, hooks.done_stats
        counts: TopicStats | None = None
        log_done = done_logs and hooks.logs_done()
        try:
            while lane and not part.revoked and not self._stopping:
                if monotonic() >= yield_at:
                    await asyncio.sleep(0)
                    yield_at = monotonic() + _LANE_SLICE_S
                    log_done, counts = done_logs and hooks.logs_done(), None
                    continue
                if part.held:  # a dead letter of this partition is refused: wait until it is delivered
                    await self._until_unheld(part)
                    if part.abandon.is_set():
                        break
                    continue
                msg = lane[0]
                finished: bool | None
                try:
                    ready = None
                    if fast:
                        if on_record:  # (Hooks.record, without two calls of its own)
                            try:
                                for hook in on_record:
                                    hook(msg)
                            except Exception:  # noqa: BLE001 - logged, the other hooks called: see Hooks
                                hooks.record_after(hook, msg)
                        ready = ready_of(msg)
                    if ready.__class__ is not tuple:  # (the common case first: a message and its route)
                        if ready is None:
                            finished = await self._process(part, msg, recorded=fast)
                        else:  # a stage failed: only its outcome is left to decide
                            finished = await self._process(part, msg, None, ready, recorded=True)
                    elif not direct or not ready[1].is_async or workers.free <= 0 or workers.waiting:
                        finished = await self._process(part, msg, Prepared(*ready), recorded=True)
                    else:  # (no coroutine of its own: done is settled here, anything else goes on in _process)
                        message, route = ready
                        workers.free -= 1  # (WorkerSlots.try_acquire, inlined: a slot is free, nobody waits)
                        handled = handling.set(message)  # for the producer's correlationId carry-over
                        started = _clock() if timers else 0.0
                        try:
                            result = await route.call(message)
                        except asyncio.CancelledError:
                            self.hooks.abandoned(msg)
                            raise
                        except BaseException as exc:  # noqa: BLE001 - every failure is an outcome
                            result = exc
                        finally:
                            if workers.waiting:
                                workers.release()
                            else:  # (WorkerSlots.release with nobody waiting)
                                workers.free += 1
                            handling.reset(handled)
                            if timers:
                                hooks.handler_time(message, _clock() - started)
                        if result is True or result is None:
                            if done_stats is not None:  # StatsMiddleware's and LoggingMiddleware's on_outcome
                                if counts is None:
                                    counts = done_stats[part.topic]
                                counts.processed += 1
                            if log_done:
                                hooks.log_done(msg, message)
                            try:
                                for done_hook in on_done:
                                    done_hook(msg, message, DONE, 1, None)
                            except Exception:  # noqa: BLE001 - a hook cannot change the outcome
                                self.hooks.outcome_after(done_hook, msg, message, DONE, 1)
                            finished = True
                        else:
                            finished = await self._process(part, msg, Prepared(message, route), result, recorded=True)
                except Exception as exc:  # a bug of ours: stop rather than silently stall the partition
                    log.exception("internal error processing a record", extra=log_context(msg))
                    self.hooks.abandoned(msg)
                    if self._acks is not None:
                        lane.popleft()
                        part.buffered -= 1
                        self._in_flight -= 1
                        self._acks.acknowledge(msg, False)
                    self._fail(
                        ConsumerStopped(
                            f"internal error: {type(exc).__name__}: {exc}",
                            topic=part.topic,
                            partition=part.partition,
                            offset=msg.offset(),
                        )
                    )
                    return
                if lane and lane[0] is msg:
                    lane.popleft()
                    part.buffered -= 1
                    self._in_flight -= 1
                if acks is not None:
                    if finished is not None:  # (None: accepted once its dead letter is acknowledged)
                        acks.acknowledge(msg, bool(finished))
                    continue
                if finished:
                    tracker.done(msg.offset())
                elif finished is False and not part.revoked:
                    break  # stopping (STOP policy or shutdown): nothing after it may be committed
        finally:
            if self._acks is not None:  # not started (stopping): back to the broker
                while lane:
                    self._acks.acknowledge(lane.popleft(), False)
                    part.buffered -= 1
                    self._in_flight -= 1
            part.tasks.pop(lane_key, None)
            if not lane:
                part.lanes.pop(lane_key, None)
            self._update_pauses()
            self._check_idle()

    async def _process(
        self,
        part: _Partition,
        msg: Record,
        prepared: Prepared | None = None,
        ran: Any = _NOT_RUN,
        *,
        recorded: bool = False,
    ) -> bool | None:
        """Run one record to a final outcome: True when done (commit may pass it), None when its dead
        letter is on its way (done on acknowledgement), False when abandoned (never committed).

        From the fast lane: ``prepared``, the record through every stage, and ``ran``, what its handler's first
        attempt returned or raised (when it ran), or the exception of the stage that failed (no ``prepared``);
        ``recorded``: the record's ``on_record`` hooks were called there."""
        hooks = self.hooks
        if hooks.on_record and not recorded:  # (the fast lane called them)
            hooks.record(msg)
        attempt, outages = 1, 0
        acks = self._acks
        if acks is not None:
            attempt = acks.delivery_count(msg)
            # At its last delivery a released record is archived by the broker (kept nowhere): it is handled
            # (and dead-lettered on failure) whatever its lock.
            last = attempt >= acks.delivery_limit
            _locked_record.set(None if last else msg)  # (this lane's task's own context)
            if not last and self._lock_left(msg) <= 0:  # waited too long here: another consumer may have it already
                log.warning("releasing a record whose acquisition lock may have expired", extra=log_context(msg))
                hooks.abandoned(msg)
                return False
        workers = self._workers
        around, timers = bool(hooks.around), hooks.on_handler_time
        timed = self._handler_timeout_s
        locate = self.pipeline.locate  # stages decode and envelope, then the plan, schema or key to resolve
        keyed = self.pipeline.reads_keys  # keys in the wire format: their schema id resolved off the loop too
        while True:
            if ran is not _NOT_RUN:  # the fast lane ran its first attempt: only the outcome is left
                result, ran = ran, _NOT_RUN
            else:
                try:
                    if prepared is None:
                        # No coroutine on the hot path: the registry is asked (off the loop) only on a miss.
                        decoded, source = locate(msg.value(), msg.topic())
                        if isinstance(source, tuple):
                            source = await self._loop.run_in_executor(
                                self._registry_pool, self.pipeline.resolve, source
                            )
                        if keyed and (pending := self.pipeline.key_to_resolve(msg.topic(), msg.key())) is not None:
                            await self._loop.run_in_executor(self._registry_pool, self.pipeline.resolve_key, pending)
                        prepared = self._finish(msg, decoded, source)
                    message = prepared.message
                    if timed is not None and message.attempt != attempt:
                        # A retry under a time limit: the previous attempt's plain-function handler may still
                        # be running past it, reading its own message; this attempt gets a copy.
                        message = copy.copy(message)
                        prepared = Prepared(message, prepared.route)
                    message.attempt = attempt
                    if acks is not None:
                        message.delivery_count = attempt
                    route = prepared.route
                    handled = handling.set(message)  # for the producer's correlationId carry-over
                    started = _clock() if timers else 0.0
                    try:
                        if around:
                            result = await self._wrap(route)(message)
                        # The common case: no extra coroutine (share groups: the lock is checked in _run_handler)
                        elif acks is None and route.is_async and timed is None and workers.try_acquire():
                            try:
                                result = await route.call(message)
                            finally:
                                workers.release()
                        else:
                            result = await self._run_handler(route, message)
                    finally:
                        handling.reset(handled)
                        if timers:
                            hooks.handler_time(message, _clock() - started)
                except asyncio.CancelledError:
                    hooks.abandoned(msg)
                    raise
                except _LockLapsed:  # it waited for a worker slot past its lock: another consumer may have it already
                    log.warning(
                        "releasing a record whose acquisition lock expired while it waited for a worker",
                        extra=log_context(msg),
                    )
                    hooks.abandoned(msg)
                    return False
                except BaseException as exc:  # noqa: BLE001 - every failure is an outcome
                    result = exc
            current = prepared.message if prepared is not None else None
            if result is True or result is None:  # the common case, as decide() has it: done
                try:  # (Hooks.outcome inlined: one call less per record)
                    for hook in hooks.on_outcome:
                        hook(msg, current, DONE, attempt, None)
                except Exception:  # noqa: BLE001 - a hook cannot change the outcome
                    hooks.outcome_after(hook, msg, current, DONE, attempt)
                return True
            outcome = decide(result, attempt, self._retry, self._error_policy)
            if isinstance(outcome, Done):
                hooks.outcome(msg, current, outcome, attempt)
                return True
            if isinstance(outcome, RetryAfter):
                if acks is not None:
                    # Released at once, with no backoff here: the broker's redelivery is the retry (the next
                    # attempt is its delivery count), and a record held for a backoff would hold back the
                    # next poll of every other record (librdkafka polls once the whole batch is settled).
                    hooks.outcome(msg, current, RetryAfter(0.0, outcome.reason, outcome.error), attempt, 0.0)
                    return False
                hooks.outcome(msg, current, outcome, attempt, outcome.delay_s)
                if await self._wait(part, outcome.delay_s, "retry"):
                    hooks.abandoned(msg)
                    return False
                attempt += 1
                continue
            if isinstance(outcome, Pause):
                outages += 1
                delay = min(self._retry.delay(outages), outcome.max_delay_s)
                hooks.outcome(msg, current, outcome, attempt, delay)
                if acks is not None and self._releasable(msg) and delay >= self._lock_left(msg):
                    # held until its lock would expire, then released (never rejected, never dead-lettered)
                    interrupted = await self._wait(part, self._lock_left(msg), "outage")
                    if not interrupted:
                        log.warning(
                            "outage: releasing a record before its acquisition lock expires", extra=log_context(msg)
                        )
                    hooks.abandoned(msg)
                    return False
                if await self._wait(part, delay, "outage"):
                    hooks.abandoned(msg)
                    return False
                continue
            hooks.outcome(msg, current, outcome, attempt)
            if isinstance(outcome, Stop):
                dl = outcome.dead_letter
                self._fail(
                    ConsumerStopped(
                        f"{dl.stage}: {dl.reason}",
                        stage=dl.stage,
                        topic=part.topic,
                        partition=part.partition,
                        offset=msg.offset(),
                    )
                )
                return False
            assert isinstance(outcome, ToDeadLetter)
            attempts = attempt if prepared is not None else 1
            try:
                return await self._dead_letter(part, msg, outcome, attempts, log_context(msg, current))
            except asyncio.CancelledError:  # (shutdown timeout while its topic is being created)
                hooks.abandoned(msg)
                raise

    def _finish(
        self, msg: Record, decoded: DecodedRecord | WireRecord, source: Plan | CompiledSchema | WireSchema
    ) -> Prepared:
        return self.pipeline.finish_record(msg, decoded, source)

    def _wrap(self, route: Route) -> CallNext:
        """The route's handler inside the middleware's ``around_handler`` hooks (built once per route)."""
        entry = self._wrapped.get(id(route))
        if entry is None or entry[0] is not route:
            entry = self._wrapped[id(route)] = (route, self.hooks.wrap(functools.partial(self._run_handler, route)))
        return entry[1]

    async def _run_handler(self, route: Route, message: Message[Any]) -> Any:
        """Run the handler in a worker slot, waiting for one; plain functions in the handler pool. In a share
        group, a record whose lock ran out while it waited is not handled (:class:`_LockLapsed`)."""
        workers = self._workers
        if not workers.try_acquire():  # a free slot is taken without a coroutine
            await workers.acquire()
        release = True
        try:
            if self._acks is not None:  # share groups: its lock may have run out while it waited for the slot
                record = _locked_record.get()
                if record is not None and self._lock_left(record) <= 0:
                    raise _LockLapsed
            timeout = self._handler_timeout_s
            if timeout is not None:
                try:
                    return await self._call_timed(route, message, timeout)
                except HandlerTimedOut as exc:
                    if exc.__dict__.get(_THREAD_KEEPS_SLOT):  # (set by _call_timed only, never by a handler)
                        release = False  # released when its thread ends
                    raise
            if route.is_async:
                return await route.call(message)
            # A copy of this context, so the worker thread sees the message in `handling` too.
            result = await self._loop.run_in_executor(
                self._handler_pool, contextvars.copy_context().run, route.call, message
            )
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            if release:
                workers.release()

    async def _call_timed(self, route: Route, message: Message[Any], timeout: float) -> Any:
        """The handler's result within ``timeout`` seconds; past it, :class:`~toolkit.errors.HandlerTimedOut`.
        An ``async def`` handler is cancelled; a plain function cannot be (Python cannot stop a thread): it
        keeps its thread and its worker slot until it returns (``still_running``: the caller leaves the slot
        to :meth:`_timed_out_thread_ended`), so no more than ``max_workers`` handlers ever run, and its
        result is ignored."""
        limit = asyncio.timeout(timeout)
        if route.is_async:
            try:
                async with limit:
                    result = await route.call(message)
            except TimeoutError:
                if not limit.expired():  # the handler's own TimeoutError: an ordinary failure
                    raise
                raise HandlerTimedOut(timeout) from None
            if limit.expired():  # it swallowed the cancel and returned: the attempt still ran past the limit
                raise HandlerTimedOut(timeout)
            return result
        running = self._loop.run_in_executor(self._handler_pool, contextvars.copy_context().run, route.call, message)
        try:
            async with limit:
                result = await asyncio.shield(running)
                if inspect.isawaitable(result):
                    result = await result
                return result
        except TimeoutError:
            if not limit.expired():
                raise
            if running.done() and not running.cancelled():  # it returned as the limit struck: its answer counts
                result = running.result()
                if not inspect.isawaitable(result):
                    return result
                if inspect.iscoroutine(result):
                    result.close()
                raise HandlerTimedOut(timeout) from None
        log.warning(
            "a plain-function handler ran past %g s; its thread keeps a worker slot until it returns",
            timeout,
            extra={"topic": message.topic, "partition": message.partition, "offset": message.offset},
        )
        running.add_done_callback(self._timed_out_thread_ended)
        timed_out = HandlerTimedOut(timeout, still_running=True)
        timed_out.__dict__[_THREAD_KEEPS_SLOT] = True
        raise timed_out

    def _timed_out_thread_ended(self, running: asyncio.Future[Any]) -> None:
        if not running.cancelled():
            running.exception()  # (retrieved: its result is ignored)
        self._workers.release()

    # -- dead letters -------------------------------------------------------------------------------------
    async def _dead_letter(
        self, part: _Partition, msg: Record, outcome: ToDeadLetter, attempts: int, extra: dict[str, Any]
    ) -> bool | None:
        """Produce the dead letter without waiting for the broker: the lane moves on, and the record's
        offset is marked done by :meth:`_confirm_dead_letter` once the broker acknowledged it.
        Returns None (pending) or False (abandoned before the first send)."""
        sink = self._sink
        assert sink is not None
        group = self.options.group_id
        suffix = self.options.dlq_suffix
        headers = _headers(msg)
        try:
            if headers is None:
                raise ValueError("the record's headers cannot be read")
            ts_type, ts = msg.timestamp()
            details = getattr(msg, "source_details", None)  # optional: a transport's own coordinates
            source = SourceRecord(
                msg.topic(),
                msg.partition(),
                msg.offset(),
                msg.key(),
                msg.value(),
                headers,
                ts if ts_type and ts >= 0 else None,
                ts_type,
                details() if details is not None else None,
            )
            record = build_dead_letter(
                source,
                stage=outcome.stage,
                reason=outcome.reason,
                error=outcome.error,
                details=outcome.details,
                consumer_group=group,
                attempts=attempts,
                suffix=suffix,
                max_bytes=sink.max_message_bytes,
            )
        except Exception:  # a bug of ours must not stop the consumer: the exact bytes and the reason still go
            log.exception("building the dead letter failed; sending a minimal one", extra=extra)
            record = minimal_dead_letter(
                msg.topic(),
                msg.partition(),
                msg.offset(),
                msg.key(),
                msg.value(),
                headers,
                stage=outcome.stage,
                reason=outcome.reason,
                consumer_group=group,
                suffix=suffix,
            )
        failures = 0
        while not sink.knows(record.topic):
            try:
                await self._loop.run_in_executor(self._admin_pool, sink.ensure_topic, record.topic)
            except BrokerUnavailable as exc:
                failures += 1
                if await self._dead_letter_failed(part, msg, record, outcome, failures, exc):
                    self.hooks.abandoned(msg)
                    return False
        task = asyncio.create_task(self._confirm_dead_letter(part, msg, record, outcome))
        part.pending.add(task)
        self._in_flight += 1
        return None

    async def _confirm_dead_letter(
        self, part: _Partition, msg: Record, record: DeadLetterRecord, outcome: ToDeadLetter
    ) -> None:
        """Wait for the broker's acknowledgement. A dead letter it refuses (too large, an outage) holds its
        partition: no new record of it starts until the dead letter is delivered (resent alone, with
        backoff); other partitions go on."""
        sink = self._sink
        assert sink is not None
        failures = 0
        try:
            while True:
                try:
                    await sink.send(record, alone=failures > 0)
                except Exception as exc:  # noqa: BLE001 - whatever failed, retry: a dead task would stall commits
                    failures += 1
                    if failures == 1:
                        part.held += 1
                        part.unheld.clear()
                    if await self._dead_letter_failed(part, msg, record, outcome, failures, exc):
                        self.hooks.abandoned(msg)
                        if self._acks is not None:  # kept nowhere: the broker delivers it again
                            self._acks.acknowledge(msg, False)
                        return  # abandoned: not done, so never committed; redelivered to the next owner
                    continue
                self.hooks.dead_letter(msg, record, outcome, None, failures, None)
                if self._acks is not None:  # kept in the dead-letter topic: now the broker may forget it
                    self._acks.acknowledge(msg, True)
                else:
                    part.tracker.done(msg.offset())
                return
        except asyncio.CancelledError:  # the shutdown timeout passed before the broker answered
            self.hooks.abandoned(msg)
            raise
        finally:
            if failures:
                part.held -= 1
                if not part.held:
                    part.unheld.set()
            part.pending.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._in_flight -= 1
            self._check_idle()

    @staticmethod
    async def _until_unheld(part: _Partition) -> None:
        """Wait until the partition's refused dead letters are delivered, or it is revoked or stopping."""
        waits = [asyncio.ensure_future(part.unheld.wait()), asyncio.ensure_future(part.abandon.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _dead_letter_failed(
        self,
        part: _Partition,
        msg: Record,
        record: DeadLetterRecord,
        outcome: ToDeadLetter,
        failures: int,
        exc: BaseException,
    ) -> bool:
        """Report, back off. True when the partition was revoked or the consumer stops meanwhile (or, in a
        share group, the record's acquisition lock would expire first: it is released instead)."""
        delay = self._retry.delay(failures)
        self.hooks.dead_letter(msg, record, outcome, exc, failures, delay)
        if self._acks is not None and self._releasable(msg) and delay >= self._lock_left(msg):
            await self._wait(part, self._lock_left(msg), "dead_letter")
            return True
        return await self._wait(part, delay, "dead_letter")

    def _releasable(self, msg: Record) -> bool:
        """Whether a share group's record may be released when its lock runs out: not at its last delivery,
        where the broker would archive it (kept nowhere); that one is held and retried in place (an outage, a
        refused dead letter) until it is done or dead-lettered, or the consumer stops."""
        assert self._acks is not None
        return self._acks.delivery_count(msg) < self._acks.delivery_limit

    def _lock_left(self, msg: Record) -> float:
        """Seconds this consumer may still hold ``msg`` (share groups)."""
        assert self._acks is not None
        return max(0.0, self._acks.lock_deadline(msg) - time.monotonic())

    # -- waiting and stopping ---------------------------------------------------------------------------
    async def _wait(self, part: _Partition, delay_s: float, why: str) -> bool:
        """Sleep ``delay_s`` unless the partition is revoked or the consumer stops; True if interrupted.
        ``why``: "retry", "outage" or "dead_letter" (what :meth:`partitions` reports)."""
        if part.abandon.is_set():
            return True
        part.waiting += 1
        part.waits[why] += 1
        self._update_pauses()
        try:
            await asyncio.wait_for(part.abandon.wait(), timeout=delay_s)
        except TimeoutError:
            return False
        finally:
            part.waiting -= 1
            part.waits[why] -= 1
        return True

    def _drop_queued(self, part: _Partition) -> None:
        """Forget records not yet started (never committed, so they are redelivered to the next owner;
        share groups: released)."""
        for key, lane in part.lanes.items():
            keep = 1 if key in part.tasks and lane else 0
            while len(lane) > keep:
                dropped = lane.pop()
                if self._acks is not None:
                    self._acks.acknowledge(dropped, False)
                part.buffered -= 1
                self._in_flight -= 1

    def _fail(self, failure: BaseException) -> None:
        if self.failure is None:
            self.failure = failure
        for part in self._parts.values():
            part.abandon.set()
        self.request_stop()


def _headers(msg: Record) -> list[tuple[str, bytes | None]] | None:
    """The record's headers; None when the client cannot decode them."""
    try:
        return list(msg.headers() or [])
    except Exception:  # noqa: BLE001
        return None


__all__ = ["Engine", "PartitionState"]
