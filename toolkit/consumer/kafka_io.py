"""The only code that talks to librdkafka: the poll thread that owns the consumer, and the dead-letter
producer. librdkafka errors are translated here, once.

The poll thread is the consumer's single owner: it fetches batches with ``consume(num_messages=...)`` and
hands them to the event loop, serves rebalance callbacks, and runs the commands the loop queues (store and
commit offsets, pause, resume) between fetches, so no other thread ever touches the consumer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import operator
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from toolkit.consumer.deadletter import DeadLetterRecord, record_size
from toolkit.consumer.kafka_log import kafka_logger
from toolkit.consumer.rejoin import RejoinWatchdog, after_s, group_describer
from toolkit.consumer.transport import Assignment, End, FetchState, Position, TransportEvents, TransportObserver
from toolkit.errors import BrokerAccessDenied, BrokerAuthenticationFailed, BrokerUnavailable, ConfigError

log = logging.getLogger("toolkit.consumer")
_ERROR = operator.methodcaller("error")  # a record's error (None: a record, not an event)

TP = tuple[str, int]
DLQ_MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # the default (EPISTLE_DLQ_MAX_MESSAGE_BYTES): values up to ~7.5 MiB


def broker_error(exc: BaseException, doing: str) -> BrokerUnavailable:
    """A librdkafka error as our transient error, keeping the code and message."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    name = err.name() if isinstance(err, KafkaError) else type(exc).__name__
    text = err.str() if isinstance(err, KafkaError) else str(exc)
    return BrokerUnavailable(f"{doing}: {name}: {text}")


def wait_for_broker(config: dict[str, Any], timeout_s: float) -> Any:
    """The cluster's metadata (``ClusterMetadata``: ``.topics``), once a broker of the cluster in ``config``
    answers (blocking).

    Raises:
        BrokerUnavailable: none answered within ``timeout_s``.
        BrokerAuthenticationFailed: the broker refused the SASL credentials, or the TLS handshake failed.
        ConfigError: librdkafka refused ``config``.
    """
    return connect_admin(config, timeout_s)[1]


# librdkafka reports a refused login or a failed TLS handshake only to the error callback, and keeps
# retrying: a metadata request just times out. These codes end the wait at once.
_REFUSED = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL}
_WAIT_STEP_S = 1.0


def connect_admin(config: dict[str, Any], timeout_s: float) -> tuple[AdminClient, Any]:
    """An admin client over ``config`` and the cluster's metadata, once a broker answers (blocking); raises
    as :func:`wait_for_broker`."""
    refused: list[KafkaError] = []
    theirs = config.get("error_cb")

    def on_error(err: KafkaError) -> None:
        if err.code() in _REFUSED:
            refused.append(err)
        if callable(theirs):
            theirs(err)

    # log_level 0: librdkafka's retry chatter ("Connect ... failed") would bury the one error raised here
    try:
        admin_config: dict[str, Any] = {**config, "log_level": 0, "error_cb": on_error}
        admin = AdminClient(admin_config)
    except (KafkaException, TypeError, ValueError) as exc:
        raise ConfigError(f"the Kafka client could not be created: {exc}", setting="kafka_config") from None
    deadline = time.monotonic() + timeout_s
    while True:  # short requests, so that a refusal (seen by poll()) ends the wait without the full timeout
        try:
            return admin, admin.list_topics(timeout=max(0.05, min(_WAIT_STEP_S, deadline - time.monotonic())))
        except KafkaException as exc:
            admin.poll(0)  # serves the error callback
            if refused:
                raise access_refused(refused[0], config) from None
            if time.monotonic() >= deadline:
                raise broker_error(exc, "asking for the cluster's metadata") from None


def access_refused(err: KafkaError, config: dict[str, Any]) -> BrokerAuthenticationFailed:
    """A refused login or TLS handshake, naming the settings to check; no secret is quoted."""
    reason = _scrub(err.str() or err.name(), config)
    where = config.get("bootstrap.servers", "?")
    if err.code() == KafkaError._SSL:
        client_cert = (
            ", and KAFKA_SSL_CERTIFICATE_LOCATION / KAFKA_SSL_KEY_LOCATION (the client certificate)"
            if config.get("ssl.certificate.location")
            else ""
        )
        return BrokerAuthenticationFailed(
            f"the TLS handshake with the Kafka broker at {where} failed ({reason}); check KAFKA_SSL_CA_LOCATION "
            f"(the PEM file of the CA that signed the brokers' certificates){client_cert}",
            setting="KAFKA_SSL_CA_LOCATION",
        )
    user = config.get("sasl.username")
    return BrokerAuthenticationFailed(
        f"the Kafka broker at {where} refused the credentials of SASL user {user!r} "
        f"(mechanism {config.get('sasl.mechanism', '?')}): {reason}; check KAFKA_SASL_USERNAME and "
        "KAFKA_SASL_PASSWORD (and KAFKA_SASL_MECHANISM: the one the broker's listener enables)",
        setting="KAFKA_SASL_PASSWORD",
    )


def _scrub(text: str, config: dict[str, Any]) -> str:
    """``text`` with the secrets of ``config`` replaced (librdkafka does not quote them; this makes sure)."""
    for key in ("sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"):
        secret = config.get(key)
        if isinstance(secret, str) and secret:
            text = text.replace(secret, "***")
    return text


def check_access(
    admin: AdminClient, config: dict[str, Any], topics: Sequence[str], dead_letter_suffix: str | None, timeout_s: float
) -> None:
    """Ask the cluster which operations this client may do on ``topics`` and their dead-letter topics (Kafka's
    authorized operations, answered by the broker's authorizer) and fail when READ on a topic or WRITE on
    its dead-letter topic is missing. A topic that does not exist (and may be described) is not checked here:
    it may be created later. Without an authorizer every operation is allowed.

    Raises:
        BrokerAccessDenied: the missing ``(topic, operation)`` pairs, with the ACL to grant.
    """
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AclOperation

    named = [topic for topic in topics if not topic.startswith("^")]  # (a librdkafka pattern names no topic)
    needed = {topic: AclOperation.READ for topic in named}
    if dead_letter_suffix:
        needed.update({topic + dead_letter_suffix: AclOperation.WRITE for topic in named})
    if not needed:
        return
    try:
        futures = admin.describe_topics(
            TopicCollection(list(needed)), request_timeout=timeout_s, include_authorized_operations=True
        )
    except (KafkaException, TypeError, ValueError) as exc:  # (an old broker): the check is skipped
        log.debug("authorized operations not asked: %s", exc)
        return
    missing: list[tuple[str, str]] = []
    for topic, future in futures.items():
        try:
            allowed = future.result().authorized_operations
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED):
                continue  # unknown topic, timeout: nothing to say now
            allowed = []  # not even DESCRIBE
        if allowed is None:
            continue
        if needed[topic] not in allowed and AclOperation.ALL not in allowed:
            missing.append((topic, needed[topic].name))
    if missing:
        user = config.get("sasl.username")
        principal = f"User:{user}" if user else None
        who = f"SASL user {user!r}" if user else "this client"
        grants = "; ".join(
            f"kafka-acls --add --allow-principal {principal or 'User:<principal>'} --operation "
            f"{operation.capitalize()} --topic {topic}"
            for topic, operation in missing
        )
        lacks = ", ".join(
            f"{operation} on {'topic' if topic in topics else 'dead-letter topic'} {topic}"
            for topic, operation in missing
        )
        raise BrokerAccessDenied(
            f"{who} lacks {lacks} (the broker's ACLs); nothing was consumed. Grant it ({grants}), or "
            "use a principal that has it (KAFKA_SASL_USERNAME)",
            missing=missing,
            principal=principal,
        )


# How long a full in-flight window only stops fetching before the partitions are paused (see _hold).
WINDOW_HOLD_S = 1.0
RECREATE_CLOSE_WAIT_S = 10.0  # how long the poll thread waits for a consumer the rejoin watchdog replaces
RECREATE_STATIC_GIVE_UP_S = 120.0  # with a group.instance.id, then the consumer stops (the id stays taken)


# Commands from the event loop to the poll thread, run between fetches (the thread owns the consumer).
@dataclass(frozen=True, slots=True)
class _Commit:
    positions: list[Position]
    sync: bool
    done: Future[None]


@dataclass(frozen=True, slots=True)
class _Pause:
    assignments: list[Assignment]


@dataclass(frozen=True, slots=True)
class _Resume:
    assignments: list[Assignment]


@dataclass(frozen=True, slots=True)
class _Close:
    done: Future[None]


_Command = _Commit | _Pause | _Resume | _Close


class PollThread:
    """Owns the :class:`confluent_kafka.Consumer`. Every public method is safe to call from the loop."""

    def __init__(
        self,
        config: dict[str, Any],
        topics: list[str],
        loop: asyncio.AbstractEventLoop,
        events: TransportEvents,
        *,
        max_poll_records: int,
        max_in_flight: int,
        drain_timeout_s: float = 60.0,
        observers: list[TransportObserver] | None = None,
        lag_interval_s: float = 5.0,
        watchdog: RejoinWatchdog | None = None,
    ) -> None:
        self._config = config
        self._topics = topics
        self._loop = loop
        self._events = events
        self._max_poll_records = max_poll_records
        self._drain_timeout_s = drain_timeout_s
        self._max_in_flight = max_in_flight
        self._handed_over = 0  # records passed to the loop and not yet dispatched there
        self._handover_lock = threading.Lock()
        self._window_paused = False
        self._full_since: float | None = None
        self._paused_by_loop: set[TP] = set()
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._generation: dict[TP, int] = {}
        self._next_generation = 0
        self._fetching = threading.Event()
        self._fetching.set()
        self._commit_failed = False
        self._commit_failed_lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epistle-poll", daemon=True)
        self.consumer: Consumer | None = None
        # For metrics and health checks (docs/threads.md: written here, read from the loop)
        self._observers = list(observers or [])
        self._lag_interval_s = lag_interval_s
        self._async_commits: deque[float] = deque(maxlen=1000)  # start times; answered in order
        self.last_poll: float | None = None
        self.lag: dict[TP, int] = {}  # replaced whole at each statistics report
        # The rejoin watchdog (toolkit/consumer/rejoin.py) and when the consumer last had no partition left.
        self._watchdog = watchdog
        self._unassigned_since: float | None = None
        self._skipped: set[TP] = set()  # partitions with a batch librdkafka skipped since their last record
        self._epoch = 0  # the current consumer's number (callbacks of a replaced one are ignored)
        self._retiring: Consumer | None = None  # the consumer being (or last) replaced
        self._replacing: tuple[threading.Thread, float] | None = None  # its closing thread, since when
        self._said_waiting = False
        self._gave_up = False  # the replaced consumer never closed: the consumer stopped, no new one
        self.recreated = 0  # consumers recreated by the watchdog

    # -- called from the event loop ------------------------------------------------------------------
    def start(self) -> None:
        self.consumer = self._new_consumer()
        self._thread.start()

    def _new_consumer(self) -> Consumer:
        self._epoch += 1
        epoch = self._epoch

        def on_commit(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
            if epoch == self._epoch:  # (a replaced consumer's late answers are not this one's)
                self._on_commit(err, partitions)

        config = dict(self._config, on_commit=on_commit)
        for name in ("error_cb", "throttle_cb", "stats_cb"):  # a user's (kafka_config) runs inside consume()
            if callable(config.get(name)):
                config[name] = _never_raising(config[name], name)
        if self._observers:  # librdkafka's statistics give each partition's lag (log end - committed)
            config.setdefault("statistics.interval.ms", max(100, int(self._lag_interval_s * 1000)))
            config["stats_cb"] = self._statistics(config.get("stats_cb"), epoch)
        consumer = Consumer(config)
        consumer.subscribe(
            self._topics,
            on_assign=self._guarded(self._assigned),
            on_revoke=self._guarded(self._revoked),
            on_lost=self._guarded(self._lost),
        )
        self._unassigned_since = time.monotonic()
        return consumer

    def commit(self, positions: list[Position], *, sync: bool = False) -> Future[None]:
        """Store and commit ``positions``; those of an earlier assignment are skipped."""
        done: Future[None] = Future()
        self._commands.put(_Commit(positions, sync, done))
        return done

    def take_commit_failure(self) -> bool:
        with self._commit_failed_lock:
            failed, self._commit_failed = self._commit_failed, False
        return failed

    def pause(self, assignments: list[Assignment]) -> None:
        """Pause partitions; one revoked (or re-assigned) since is skipped."""
        self._commands.put(_Pause(assignments))

    def resume(self, assignments: list[Assignment]) -> None:
        """Resume partitions; stale generations are skipped, as for pause()."""
        self._commands.put(_Resume(assignments))

    def stop_fetching(self) -> None:
        self._fetching.clear()

    def close(self) -> Future[None]:
        """Close the consumer (rebalance callbacks still reach the loop); resolves when the thread ends."""
        done: Future[None] = Future()
        self._commands.put(_Close(done))
        return done

    # -- the thread ----------------------------------------------------------------------------------
    def _failed_commit(self) -> None:
        with self._commit_failed_lock:
            self._commit_failed = True

    def _run(self) -> None:
        try:
            self._fetch_loop()
        except Exception as exc:  # never die silently: the loop would wait forever for our commands
            log.exception("the poll thread failed; closing the consumer")
            self._closed.set()
            reason = f"the Kafka poll thread failed: {type(exc).__name__}: {exc}"
            try:  # the consumer stops (nothing more is fetched or committed) instead of idling forever
                self._loop.call_soon_threadsafe(self._events.on_fatal, reason)
            except RuntimeError:  # the loop is closed already
                pass
            while True:  # answer close() so shutdown completes
                command = self._commands.get()
                done = getattr(command, "done", None)
                if done is not None and not done.done():
                    done.set_result(None)
                if isinstance(command, _Close):
                    return

    def _fetch_loop(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        in_flight = self._events.in_flight
        while True:
            self.last_poll = time.monotonic()
            if self._run_commands():
                return
            if not self._fetching.is_set():
                time.sleep(0.02)
                continue
            if self._replacing is not None:  # the rejoin watchdog's new consumer, once the old one is closed
                replaced = self._replaced()  # (not while stopping: fetching is off, handled above)
                if replaced is None:
                    time.sleep(0.02)
                else:
                    consumer = replaced
                continue
            if self._unassigned_since is not None and self._watchdog is not None:
                stuck = self._watchdog.check(self._unassigned_since, consumer.memberid)
                if stuck:
                    self._recreate(consumer, stuck)
                    continue
            free = self._max_in_flight - in_flight() - self._handed_over
            if self._hold(free):
                continue
            self._apply_window(free)
            try:
                batch = self._fetch(consumer, max(1, min(self._max_poll_records, free)))
            except KafkaException as exc:
                # confluent-kafka drops the records it had collected when consume() fails (a callback raised,
                # or an internal error), and librdkafka's position is past them: fetching on would hand out
                # later records, whose commit would pass the lost ones. Stop; a restart reads from the commit.
                self._fetching.clear()
                log.error("consume failed, records fetched with it are lost to this consumer: %s", exc)
                self._loop.call_soon_threadsafe(
                    self._events.on_fatal,
                    f"the Kafka client failed while fetching ({exc}); stopped so that no record is skipped: "
                    "a restart reads on from the last commit",
                )
                continue
            except RuntimeError:  # closed under us
                return
            if batch:
                records, ends = self._sort(batch)
                if records or ends:
                    with self._handover_lock:
                        self._handed_over += len(records)
                    self._loop.call_soon_threadsafe(self._hand_over, records, ends)

    def _recreate(self, old: Consumer, reason: str) -> None:
        """Start replacing ``old``: it is closed on a thread of its own (librdkafka may take its time leaving a
        group it is not really in) while this thread goes on serving the loop's commands; :meth:`_replaced`
        subscribes the new consumer. ``old`` has no partition, so nothing is committed or released; its
        rebalance callbacks from now on (served by its close) are ignored (:meth:`_retired`)."""
        log.warning(
            "the Kafka consumer is not a member of group %s and not getting back in (%s) while the broker "
            "answers: closing it and subscribing a new one (nothing was committed meanwhile)",
            self._config.get("group.id"),
            reason,
        )
        self._retiring = old
        self._epoch += 1  # (its late statistics and commit answers are ignored from now on)
        self._async_commits.clear()  # (their answers would never come)
        self._skipped.clear()
        closer = threading.Thread(target=_close_quietly, args=(old,), name="epistle-poll-close", daemon=True)
        self._replacing = (closer, time.monotonic())
        closer.start()

    def _replaced(self) -> Consumer | None:
        """The new consumer once the old one is closed; None while it is still closing. Without static
        membership the new one starts after ``RECREATE_CLOSE_WAIT_S`` whatever the old one does; with a
        ``group.instance.id`` only once the old one is gone (two live consumers with one instance id fence
        each other, and the fenced one would stop the whole consumer)."""
        assert self._replacing is not None
        if self._gave_up:  # (stopped: no new consumer, even once the old one is closed)
            return None
        closer, started = self._replacing
        if closer.is_alive():
            waited = time.monotonic() - started
            if waited < RECREATE_CLOSE_WAIT_S:
                return None
            if self._config.get("group.instance.id"):
                if waited >= RECREATE_STATIC_GIVE_UP_S:
                    self._gave_up = True
                    self._fetching.clear()
                    self._loop.call_soon_threadsafe(
                        self._events.on_fatal,
                        f"the Kafka consumer replaced by the rejoin watchdog did not close within "
                        f"{RECREATE_STATIC_GIVE_UP_S:.0f} s, and its group.instance.id cannot be used by a new one "
                        "meanwhile: stopped (a restarted process joins with it)",
                    )
                    return None
                if not self._said_waiting:
                    self._said_waiting = True
                    log.warning(
                        "the replaced consumer has not closed within %.0f s; the new one waits for it "
                        "(group.instance.id %s cannot be used by two consumers at once)",
                        RECREATE_CLOSE_WAIT_S,
                        self._config.get("group.instance.id"),
                    )
                return None
            log.warning(
                "the replaced consumer has not closed within %.0f s; it is left to close on its own",
                RECREATE_CLOSE_WAIT_S,
            )
        self._replacing = None
        self._said_waiting = False
        self._window_paused = False  # (nothing was assigned: nothing is paused in the new consumer)
        self._full_since = None
        self.lag = {}
        self.consumer = consumer = self._new_consumer()
        self.recreated += 1
        assert self._watchdog is not None
        self._watchdog.recreated()
        self._tell_observers("on_recreated")
        return consumer

    def _guarded(self, callback: Any) -> Any:
        """A rebalance callback that never raises into consume() (confluent-kafka would drop the records that
        call fetched): a failure of ours stops the consumer instead, before anything later is handed out."""

        def guarded(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            try:
                callback(consumer, partitions)
            except Exception as exc:
                log.exception("a rebalance callback failed")
                self._fetching.clear()
                try:
                    self._loop.call_soon_threadsafe(
                        self._events.on_fatal, f"internal error in a rebalance callback: {type(exc).__name__}: {exc}"
                    )
                except RuntimeError:  # the loop is closed already: nothing is left to stop
                    pass

        return guarded

    def _retired(self, consumer: Consumer) -> bool:
        """A rebalance callback of a consumer the watchdog is replacing or replaced (served while it closes,
        on the closing thread)."""
        return consumer is self._retiring or consumer is not self.consumer

    def _sort(self, batch: list[Any]) -> tuple[list[Any], list[End]]:
        """Records apart from errors: partition ends (those not followed by a record of the partition, with
        the offset after the end: librdkafka's position, past transaction markers), fatal errors (reported to
        the engine), and the rest (logged: librdkafka retries them)."""
        skipped = self._skipped
        if not any(map(_ERROR, batch)):  # (a loop in C: this runs for every batch)
            if skipped:  # a record after a skipped batch: the commit passes the skip anyway
                skipped.difference_update((msg.topic(), msg.partition()) for msg in batch)
            return batch, []
        records: list[Any] = []
        ends: dict[TP, int] = {}
        for msg in batch:
            err = msg.error()
            if err is None:
                tp = (msg.topic(), msg.partition())
                ends.pop(tp, None)
                skipped.discard(tp)
                records.append(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                ends[(msg.topic(), msg.partition())] = msg.offset()
            elif err.code() in _DENIED:  # retrying cannot help: an ACL is missing
                self._loop.call_soon_threadsafe(self._events.on_fatal, denied_reason(err, msg.topic(), self._config))
            elif err.fatal() or err.code() == KafkaError._FATAL:
                # librdkafka reports a fatal consumer error (e.g. fenced by another member with the same
                # group.instance.id) as _FATAL on the message, and confluent-kafka builds that error with
                # fatal() False: the consumer is dead either way, so stop rather than wait for retries.
                self._loop.call_soon_threadsafe(self._events.on_fatal, fatal_reason(err, self._config))
            elif err.code() in _SKIPPED:
                # librdkafka skips a batch it cannot read (CRC mismatch, unknown compression) and fetches on
                # after it: those records are never handed out, and no dead letter can carry them (their
                # bytes are not readable). Said loudly; and the partition's end must not move the commit past
                # them on its own (a later record still does: the skip is librdkafka's).
                tp = (msg.topic(), msg.partition())
                self._skipped.add(tp)
                ends.pop(tp, None)
                log.error(
                    "%s[%d]: librdkafka skipped a record batch it cannot read at offset %d (%s); its records "
                    "are not handled and cannot be dead-lettered: check the producer and the broker's log",
                    tp[0],
                    tp[1],
                    msg.offset(),
                    err.str(),
                    extra={"topic": tp[0], "partition": tp[1]},
                )
            else:
                log.warning("fetch error (librdkafka retries): %s", err.str(), extra={"topic": msg.topic()})
        return records, [
            (topic, partition) if (topic, partition) in skipped else (topic, partition, offset)
            for (topic, partition), offset in ends.items()
        ]

    @staticmethod
    def _fetch(consumer: Any, limit: int) -> list[Any]:
        """Up to ``limit`` records, returned as soon as any are there.

        librdkafka's consume(n, timeout) waits until n records or the timeout: under a light load that is
        the whole timeout (100 ms at 2,000 msg/s with n=500). So take what is buffered, else wait for one
        record and add what arrived with it.
        """
        batch: list[Any] = consumer.consume(num_messages=limit, timeout=0)
        if batch:
            return batch
        batch = consumer.consume(num_messages=1, timeout=0.1)
        if batch and limit > 1:
            batch.extend(consumer.consume(num_messages=limit - 1, timeout=0))
        return batch

    def _hand_over(self, records: list[Any], ends: list[End]) -> None:  # on the loop
        with self._handover_lock:
            self._handed_over -= len(records)
        self._events.on_batch(records, ends)

    def _hold(self, free: int) -> bool:
        """While the window is full, first just stop fetching for up to ``WINDOW_HOLD_S``: librdkafka's
        prefetch queue is bounded (``queued.max.messages.kbytes``) and stays filled, so work resumes
        without a round trip. Pausing the partitions instead drops that queue, and every resume then
        waits for a new fetch: measured on 3 partitions, 24k msg/s with pause/resume at each full window
        against 41k without. Past the hold, the partitions are paused and consume() keeps serving the
        group (rebalance callbacks, max.poll.interval.ms). True: skip this round."""
        if self._full_since is None:
            if free > 0:
                return False
            self._full_since = time.monotonic()
        # Once held, wait for room for a whole batch: refilling one record at a time would hand the loop
        # many tiny batches (and take the GIL from it each time).
        elif free >= min(self._max_poll_records, self._max_in_flight // 5) or free >= self._max_in_flight:
            self._full_since = None
            return False
        if self._window_paused or time.monotonic() - self._full_since >= WINDOW_HOLD_S:
            return False
        time.sleep(0.002)
        return True

    def _apply_window(self, free: int) -> None:
        """Pause every partition while the in-flight window stays full; resume below 80 %.

        librdkafka drops what it prefetched for a paused partition and resumes from the last record it
        returned, so nothing is skipped and memory stays bounded."""
        consumer = self.consumer
        assert consumer is not None
        if not self._window_paused and free <= 0:
            consumer.pause(consumer.assignment())
            self._window_paused = True
            log.debug("in-flight window full: fetching paused")
        elif self._window_paused and free >= self._max_in_flight * 0.2:
            resume = [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in self._paused_by_loop]
            consumer.resume(resume)
            self._window_paused = False
            log.debug("in-flight window: fetching resumed")

    def _current(self, assignments: list[Assignment]) -> list[TP]:
        # Only the assignment the loop meant: a command queued before a revoke and run after it (or after
        # the re-assignment) would leave a partition paused that the loop's new state for it says is not,
        # and nothing would ever resume it.
        return [
            (a.topic, a.partition) for a in assignments if self._generation.get((a.topic, a.partition)) == a.generation
        ]

    def _run_commands(self) -> bool:
        consumer = self.consumer
        assert consumer is not None
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return False
            done = getattr(command, "done", None)
            try:
                if isinstance(command, _Commit):
                    current = [
                        TopicPartition(p.topic, p.partition, p.offset)
                        for p in command.positions
                        if self._generation.get((p.topic, p.partition)) == p.generation
                    ]
                    self._store_commit(current, command.sync)
                elif isinstance(command, _Pause):
                    tps = self._current(command.assignments)
                    self._paused_by_loop.update(tps)
                    if tps:
                        consumer.pause([TopicPartition(t, p) for t, p in tps])
                elif isinstance(command, _Resume):
                    tps = self._current(command.assignments)
                    self._paused_by_loop.difference_update(tps)
                    if tps and not self._window_paused:
                        consumer.resume([TopicPartition(t, p) for t, p in tps])
                else:
                    try:
                        if self._replacing is None:  # (else the consumer is closing already, no new one started)
                            consumer.close()
                    finally:
                        self._closed.set()
                        command.done.set_result(None)
                    return True
                if done is not None:
                    done.set_result(None)
            except Exception as exc:  # one failed command must not kill the poll thread
                log.warning("consumer %s failed: %s", type(command).__name__.strip("_").lower(), exc)
                if done is not None and not done.done():
                    done.set_exception(exc)

    def _store_commit(self, offsets: list[TopicPartition], sync: bool) -> None:
        consumer = self.consumer
        assert consumer is not None
        if not offsets:
            return
        try:
            consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            log.warning("store_offsets failed: %s", exc)
        started = time.monotonic()
        if not sync and self._observers:  # answered by _on_commit (librdkafka calls it for async commits only)
            self._async_commits.append(started)
        try:
            if sync:
                result = consumer.commit(offsets=offsets, asynchronous=False)
            else:
                consumer.commit(offsets=offsets, asynchronous=True)
                result = None
        except KafkaException as exc:
            if not sync and self._async_commits:
                self._async_commits.pop()
            self._failed_commit()
            self._observe_commit(started, ok=False)
            log.warning("commit failed (retried at the next interval): %s", exc)
            return
        if sync and result:
            failed = [tp for tp in result if tp.error]
            self._observe_commit(started, ok=not failed)
            if failed:
                self._failed_commit()
                log.warning("commit failed for %s", failed)
            else:
                log.debug("committed %s", [(tp.topic, tp.partition, tp.offset) for tp in result])

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = err is not None and err.code() != KafkaError._NO_OFFSET
        if self._async_commits:
            self._observe_commit(self._async_commits.popleft(), ok=not failed)
        if failed:
            self._failed_commit()
            log.warning("asynchronous commit failed: %s", err)

    def _observe_commit(self, started: float, ok: bool) -> None:
        self._tell_observers("on_commit", time.monotonic() - started, ok)

    def _tell_observers(self, event: str, *args: Any) -> None:
        """Call ``event`` on every observer that has it (``on_recreated`` is optional)."""
        for observer in self._observers:
            told = getattr(observer, event, None)
            try:
                if told is not None:
                    told(*args)
            except Exception:  # noqa: BLE001 - metrics must not stop the poll thread
                log.exception("%s observer failed", event)

    def _statistics(self, user_callback: Any, epoch: int | None = None) -> Any:
        """librdkafka's statistics callback (on this thread, inside consume()): keeps each assigned
        partition's ``consumer_lag`` (-1 until the group committed an offset for it: left out). ``epoch``: the
        consumer's (a replaced consumer's late report is not used); a user's callback comes wrapped by
        :func:`_never_raising`."""

        def on_statistics(report: str) -> None:
            if epoch is not None and epoch != self._epoch:
                return
            try:
                topics = json.loads(report).get("topics", {})
                self.lag = {
                    (topic, int(number)): int(part["consumer_lag"])
                    for topic, stats in topics.items()
                    for number, part in stats.get("partitions", {}).items()
                    if part.get("desired") and int(number) >= 0 and part.get("consumer_lag", -1) >= 0
                }
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("unreadable librdkafka statistics: %s", exc)
            if user_callback is not None:
                user_callback(report)  # (wrapped by _never_raising)

        return on_statistics

    def fetch_state(self) -> FetchState:
        return FetchState(
            self._thread.is_alive() and not self._closed.is_set(),
            self.last_poll,
            self._window_paused or self._full_since is not None,
        )

    # -- rebalance callbacks (run inside consume(), on this thread) ------------------------------------
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # librdkafka keeps a partition's pause across revoke (or loss) and re-assignment: a partition
        # paused when it was given up would come back paused, and nothing here would ever resume it.
        # _revoked resumes what it gives up; resuming here too covers a pause from any older assignment.
        # Both are no-ops for a partition that is not paused (or not known yet). A new assignment starts
        # unpaused in the loop too, so no pause by the loop may outlive it here.
        if self._retired(consumer):
            return
        self._paused_by_loop.difference_update((tp.topic, tp.partition) for tp in partitions)
        _resume(consumer, partitions)
        if self._window_paused:  # end the window pause for the partitions kept too, or they stay paused
            _resume(
                consumer, [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in self._paused_by_loop]
            )
            self._window_paused = False
            log.debug("in-flight window: fetching resumed (partitions assigned)")
        assigned = []
        for tp in partitions:
            self._next_generation += 1
            self._generation[(tp.topic, tp.partition)] = self._next_generation
            assigned.append(Assignment(tp.topic, tp.partition, self._next_generation))
        if self._generation:
            self._unassigned_since = None
            if self._watchdog is not None:
                self._watchdog.assigned()
        log.info("partitions assigned: %s", [(a.topic, a.partition) for a in assigned])
        if assigned:
            self._loop.call_soon_threadsafe(self._events.on_assign, assigned)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition], lost: bool = False) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        if not tps or self._retired(consumer):
            return
        log.info("partitions %s: %s", "lost" if lost else "revoked", tps)
        try:
            drained = asyncio.run_coroutine_threadsafe(_awaited(self._events.release(tps, lost)), self._loop)
            positions = drained.result(timeout=self._drain_timeout_s + 5)
        except Exception as exc:
            log.error("draining revoked partitions failed: %s", exc)
            positions = []
        if not lost:
            self._store_commit([TopicPartition(p.topic, p.partition, p.offset) for p in positions], sync=True)
        for tp in tps:
            self._generation.pop(tp, None)
            self._paused_by_loop.discard(tp)
            self._skipped.discard(tp)
        if not self._generation and self._unassigned_since is None:
            self._unassigned_since = time.monotonic()
        _resume(consumer, partitions)  # librdkafka would keep the pause for when they are assigned again

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked(consumer, partitions, lost=True)


def _never_raising(callback: Any, name: str) -> Any:
    """A librdkafka callback given in ``kafka_config`` (``error_cb``, ``stats_cb``, ...) that logs instead of
    raising: an exception inside consume() makes confluent-kafka drop the records that call fetched."""

    def logged(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - see above
            log.exception("the %s given in kafka_config failed", name)

    return logged


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except Exception as exc:  # noqa: BLE001 - a replaced consumer: nothing depends on its closing well
        log.warning("closing the replaced consumer failed: %s", exc)


async def _awaited(awaitable: Awaitable[list[Position]]) -> list[Position]:
    return await awaitable


_DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}
_SKIPPED = {KafkaError._BAD_MSG, KafkaError._BAD_COMPRESSION}  # librdkafka moves past the batch


def denied_reason(err: KafkaError, topic: str | None, config: dict[str, Any]) -> str:
    """A consumer error for a missing ACL (seen while consuming: the start-up check does not cover the
    group's ACL), with the grant that fixes it."""
    user = config.get("sasl.username")
    principal = f"User:{user}" if user else "the client's principal"
    if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
        grant = f"READ on group {config.get('group.id')!r}"
    else:
        grant = f"READ on topic {topic!r}" if topic else "READ on the topics it consumes"
    return f"the broker denied access ({_scrub(err.str() or err.name(), config)}): grant {principal} {grant}"


def fatal_reason(err: KafkaError, config: dict[str, Any]) -> str:
    """What a fatal consumer error means, with the fix when it is a known one."""
    text = err.str() or ""
    hint = ""
    if err.code() == KafkaError.FENCED_INSTANCE_ID or "group.instance.id" in text or "fenced" in text.lower():
        hint = (
            f"; another process joined with group.instance.id {config.get('group.instance.id')!r}: give "
            "each process of the group its own KAFKA_GROUP_INSTANCE_ID"
        )
    return f"fatal Kafka error: {text}{hint}"


def _resume(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    """Resume inside a rebalance callback: an exception there would surface from the next consume()."""
    if not partitions:
        return
    try:
        consumer.resume(partitions)
    except KafkaException as exc:
        log.warning("resuming %s failed: %s", [(tp.topic, tp.partition) for tp in partitions], exc)


class KafkaTransport:
    """The :class:`~toolkit.consumer.transport.Transport` over librdkafka: a :class:`PollThread` owning the
    consumer, a :class:`DeadLetterSender` for dead letters.

    Args:
        consumer_config: the librdkafka consumer's settings (``group.id`` and ``bootstrap.servers``
            included; ours are set by :class:`~toolkit.consumer.runtime.KafkaConsumer`).
        dead_letter_config: the dead-letter producer's extra settings (over ``consumer_config``'s
            connection settings).
        rejoin_timeout_s: how long the consumer may have no partition before the broker is asked whether it
            is stuck out of its group (toolkit/consumer/rejoin.py; at least one session timeout); None: three
            session timeouts, at least 30 s; 0: never asked.
    """

    def __init__(
        self,
        consumer_config: dict[str, Any],
        *,
        client_config: dict[str, Any],
        dead_letter_config: dict[str, Any] | None = None,
        drain_timeout_s: float = 30.0,
        dead_letter_suffix: str | None = None,
        rejoin_timeout_s: float | None = None,
    ) -> None:
        self.consumer_config = consumer_config
        self._rejoin_timeout_s = after_s(consumer_config, rejoin_timeout_s)
        # connect() checks WRITE on each topic's dead-letter topic (None: no dead letters, not checked)
        self.dead_letter_suffix = dead_letter_suffix
        self._client_config = client_config
        self._dead_letter_config = dict(dead_letter_config or {})
        self._drain_timeout_s = drain_timeout_s
        self._poller: PollThread | None = None
        self._observers: list[TransportObserver] = []
        self._lag_interval_s = 5.0

    def connect(self, timeout_s: float, topics: Sequence[str] = ()) -> set[str]:
        # The consumer's own settings (SASL/SSL may be given only in kafka_config); librdkafka ignores
        # consumer-only properties in an admin client.
        admin_config = {k: v for k, v in self.consumer_config.items() if k not in ("logger", "on_commit")}
        admin, metadata = connect_admin(admin_config, timeout_s)
        if topics:
            check_access(admin, admin_config, topics, self.dead_letter_suffix, timeout_s)
        return set(metadata.topics)

    def start(
        self,
        topics: list[str],
        group_id: str,
        events: TransportEvents,
        loop: asyncio.AbstractEventLoop,
        *,
        max_poll_records: int,
        max_in_flight: int,
        dlq_max_message_bytes: int,
    ) -> DeadLetterSender:
        # group_id is in consumer_config already (``group.id``)
        sender = None
        try:
            sender = DeadLetterSender(
                self._client_config,
                loop,
                producer_overrides=self._dead_letter_config,
                max_message_bytes=dlq_max_message_bytes,
            )
            poller = PollThread(
                self.consumer_config,
                topics,
                loop,
                events,
                max_poll_records=max_poll_records,
                max_in_flight=max_in_flight,
                drain_timeout_s=self._drain_timeout_s,
                observers=self._observers,
                lag_interval_s=self._lag_interval_s,
                watchdog=(
                    RejoinWatchdog(group_describer(self._client_config, topics), group_id, self._rejoin_timeout_s)
                    if self._rejoin_timeout_s > 0
                    else None
                ),
            )
            poller.start()
        except Exception as exc:  # librdkafka refused the configuration
            if sender is not None:
                sender.close(timeout_s=0)
            raise ConfigError(f"the Kafka client could not be created: {exc}", setting="kafka_config") from None
        self._poller = poller
        return sender

    def _started(self) -> PollThread:
        if self._poller is None:
            raise RuntimeError("the transport is not started")
        return self._poller

    def commit(self, positions: list[Position], *, sync: bool = False) -> Future[None]:
        return self._started().commit(positions, sync=sync)

    def take_commit_failure(self) -> bool:
        return self._started().take_commit_failure()

    def pause(self, assignments: list[Assignment]) -> None:
        self._started().pause(assignments)

    def resume(self, assignments: list[Assignment]) -> None:
        self._started().resume(assignments)

    def stop_fetching(self) -> None:
        self._started().stop_fetching()

    def close(self) -> Future[None]:
        return self._started().close()

    # -- ObservableTransport ---------------------------------------------------------------------------
    def add_observer(self, observer: TransportObserver, *, lag_interval_s: float = 5.0) -> None:
        if observer not in self._observers:  # (a consumer started again with the same transport)
            self._observers.append(observer)
        self._lag_interval_s = lag_interval_s

    def fetch_state(self) -> FetchState:
        if self._poller is None:
            return FetchState(False, None, False)
        return self._poller.fetch_state()

    def lag(self) -> dict[tuple[str, int], int]:
        return {} if self._poller is None else self._poller.lag


class DeadLetterSender:
    """Produces dead letters (acks=all, idempotent) and creates their topics when missing.

    A dead letter sent again after a failure goes alone (a producer that puts one record in each batch):
    the broker refuses a whole batch when it is over the topic's ``max.message.bytes``, so a refused
    dead letter batched with others would make theirs fail with it, partition after partition.

    ``max_message_bytes`` is the producers' ``message.max.bytes`` (unless ``producer_overrides`` sets it)
    and the ``max.message.bytes`` of the topics created here; ``self.max_message_bytes`` is the one in use.
    """

    def __init__(
        self,
        config: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        *,
        producer_overrides: dict[str, Any] | None = None,
        max_message_bytes: int = DLQ_MAX_MESSAGE_BYTES,
    ) -> None:
        self._loop = loop
        self._admin_config = dict(config)
        self._producer_config = {
            "logger": kafka_logger(),
            **config,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.max.bytes": max_message_bytes,
            "delivery.timeout.ms": 30_000,
            **(producer_overrides or {}),
        }
        self.max_message_bytes = int(self._producer_config["message.max.bytes"])
        self._producer = Producer(self._producer_config)
        self._alone: Producer | None = None  # made at the first resend
        self._admin: AdminClient | None = None
        self._known_topics: set[str] = set()
        self._running = True
        self._thread = threading.Thread(target=self._poll, name="epistle-dlq-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while self._running:
            alone = self._alone
            if alone is None or not len(alone):  # nothing resent: poll() returns at once on a delivery report
                self._producer.poll(0.1)
            else:  # a resend in flight: serve both producers in turn
                self._producer.poll(0.02)
                alone.poll(0.02)

    def knows(self, topic: str) -> bool:
        """True once ``topic`` is known to exist (created or found)."""
        return topic in self._known_topics

    def ensure_topic(self, topic: str, partitions: int = -1) -> None:
        """Create ``topic`` unless it exists (blocking: call it in an executor).

        Raises:
            BrokerUnavailable: the cluster could not be asked or refused for another reason than "exists".
        """
        if topic in self._known_topics:
            return
        if self._admin is None:
            self._admin = AdminClient(self._admin_config)
        # Create first: asking for the metadata of one missing topic would let the broker auto-create it
        # with its defaults (auto.create.topics.enable), and a ~1 MB record's dead letter would not fit.
        new = NewTopic(
            topic,
            num_partitions=partitions,
            replication_factor=-1,
            config={"max.message.bytes": str(self.max_message_bytes)},
        )
        try:
            self._admin.create_topics([new], operation_timeout=10)[topic].result(timeout=15)
            log.info("created dead-letter topic %s", topic)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                try:  # not allowed to create topics? fine if it exists
                    exists = topic in self._admin.list_topics(timeout=10).topics
                except KafkaException:
                    exists = False
                if not exists:
                    raise broker_error(exc, f"creating dead-letter topic {topic}") from None
        self._known_topics.add(topic)

    def send(self, record: DeadLetterRecord, *, alone: bool = False) -> asyncio.Future:
        """Produce ``record`` (in a batch of its own with ``alone``, for a resend); the returned future
        resolves when the broker acknowledged it.

        The future fails with BrokerUnavailable when the record could not be delivered.
        """
        future: asyncio.Future = self._loop.create_future()

        def delivered(err: KafkaError | None, msg: Any) -> None:
            if err is None:
                self._loop.call_soon_threadsafe(_resolve, future, None)
            else:
                failure = BrokerUnavailable(
                    f"dead letter to {record.topic} not delivered: {err}"
                    + self._too_large(err, record, "the topic's max.message.bytes")
                )
                self._loop.call_soon_threadsafe(_resolve, future, failure)

        try:
            producer = self._producer
            if alone:
                if self._alone is None:  # made here, so that failing to make it fails this send only
                    self._alone = Producer({**self._producer_config, "linger.ms": 0, "batch.num.messages": 1})
                producer = self._alone
            headers: list[tuple[str, str | bytes | None]] = list(record.headers)
            producer.produce(record.topic, value=record.value, key=record.key, headers=headers, on_delivery=delivered)
        except Exception as exc:  # BufferError, KafkaException (e.g. too large); never lose the failure
            failure = broker_error(exc, f"producing dead letter to {record.topic}")
            err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
            hint = self._too_large(
                err,
                record,
                f"EPISTLE_DLQ_MAX_MESSAGE_BYTES (now {self.max_message_bytes}) and the topic's max.message.bytes",
            )
            future.set_exception(BrokerUnavailable(f"{failure}{hint}") if hint else failure)
        return future

    def _too_large(self, err: Any, record: DeadLetterRecord, what: str) -> str:
        """For a dead letter refused as too large: its size and what to raise, for the log."""
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE):
            return ""
        size = record_size(record)
        return f" (the dead letter is {size} bytes: raise {what} to at least {size}; its partition waits)"

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush and stop; returns the number of dead letters still undelivered."""
        remaining = self._producer.flush(timeout_s)
        if self._alone is not None:
            remaining += self._alone.flush(timeout_s)
        self._running = False
        self._thread.join(timeout=2)
        return remaining


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def replay_dead_letter(
    config: dict[str, Any],
    value: bytes,
    key: bytes | None = None,
    headers: list[tuple[str, bytes | None]] | None = None,
    *,
    topic: str | None = None,
    keep_timestamp: bool = True,
    timeout_s: float = 30.0,
) -> Any:
    """Produce the original record of a dead letter again, byte for byte (value, key, headers with their
    null values and earlier ``kafka_dlt-*`` ones, and with ``keep_timestamp`` the timestamp: one that was
    missing or 0 becomes the time of the replay), to its source topic or to ``topic``; returns the
    :class:`~toolkit.consumer.deadletter.OriginalRecord`.

    Raises:
        InvalidArgument (a ValueError): ``value`` is not one of our dead-letter values, or another
            argument is unusable. ConfigError: librdkafka refused ``config``.
        BrokerUnavailable: the record was not acknowledged within ``timeout_s``.
    """
    from toolkit._args import replay_options
    from toolkit.consumer.deadletter import original_record

    replay_options(config, topic, keep_timestamp, timeout_s)
    original = original_record(value, key, headers)
    try:
        producer = Producer(
            {
                "logger": kafka_logger(),
                **config,
                "acks": "all",
                "enable.idempotence": True,
                "message.max.bytes": DLQ_MAX_MESSAGE_BYTES,
            }
        )
    except (KafkaException, TypeError, ValueError) as exc:
        raise ConfigError(f"config: the Kafka client refused it: {exc}", setting="config") from None
    failures: list[Any] = []
    kwargs: dict[str, Any] = {
        "value": original.value,
        "key": original.key,
        "headers": original.headers,
        "on_delivery": lambda err, _msg: _note(failures, err),
    }
    if keep_timestamp and original.timestamp is not None and original.timestamp > 0:  # 0 means "now" here
        kwargs["timestamp"] = original.timestamp
    try:
        producer.produce(topic or original.topic, **kwargs)
    except (BufferError, KafkaException) as exc:
        raise broker_error(exc, "replaying a dead letter") from None
    if producer.flush(timeout_s) or failures:
        raise BrokerUnavailable(f"replay to {topic or original.topic} not acknowledged: {failures[:1]}")
    return original


def _note(failures: list[Any], err: Any) -> None:
    if err is not None:
        failures.append(err)
