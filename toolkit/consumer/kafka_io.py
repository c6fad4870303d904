"""The only code that talks to librdkafka: the poll thread that owns the consumer, and the dead-letter
producer. librdkafka errors are translated here, once.

The poll thread is the consumer's single owner: it fetches batches with ``consume(num_messages=...)`` and
hands them to the event loop, serves rebalance callbacks, and runs the commands the loop queues (store and
commit offsets, pause, resume) between fetches, so no other thread ever touches the consumer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from toolkit.consumer.deadletter import DeadLetterRecord, record_size
from toolkit.consumer.kafka_log import kafka_logger
from toolkit.errors import BrokerUnavailable, ConfigError

log = logging.getLogger("toolkit.consumer")

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
        ConfigError: librdkafka refused ``config``.
    """
    # log_level 0: librdkafka's retry chatter ("Connect ... failed") would bury the one error raised here
    try:
        admin = AdminClient({**config, "log_level": 0})
    except (KafkaException, TypeError, ValueError) as exc:
        raise ConfigError(f"the Kafka client could not be created: {exc}", setting="kafka_config") from None
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise broker_error(exc, "asking for the cluster's metadata") from None


# How long a full in-flight window only stops fetching before the partitions are paused (see _hold).
WINDOW_HOLD_S = 1.0


class PollThread:
    """Owns the :class:`confluent_kafka.Consumer`. Every public method is safe to call from the loop."""

    def __init__(self, config: dict[str, Any], topics: list[str], loop: asyncio.AbstractEventLoop, *,
                 max_poll_records: int, on_batch: Callable[[list[Any]], None],
                 on_assign: Callable[[list[tuple[str, int, int]]], None],
                 release: Callable[[list[TP], bool], Awaitable[list[TopicPartition]]],
                 in_flight: Callable[[], int], max_in_flight: int, drain_timeout_s: float = 60.0) -> None:
        self._config = config
        self._topics = topics
        self._loop = loop
        self._max_poll_records = max_poll_records
        self._on_batch = on_batch
        self._on_assign_loop = on_assign
        self._release = release
        self._drain_timeout_s = drain_timeout_s
        self._in_flight = in_flight
        self._max_in_flight = max_in_flight
        self._handed_over = 0  # records passed to the loop and not yet dispatched there
        self._handover_lock = threading.Lock()
        self._window_paused = False
        self._full_since: float | None = None
        self._paused_by_loop: set[TP] = set()
        self._commands: queue.SimpleQueue[tuple[str, Any, Future | None]] = queue.SimpleQueue()
        self._generation: dict[TP, int] = {}
        self._next_generation = 0
        self._fetching = True
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epistle-poll", daemon=True)
        self.commit_failed = False
        self.consumer: Consumer | None = None

    # -- called from the event loop ------------------------------------------------------------------
    def start(self) -> None:
        config = dict(self._config, on_commit=self._on_commit)
        self.consumer = Consumer(config)
        self.consumer.subscribe(self._topics, on_assign=self._assigned, on_revoke=self._revoked,
                                on_lost=self._lost)
        self._thread.start()

    def store_and_commit(self, offsets: list[tuple[str, int, int, int]], *, sync: bool = False) -> Future:
        """Store and commit ``(topic, partition, offset, generation)``; stale generations are skipped."""
        done: Future = Future()
        self._commands.put(("commit", (offsets, sync), done))
        return done

    def pause(self, tps: list[tuple[str, int, int]]) -> None:
        """Pause ``(topic, partition, generation)``; a partition revoked (or re-assigned) since is skipped."""
        self._commands.put(("pause", tps, None))

    def resume(self, tps: list[tuple[str, int, int]]) -> None:
        """Resume ``(topic, partition, generation)``; stale generations are skipped, as for pause()."""
        self._commands.put(("resume", tps, None))

    def stop_fetching(self) -> None:
        self._fetching = False

    def close(self) -> Future:
        """Close the consumer (rebalance callbacks still reach the loop); resolves when the thread ends."""
        done: Future = Future()
        self._commands.put(("close", None, done))
        return done

    # -- the thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._fetch_loop()
        except Exception:  # never die silently: the loop would wait forever for our commands
            log.exception("the poll thread failed; closing the consumer")
            self._closed.set()
            while True:  # answer close() so shutdown completes
                name, _, done = self._commands.get()
                if done is not None and not done.done():
                    done.set_result(None)
                if name == "close":
                    return

    def _fetch_loop(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while True:
            if self._run_commands():
                return
            if not self._fetching:
                time.sleep(0.02)
                continue
            free = self._max_in_flight - self._in_flight() - self._handed_over
            if self._hold(free):
                continue
            self._apply_window(free)
            try:
                batch = self._fetch(consumer, max(1, min(self._max_poll_records, free)))
            except KafkaException as exc:
                log.error("consume failed: %s", exc)
                continue
            except RuntimeError:  # closed under us
                return
            if batch:
                with self._handover_lock:
                    self._handed_over += len(batch)
                self._loop.call_soon_threadsafe(self._hand_over, batch)

    @staticmethod
    def _fetch(consumer: Any, limit: int) -> list[Any]:
        """Up to ``limit`` records, returned as soon as any are there.

        librdkafka's consume(n, timeout) waits until n records or the timeout: under a light load that is
        the whole timeout (100 ms at 2,000 msg/s with n=500). So take what is buffered, else wait for one
        record and add what arrived with it.
        """
        batch = consumer.consume(num_messages=limit, timeout=0)
        if batch:
            return batch
        batch = consumer.consume(num_messages=1, timeout=0.1)
        if batch and limit > 1:
            batch.extend(consumer.consume(num_messages=limit - 1, timeout=0))
        return batch

    def _hand_over(self, batch: list[Any]) -> None:  # on the loop
        with self._handover_lock:
            self._handed_over -= len(batch)
        self._on_batch(batch)

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
            resume = [tp for tp in consumer.assignment()
                      if (tp.topic, tp.partition) not in self._paused_by_loop]
            consumer.resume(resume)
            self._window_paused = False
            log.debug("in-flight window: fetching resumed")

    def _run_commands(self) -> bool:
        consumer = self.consumer
        assert consumer is not None
        while True:
            try:
                name, arg, done = self._commands.get_nowait()
            except queue.Empty:
                return False
            try:
                if name == "commit":
                    self._commit(*arg)
                elif name in ("pause", "resume"):
                    # Only the assignment the loop meant: a command queued before a revoke and run after it
                    # (or after the re-assignment) would leave a partition paused that the loop's new
                    # state for it says is not, and nothing would ever resume it.
                    tps = [(t, p) for t, p, gen in arg if self._generation.get((t, p)) == gen]
                    if name == "pause":
                        self._paused_by_loop.update(tps)
                        consumer.pause([TopicPartition(t, p) for t, p in tps])
                    else:
                        self._paused_by_loop.difference_update(tps)
                        if not self._window_paused:
                            consumer.resume([TopicPartition(t, p) for t, p in tps])
                elif name == "close":
                    try:
                        consumer.close()
                    finally:
                        self._closed.set()
                        if done is not None:
                            done.set_result(None)
                    return True
                if done is not None:
                    done.set_result(None)
            except Exception as exc:  # one failed command must not kill the poll thread
                log.warning("consumer %s failed: %s", name, exc)
                if done is not None and not done.done():
                    done.set_exception(exc)

    def _commit(self, offsets: list[tuple[str, int, int, int]], sync: bool) -> None:
        current = [TopicPartition(t, p, o) for t, p, o, gen in offsets if self._generation.get((t, p)) == gen]
        self._store_commit(current, sync)

    def _store_commit(self, offsets: list[TopicPartition], sync: bool) -> None:
        consumer = self.consumer
        assert consumer is not None
        if not offsets:
            return
        try:
            consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            log.warning("store_offsets failed: %s", exc)
        try:
            result = consumer.commit(offsets=offsets, asynchronous=not sync)
        except KafkaException as exc:
            self.commit_failed = True
            log.warning("commit failed (retried at the next interval): %s", exc)
            return
        if sync and result:
            failed = [tp for tp in result if tp.error]
            if failed:
                self.commit_failed = True
                log.warning("commit failed for %s", failed)
            else:
                log.debug("committed %s", [(tp.topic, tp.partition, tp.offset) for tp in result])

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            self.commit_failed = True
            log.warning("asynchronous commit failed: %s", err)

    # -- rebalance callbacks (run inside consume(), on this thread) ------------------------------------
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # librdkafka keeps a partition's pause across revoke (or loss) and re-assignment: a partition
        # paused when it was given up would come back paused, and nothing here would ever resume it.
        # _revoked resumes what it gives up; resuming here too covers a pause from any older assignment.
        # Both are no-ops for a partition that is not paused (or not known yet). A new assignment starts
        # unpaused in the loop too, so no pause by the loop may outlive it here.
        self._paused_by_loop.difference_update((tp.topic, tp.partition) for tp in partitions)
        _resume(consumer, partitions)
        if self._window_paused:  # end the window pause for the partitions kept too, or they stay paused
            _resume(consumer, [tp for tp in consumer.assignment()
                               if (tp.topic, tp.partition) not in self._paused_by_loop])
            self._window_paused = False
            log.debug("in-flight window: fetching resumed (partitions assigned)")
        assigned = []
        for tp in partitions:
            self._next_generation += 1
            self._generation[(tp.topic, tp.partition)] = self._next_generation
            assigned.append((tp.topic, tp.partition, self._next_generation))
        log.info("partitions assigned: %s", [(t, p) for t, p, _ in assigned])
        if assigned:
            self._loop.call_soon_threadsafe(self._on_assign_loop, assigned)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition], lost: bool = False) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        if not tps:
            return
        log.info("partitions %s: %s", "lost" if lost else "revoked", tps)
        try:
            drained = asyncio.run_coroutine_threadsafe(self._release(tps, lost), self._loop)
            offsets = drained.result(timeout=self._drain_timeout_s + 5)
        except Exception as exc:
            log.error("draining revoked partitions failed: %s", exc)
            offsets = []
        if not lost:
            self._store_commit(offsets, sync=True)
        for tp in tps:
            self._generation.pop(tp, None)
            self._paused_by_loop.discard(tp)
        _resume(consumer, partitions)  # librdkafka would keep the pause for when they are assigned again

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked(consumer, partitions, lost=True)


def _resume(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    """Resume inside a rebalance callback: an exception there would surface from the next consume()."""
    if not partitions:
        return
    try:
        consumer.resume(partitions)
    except KafkaException as exc:
        log.warning("resuming %s failed: %s", [(tp.topic, tp.partition) for tp in partitions], exc)


class DeadLetterSender:
    """Produces dead letters (acks=all, idempotent) and creates their topics when missing.

    A dead letter sent again after a failure goes alone (a producer that puts one record in each batch):
    the broker refuses a whole batch when it is over the topic's ``max.message.bytes``, so a refused
    dead letter batched with others would make theirs fail with it, partition after partition.

    ``max_message_bytes`` is the producers' ``message.max.bytes`` (unless ``producer_overrides`` sets it)
    and the ``max.message.bytes`` of the topics created here; ``self.max_message_bytes`` is the one in use.
    """

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop, *,
                 producer_overrides: dict[str, Any] | None = None,
                 max_message_bytes: int = DLQ_MAX_MESSAGE_BYTES) -> None:
        self._loop = loop
        self._admin_config = dict(config)
        self._producer_config = {"logger": kafka_logger(), **config, "acks": "all", "enable.idempotence": True,
                                 "linger.ms": 5, "message.max.bytes": max_message_bytes,
                                 "delivery.timeout.ms": 30_000, **(producer_overrides or {})}
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
        new = NewTopic(topic, num_partitions=partitions, replication_factor=-1,
                       config={"max.message.bytes": str(self.max_message_bytes)})
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
                failure = BrokerUnavailable(f"dead letter to {record.topic} not delivered: {err}"
                                            + self._too_large(err, record, "the topic's max.message.bytes"))
                self._loop.call_soon_threadsafe(_resolve, future, failure)

        try:
            producer = self._producer
            if alone:
                if self._alone is None:  # made here, so that failing to make it fails this send only
                    self._alone = Producer({**self._producer_config, "linger.ms": 0, "batch.num.messages": 1})
                producer = self._alone
            producer.produce(record.topic, value=record.value, key=record.key, headers=record.headers,
                             on_delivery=delivered)
        except Exception as exc:  # BufferError, KafkaException (e.g. too large); never lose the failure
            failure = broker_error(exc, f"producing dead letter to {record.topic}")
            err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
            hint = self._too_large(err, record, f"EPISTLE_DLQ_MAX_MESSAGE_BYTES (now {self.max_message_bytes}) "
                                                "and the topic's max.message.bytes")
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


def replay_dead_letter(config: dict[str, Any], value: bytes, key: bytes | None = None,
           headers: list[tuple[str, bytes]] | None = None, *, topic: str | None = None,
           keep_timestamp: bool = True, timeout_s: float = 30.0) -> Any:
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
        producer = Producer({"logger": kafka_logger(), **config, "acks": "all", "enable.idempotence": True,
                             "message.max.bytes": DLQ_MAX_MESSAGE_BYTES})
    except (KafkaException, TypeError, ValueError) as exc:
        raise ConfigError(f"config: the Kafka client refused it: {exc}", setting="config") from None
    failures: list[Any] = []
    kwargs: dict[str, Any] = {"value": original.value, "key": original.key, "headers": original.headers,
                              "on_delivery": lambda err, _msg: err and failures.append(err)}
    if keep_timestamp and original.timestamp is not None and original.timestamp > 0:  # 0 means "now" here
        kwargs["timestamp"] = original.timestamp
    try:
        producer.produce(topic or original.topic, **kwargs)
    except (BufferError, KafkaException) as exc:
        raise broker_error(exc, "replaying a dead letter") from None
    if producer.flush(timeout_s) or failures:
        raise BrokerUnavailable(f"replay to {topic or original.topic} not acknowledged: {failures[:1]}")
    return original
