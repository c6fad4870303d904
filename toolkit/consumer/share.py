"""Kafka share groups ("queues for Kafka", KIP-932) under the same engine: :class:`ShareTransport`.

Consumers of a share group read the same partitions together: the broker hands each record to one of them,
*acquired* for a while (the group's ``share.record.lock.duration.ms``, 30 s by default), and each record is
acknowledged on its own. There are no offsets to commit, so this transport is an
:class:`~toolkit.consumer.transport.AcknowledgingTransport` and the engine settles records one by one
(docs/contracts.md, "Share groups"):

- done -> ACCEPT; a retryable failure -> RELEASE at once, with no backoff of ours (the broker delivers it
  again, maybe to another consumer, and counts the deliveries: the handler's ``message.attempt`` and
  ``message.delivery_count`` are that count); at the last delivery the broker makes (the group's
  ``share.delivery.count.limit``, 5 by default, or the retry policy's ``max_attempts`` if lower) the failure
  dead-letters it with the attempts.
- a permanent failure -> the dead letter is produced, and once the broker acknowledged it the record is
  accepted. Nothing is ever REJECTed: a rejected record is kept nowhere.
- a registry or broker outage holds the record while its lock lasts, then releases it; a dead letter the
  broker refuses is resent while the lock lasts, then the record is released. librdkafka 2.16's share
  consumer cannot renew a lock (no RENEW acknowledgement type, though the broker has
  ``share.renew.acknowledge.enable``), so a handler must finish within the lock, and an outage longer than
  (delivery limit x lock duration) lets the broker archive the record.
- no ordering: records of one partition are handled concurrently here and by the other consumers, so the
  PARTITION and KEY ordering modes are refused (:func:`check_share_ordering`).

librdkafka's share consumer is not thread-safe and, in explicit acknowledgement mode, polls again only once
every record of the previous poll is acknowledged: a batch is held until all its records are settled or
their locks run out. Its one owner is the poll thread here: the loop queues acknowledgements
(:meth:`ShareTransport.acknowledge`), the thread applies them and sends them to the broker with the next
poll, or at once (``commit_async``) while other records of the batch are still being handled, so a released
record goes back to the group without waiting for the slowest of its batch. When the batch's locks run out
(less a margin) the thread releases what is left of it (a hung handler's record, records still waiting for a
worker: the engine handles none of them any more, and its later acknowledgement is ignored) and polls again,
so one slow handler holds back the others for one lock at most. A record at its last delivery is never
released for its lock (the broker would archive it, kept nowhere): it is handled, and dead-lettered on
failure, however late.

Dead letters go through the same :class:`~toolkit.consumer.kafka_io.DeadLetterSender` as in a consumer
group (``<topic>.dlq``), so ``epistle dlq`` reads them as usual.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from toolkit.consumer.kafka_io import DeadLetterSender, wait_for_broker
from toolkit.consumer.kafka_log import kafka_logger
from toolkit.consumer.transport import (
    Assignment,
    FetchState,
    Position,
    Record,
    TransportEvents,
    TransportObserver,
)
from toolkit.errors import ConfigError

log = logging.getLogger("toolkit.consumer")

ACCEPT, RELEASE = 1, 2
"""KIP-932's acknowledgement types (``confluent_kafka.AcknowledgeType`` is an IntEnum of these); REJECT (3)
is never sent."""

DELIVERY_LIMIT = "share.delivery.count.limit"
LOCK_DURATION = "share.record.lock.duration.ms"
HEARTBEAT_INTERVAL = "share.heartbeat.interval.ms"
AUTO_OFFSET_RESET = "share.auto.offset.reset"
_DEFAULTS = {DELIVERY_LIMIT: 5, LOCK_DURATION: 30_000, HEARTBEAT_INTERVAL: 5000}  # the broker's (group.share.*)
_IDLE_S = 1.0  # nothing delivered for this long (and nothing held): the partitions seen are at their end
_FLUSH_S = 0.02  # acknowledgements of a batch still in progress are sent at least this often


class ShareClient(Protocol):
    """What this transport uses of ``confluent_kafka.ShareConsumer`` (explicit acknowledgement mode)."""

    def subscribe(self, topics: list[str]) -> None: ...

    def poll(self, timeout: float = ...) -> Iterable[Any]: ...

    def acknowledge(self, message: Any, ack_type: Any) -> None: ...

    def commit_async(self) -> None: ...

    def commit_sync(self, timeout: float) -> Any: ...

    def close(self) -> None: ...


def check_share_ordering(ordering: Any, explicit: bool) -> None:
    """Share groups cannot keep records in order: refuse PARTITION and KEY when asked for explicitly.

    Raises:
        ConfigError: naming the setting and the fix.
    """
    from toolkit.settings import OrderingMode

    if explicit and OrderingMode(ordering) is not OrderingMode.UNORDERED:
        raise ConfigError(
            f"ordering {OrderingMode(ordering).value} cannot hold in a share group: the broker hands the records "
            "of a partition to every consumer of the group at once and delivers released ones again later. "
            "Use ordering=UNORDERED (EPISTLE_ORDERING) with mode share, or mode group to keep order",
            setting="ordering",
        )


def share_group_settings(admin_config: dict[str, Any], group_id: str, auto_offset_reset: str) -> dict[str, Any]:
    """The share group's delivery limit, lock duration and heartbeat interval (the group's configuration, else
    the broker's defaults); sets the group's ``share.auto.offset.reset`` to ``auto_offset_reset`` while it is
    left at the broker's default (``latest``: a new share group would skip every record already there, where a
    consumer group reads from ``KAFKA_AUTO_OFFSET_RESET``, earliest by default). Blocking.
    """
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    values: dict[str, Any] = dict(_DEFAULTS)
    try:
        admin = AdminClient({**admin_config, "log_level": 0})
        resource = ConfigResource(ResourceType.GROUP, group_id)
        entries = admin.describe_configs([resource], request_timeout=10)[resource].result(timeout=15)
        for name in (DELIVERY_LIMIT, LOCK_DURATION, HEARTBEAT_INTERVAL):
            if name in entries and entries[name].value is not None:
                values[name] = int(entries[name].value)
        reset = entries.get(AUTO_OFFSET_RESET)
        if reset is not None and reset.is_default and reset.value != auto_offset_reset:
            change = ConfigResource(
                ResourceType.GROUP,
                group_id,
                incremental_configs=[
                    ConfigEntry(AUTO_OFFSET_RESET, auto_offset_reset, incremental_operation=AlterConfigOpType.SET)
                ],
            )
            admin.incremental_alter_configs([change])[change].result(timeout=15)
            log.info("share group %s: %s set to %s", group_id, AUTO_OFFSET_RESET, auto_offset_reset)
    except Exception as exc:  # noqa: BLE001 - the defaults are the broker's; a refusal is logged
        log.warning(
            "share group %s: its configuration could not be read (%s); assuming the broker defaults %s",
            group_id,
            exc,
            _DEFAULTS,
        )
    return values


class ShareTransport:
    """The :class:`~toolkit.consumer.transport.Transport` (and ``AcknowledgingTransport``) over a Kafka share
    group with librdkafka's share consumer (module docstring).

    Args:
        consumer_config: the share consumer's settings (``group.id`` and ``bootstrap.servers`` included).
        client_config: connection settings for the dead-letter producer and the admin client.
        dead_letter_config: the dead-letter producer's extra settings.
        auto_offset_reset: where a new share group starts (``earliest`` or ``latest``).
        client_factory: builds the client from its settings; None is ``confluent_kafka.ShareConsumer``
            (tests pass a fake :class:`ShareClient`; then :meth:`connect` asks no broker).
        group_settings: the group's delivery limit, lock duration and heartbeat interval
            (``share.delivery.count.limit``, ``share.record.lock.duration.ms``, ``share.heartbeat.interval.ms``;
            those left out are the broker's defaults); None reads them from the broker in :meth:`connect`.
    """

    def __init__(
        self,
        consumer_config: dict[str, Any],
        *,
        client_config: dict[str, Any],
        dead_letter_config: dict[str, Any] | None = None,
        auto_offset_reset: str = "earliest",
        client_factory: Callable[[dict[str, Any]], ShareClient] | None = None,
        group_settings: dict[str, Any] | None = None,
        dead_letter_sink: Any = None,
    ) -> None:
        self.consumer_config = consumer_config
        self._client_config = client_config
        self._dead_letter_config = dict(dead_letter_config or {})
        self._auto_offset_reset = auto_offset_reset
        self._factory = client_factory
        self._sink = dead_letter_sink
        settings = {**_DEFAULTS, **(group_settings or {})}
        self._configured = group_settings is not None
        self.delivery_limit = int(settings[DELIVERY_LIMIT])
        self.lock_duration_s = int(settings[LOCK_DURATION]) / 1000
        self._heartbeat_s = int(settings[HEARTBEAT_INTERVAL]) / 1000
        self._client: ShareClient | None = None
        self._events: TransportEvents | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._held: dict[int, tuple[Any, float]] = {}  # id(record) -> (record, acquired at): not settled yet
        self._lapse_at = float("inf")  # when the held records' locks run out (one batch: one time)
        self._seen: set[tuple[str, int]] = set()
        self._fetching = True
        self._thread: threading.Thread | None = None
        self._max_poll_records = 500
        self._max_in_flight = 10_000
        self._commit_failed = False
        self._observers: list[TransportObserver] = []
        self._flushed_at: float | None = None
        self._window_full = False
        self._applied = 0  # acknowledgements applied by the poll thread since it last looked
        self.last_poll: float | None = None

    # -- Transport ----------------------------------------------------------------------------------------
    def connect(self, timeout_s: float, topics: Sequence[str] = ()) -> set[str]:
        """Wait for the broker (blocking); read the group's delivery limit and lock duration.

        Raises:
            BrokerUnavailable: no answer within ``timeout_s``. ConfigError: the client configuration is refused.
        """
        if self._factory is not None:  # a client of the caller's (a fake): no broker to ask
            return set(topics)
        admin_config = dict(self._client_config)
        existing = set(wait_for_broker(admin_config, timeout_s).topics)
        if not self._configured:
            settings = share_group_settings(admin_config, self.consumer_config["group.id"], self._auto_offset_reset)
            self.delivery_limit = int(settings[DELIVERY_LIMIT])
            self.lock_duration_s = int(settings[LOCK_DURATION]) / 1000
            self._heartbeat_s = int(settings[HEARTBEAT_INTERVAL]) / 1000
            self._configured = True
        return existing

    def describe(self) -> tuple[str, str, str]:
        return "Kafka", str(self.consumer_config.get("bootstrap.servers", "")), "KAFKA_BOOTSTRAP_SERVERS"

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
    ) -> Any:
        self._events, self._loop = events, loop
        self._max_poll_records, self._max_in_flight = max_poll_records, max_in_flight
        config = {
            "logger": kafka_logger(),
            **self.consumer_config,
            "group.id": group_id,
            "share.acknowledgement.mode": "explicit",
            "max.poll.records": min(max_poll_records, max_in_flight),
        }
        sink = self._sink
        client: ShareClient | None = None
        try:
            if sink is None:
                sink = DeadLetterSender(
                    self._client_config,
                    loop,
                    producer_overrides=self._dead_letter_config,
                    max_message_bytes=dlq_max_message_bytes,
                )
            client = self._factory(config) if self._factory is not None else _share_consumer(config)
            if hasattr(client, "set_acknowledgement_commit_callback"):
                client.set_acknowledgement_commit_callback(self._on_acknowledged)
            client.subscribe(list(topics))
        except Exception as exc:  # librdkafka refused the configuration
            if sink is not None and self._sink is None:
                sink.close(timeout_s=0)
            if client is not None:  # (it refused the subscription: leave no client behind)
                try:
                    client.close()
                except Exception as close_exc:  # noqa: BLE001
                    log.warning("closing the share consumer failed: %s", close_exc)
            raise ConfigError(f"the Kafka share consumer could not be created: {exc}", setting="kafka_config") from None
        self._client = client
        self._thread = threading.Thread(target=self._run, name="epistle-share-poll", daemon=True)
        self._thread.start()
        return sink

    def commit(self, positions: list[Position], *, sync: bool = False) -> Future[None]:
        """Send the acknowledgements made so far (``positions`` is empty: share groups have no offsets)."""
        done: Future[None] = Future()
        if self._thread is None or not self._thread.is_alive():  # nothing would ever serve it
            done.set_result(None)
        else:
            self._inbox.put(("flush", done, sync))
        return done

    def take_commit_failure(self) -> bool:
        failed, self._commit_failed = self._commit_failed, False
        return failed

    def pause(self, assignments: list[Assignment]) -> None:
        """Nothing to pause: the poll thread polls only once the last batch is settled and the window has room."""

    def resume(self, assignments: list[Assignment]) -> None:
        """(See :meth:`pause`.)"""

    def stop_fetching(self) -> None:
        self._fetching = False

    def close(self) -> Future[None]:
        done: Future[None] = Future()
        if self._thread is None or not self._thread.is_alive():
            done.set_result(None)
        else:
            self._inbox.put(("close", done))
        return done

    # -- AcknowledgingTransport -------------------------------------------------------------------------
    def delivery_count(self, record: Record) -> int:
        count = getattr(record, "delivery_count", None)
        value = count() if callable(count) else count
        return int(value) if value else 1

    def lock_deadline(self, record: Record) -> float:
        held = self._held.get(id(record))
        if held is None:  # settled, or released by the poll thread as its lock ran out: not ours any more
            return 0.0
        return self._deadline(held[1])

    def _deadline(self, acquired: float) -> float:
        lock = self.lock_duration_s
        return acquired + lock - max(0.5, lock * 0.1)

    def acknowledge(self, record: Record, accept: bool) -> None:
        self._inbox.put(("ack", record, ACCEPT if accept else RELEASE))

    # -- ObservableTransport --------------------------------------------------------------------------
    def add_observer(self, observer: TransportObserver, *, lag_interval_s: float = 5.0) -> None:
        if observer not in self._observers:
            self._observers.append(observer)

    def fetch_state(self) -> FetchState:
        alive = self._thread is not None and self._thread.is_alive()
        return FetchState(alive, self.last_poll, self._window_full)

    def lag(self) -> dict[tuple[str, int], int]:
        """Not measured: a share group's backlog is the group's, not one consumer's."""
        return {}

    # -- the poll thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        client, events, loop = self._client, self._events, self._loop
        assert client is not None and events is not None and loop is not None
        idle_since: float | None = None
        ends_sent = False
        unsent = 0  # acknowledgements applied and not sent yet
        try:
            while True:
                now = time.monotonic()
                self.last_poll = now
                closing = self._serve_inbox(client, timeout=0.05 if self._held or not self._fetching else 0)
                if closing is not None:
                    self._close(client, closing)
                    return
                if self._held and now >= self._lapse_at:
                    self._release_lapsed(client)
                unsent += self._applied
                self._applied = 0
                if self._held:  # no poll before every record of the last one is settled
                    if unsent and (self._flushed_at is None or now - self._flushed_at >= _FLUSH_S):
                        self._send(client.commit_async)
                        unsent = 0
                    continue
                if not self._fetching:
                    continue
                free = self._max_in_flight - events.in_flight()
                self._window_full = free <= 0
                if self._window_full:
                    time.sleep(0.01)
                    continue
                try:
                    batch = client.poll(0.1)  # carries the acknowledgements applied since the last one
                except Exception as exc:  # noqa: BLE001 - librdkafka reports a broker outage and recovers
                    log.warning("share consumer poll failed: %s", exc)
                    time.sleep(0.1)
                    continue
                unsent = 0
                records = []
                for msg in batch:
                    err = msg.error()
                    if err is None:
                        records.append(msg)
                    elif getattr(err, "fatal", lambda: False)():
                        loop.call_soon_threadsafe(events.on_fatal, f"share consumer: {err}")
                    else:
                        log.warning("share consumer: %s", err)
                if records:
                    acquired = time.monotonic()
                    self._lapse_at = self._deadline(acquired)
                    for msg in records:
                        self._held[id(msg)] = (msg, acquired)
                        self._seen.add((msg.topic(), msg.partition()))
                    idle_since, ends_sent = None, False
                    loop.call_soon_threadsafe(events.on_batch, records, [])
                elif idle_since is None:
                    idle_since = now
                elif not ends_sent and now - idle_since >= self._quiet_s() and events.in_flight() == 0:
                    ends_sent = True  # for stop_when_idle: nothing came for a while
                    loop.call_soon_threadsafe(events.on_batch, [], sorted(self._seen))
        except Exception as exc:  # noqa: BLE001 - a bug of ours or a closed client: the consumer stops
            log.exception("the share consumer's poll thread failed")
            loop.call_soon_threadsafe(events.on_fatal, f"share consumer: {type(exc).__name__}: {exc}")

    def _quiet_s(self) -> float:
        """How long nothing must come before the consumer counts as drained (``stop_when_idle``). Before its
        first record, longer: the member's share of the partitions comes with a heartbeat answer (a fresh
        member waits one heartbeat interval for its first record), so two intervals pass first."""
        return _IDLE_S if self._seen else _IDLE_S + 2 * self._heartbeat_s

    def _release_lapsed(self, client: ShareClient) -> None:
        """Release the held records whose lock runs out (a handler still running, a record still waiting for
        a worker): librdkafka polls again only once every record of the last poll is settled, so one hung
        handler would hold back every other record of this process. The engine's later acknowledgement of
        them is ignored (:meth:`_apply`), and it handles none of them any more (:meth:`lock_deadline`). Not
        at a record's last delivery: released, it would be archived (kept nowhere), so it is left to be
        finished (handled, or dead-lettered)."""
        self._lapse_at = float("inf")  # (what is left is last deliveries: never released for their lock)
        for record, _ in list(self._held.values()):
            if self.delivery_count(record) < self.delivery_limit:
                log.warning(
                    "releasing %s[%d]@%d: its acquisition lock runs out before it was settled",
                    record.topic(),
                    record.partition(),
                    record.offset(),
                )
                self._apply(client, record, RELEASE)

    def _serve_inbox(self, client: ShareClient, timeout: float) -> Future[None] | None:
        """Apply queued acknowledgements and run flushes; the close request's future if one came."""
        try:
            item = self._inbox.get(timeout=timeout) if timeout else self._inbox.get_nowait()
        except queue.Empty:
            return None
        while True:
            kind = item[0]
            if kind == "ack":
                self._apply(client, item[1], item[2])
            elif kind == "flush":
                self._flush(client, item[1], item[2])
            else:
                return item[1]
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return None

    def _apply(self, client: ShareClient, record: Any, ack_type: int) -> None:
        if self._held.pop(id(record), None) is None:
            return  # settled already
        try:
            client.acknowledge(record, _ack_type(ack_type))
            self._applied += 1
        except Exception as exc:  # noqa: BLE001 - its lock expired or the member was fenced: delivered again
            log.warning(
                "acknowledging %s[%d]@%d failed (the broker delivers it again): %s",
                record.topic(),
                record.partition(),
                record.offset(),
                exc,
            )

    def _flush(self, client: ShareClient, done: Future[None], sync: bool) -> None:
        try:
            if sync:
                started = time.monotonic()
                client.commit_sync(10.0)
                self._observe(time.monotonic() - started, True)
            else:
                self._send(client.commit_async)
        except Exception as exc:  # noqa: BLE001 - reported; the locks expire and the broker delivers again
            self._commit_failed = True
            log.warning("sending share acknowledgements failed: %s", exc)
        if not done.done():
            done.set_result(None)

    def _send(self, commit: Callable[[], None]) -> None:
        self._flushed_at = time.monotonic()
        try:
            commit()
        except Exception as exc:  # noqa: BLE001
            self._commit_failed = True
            log.warning("sending share acknowledgements failed: %s", exc)

    def _on_acknowledged(self, offsets: Any, error: Any) -> None:
        ok = error is None
        if not ok:
            self._commit_failed = True
            log.warning("the broker refused acknowledgements (their records are delivered again): %s", error)
        self._observe(time.monotonic() - (self._flushed_at or time.monotonic()), ok)

    def _observe(self, seconds: float, ok: bool) -> None:
        for observer in self._observers:
            try:
                observer.on_commit(seconds, ok)
            except Exception:  # noqa: BLE001 - metrics never stop the consumer
                log.exception("a commit observer failed")

    def _close(self, client: ShareClient, done: Future[None]) -> None:
        """Release what is still held (the engine settled everything it could), send, leave the group."""
        for record, _ in list(self._held.values()):
            self._apply(client, record, RELEASE)
        try:
            client.commit_sync(10.0)
        except Exception as exc:  # noqa: BLE001
            log.warning("sending the last share acknowledgements failed: %s", exc)
        try:
            client.close()
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the share consumer failed: %s", exc)
        done.set_result(None)


def _ack_type(value: int) -> Any:
    try:
        from confluent_kafka import AcknowledgeType
    except ImportError:  # (an old confluent-kafka: the fake clients of the tests take the integers)
        return value
    return AcknowledgeType(value)


def _share_consumer(config: dict[str, Any]) -> ShareClient:
    try:
        from confluent_kafka import ShareConsumer
    except ImportError:
        raise ConfigError(
            "mode share needs confluent-kafka 2.16 or newer (confluent_kafka.ShareConsumer); upgrade it",
            setting="mode",
        ) from None
    return ShareConsumer(config)


__all__ = [
    "ACCEPT",
    "RELEASE",
    "ShareClient",
    "ShareTransport",
    "check_share_ordering",
    "share_group_settings",
]
