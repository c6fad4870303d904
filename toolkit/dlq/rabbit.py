"""``epistle dlq`` on RabbitMQ: read a dead-letter queue, follow it, replay its originals.

A queue is not a log: a message read is gone once acknowledged. So:

- Reading (``stats``, ``show``) takes the messages ready in the queue when it starts, one ``basic.get`` at a
  time, and acknowledges none: closing the channel returns them all to the queue, in their place (marked
  redelivered). A dead letter's "partition" is 0 and its "offset" its position in the queue at that moment
  (``--from-offset``/``--to-offset`` select by position), its time the ``timestamp`` property the consumer
  set when it dead-lettered it.
- ``tail`` holds the messages already there unacknowledged (shown only when ``--since``/``--from-offset``
  select them), then shows each new one as it comes; all go back to the queue when it stops. (RabbitMQ's
  ``consumer_timeout``, 30 minutes by default, closes a channel holding a delivery that long: the tail
  stops with an error saying so.)
- ``replay`` republishes each selected original (body bytes, key, header table with its AMQP types, the
  properties the consumer recorded; plus ``epistle-replayed-from: <dlq>:0:<position>``) through the default
  exchange to the queue it came from (``source.amqp.queue``) or ``--to``, mandatory and persistent, and
  acknowledges the dead letter only once the broker confirmed the republished message: the replay is
  recorded by the dead letters leaving the queue (no consumer group). What is not replayed (filtered out,
  failed again, not a dead letter) goes back to the queue. Interrupted between a confirm and its
  acknowledgement, that one dead letter stays and a second run replays it again (at least once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from toolkit.consumer.amqp import headers_from_table, redact, table_from_headers
from toolkit.dlq.kafka import ReplayReport, check_target
from toolkit.dlq.letters import REPLAYED_FROM, DeadLetter, NotADeadLetter, Selection, coordinates, parse
from toolkit.errors import BrokerUnavailable, BrokerUnreachable, ConfigError, ReplayRefused

Record = DeadLetter | NotADeadLetter
POLL_S = 0.2  # how often an empty queue is asked again while following it
# The original's properties a replay restores (user_id is checked against the connection's user; an
# expiration would start again on the republished message, so it is left off)
_RESTORED = (
    "content_type",
    "content_encoding",
    "priority",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)
_PROPERTY_NAMES = {"message_type": "type"}  # as the dead letter records them -> aio-pika's Message argument


class _Session:
    """A connection on a private event loop, driven from this (synchronous) thread."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.loop = asyncio.new_event_loop()
        self.connection: Any = None
        self.channel: Any = None  # reads: nothing it receives is acknowledged unless replayed
        self.confirms: Any = None  # publishes: confirms, returns raise

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def open(self) -> _Session:
        self.run(self._open())
        return self

    async def _open(self) -> None:
        import aio_pika
        from aiormq.exceptions import ProbableAuthenticationError

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self.connection = await aio_pika.connect(
                    self.url,
                    timeout=max(0.5, min(deadline - time.monotonic(), 10.0)),
                    client_properties={"connection_name": "epistle dlq"},
                )
                break
            except ProbableAuthenticationError as exc:
                raise ConfigError(
                    f"RabbitMQ at {redact(self.url)} refused the connection: {exc}; check the user, password "
                    "and virtual host in RABBITMQ_URL",
                    setting="RABBITMQ_URL",
                ) from None
            except Exception as exc:  # noqa: BLE001 - refused, reset, timed out: asked again until the deadline
                if time.monotonic() + 0.5 >= deadline:
                    raise BrokerUnreachable(
                        f"no RabbitMQ answered at {redact(self.url)} within {self.timeout_s:g}s "
                        f"({type(exc).__name__}: {exc}); check RABBITMQ_URL, or start a local one with "
                        "`scripts/services.py up rabbitmq`",
                        bootstrap_servers=redact(self.url),
                        timeout_s=self.timeout_s,
                        setting="RABBITMQ_URL",
                    ) from None
                await asyncio.sleep(0.5)
        self.channel = await self.connection.channel(publisher_confirms=False)

    def ready(self, queue: str, suffix: str) -> int:
        """The messages ready in ``queue``.

        Raises:
            ConfigError: no such queue (the message says how dead-letter queues are named).
        """
        return self.run(self._ready(queue, suffix))

    async def _ready(self, queue: str, suffix: str) -> int:
        from aiormq.exceptions import ChannelNotFoundEntity

        try:
            declared = await self.channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity:
            self.channel = await self.connection.channel(publisher_confirms=False)
            raise ConfigError(
                f"no queue named {queue!r} on RabbitMQ at {redact(self.url)}: a dead-letter queue is the "
                f"consumed queue's name plus {suffix!r} (EPISTLE_DLQ_SUFFIX), declared when the first record is "
                "dead-lettered; check the name (`rabbitmqctl list_queues name messages`)",
                setting="TOPIC",
            ) from None
        self.queue = declared
        return int(declared.declaration_result.message_count or 0)

    def exists(self, queue: str) -> bool:
        return self.run(self._exists(queue))

    async def _exists(self, queue: str) -> bool:
        from aiormq.exceptions import ChannelNotFoundEntity

        channel = await self.connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity:
            return False
        await channel.close()
        return True

    def get(self) -> Any:
        """The next ready message, held unacknowledged; None when there is none."""
        return self.run(self._get())

    async def _get(self) -> Any:
        from aiormq.exceptions import ChannelClosed

        try:
            return await self.queue.get(no_ack=False, fail=False, timeout=self.timeout_s)
        except ChannelClosed as exc:
            raise BrokerUnavailable(
                f"RabbitMQ closed the channel reading {self.queue.name} ({exc}); what was read went back to the "
                "queue. (A channel holding a delivery longer than the broker's consumer_timeout is closed.) "
                "Run the command again"
            ) from None

    def republish(self, message: Any, queue: str) -> None:
        """Publish ``message`` mandatory to ``queue`` and wait for the broker's confirm.

        Raises:
            BrokerUnavailable: the broker did not confirm it (nack, returned, connection lost).
        """
        self.run(self._republish(message, queue))

    async def _republish(self, message: Any, queue: str) -> None:
        from aiormq.exceptions import DeliveryError
        from pamqp.commands import Basic

        if self.confirms is None:
            self.confirms = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            confirm = await self.confirms.default_exchange.publish(
                message, routing_key=queue, mandatory=True, timeout=self.timeout_s
            )
        except DeliveryError as exc:
            self.confirms = None
            why = "no queue took it (deleted meanwhile?)" if exc.message is not None else "refused (basic.nack)"
            raise BrokerUnavailable(f"replaying into queue {queue!r}: {why}") from None
        except Exception as exc:  # noqa: BLE001 - a lost connection, a timeout: not confirmed
            raise BrokerUnavailable(
                f"replaying into queue {queue!r}: not confirmed: {type(exc).__name__}: {exc}"
            ) from None
        if isinstance(confirm, Basic.Nack):
            raise BrokerUnavailable(f"replaying into queue {queue!r}: refused by the broker (basic.nack)")

    def ack(self, message: Any) -> None:
        self.run(message.ack())

    def close(self) -> None:
        """Close the connection: every message read and not acknowledged goes back to its queue."""
        try:
            if self.connection is not None:
                self.run(asyncio.wait_for(self.connection.close(), 10))
        except Exception:  # noqa: BLE001 - the broker requeues on a lost connection too
            pass
        finally:
            self.loop.close()


def _timestamp(message: Any) -> int | None:
    stamp = message.timestamp
    return int(stamp.timestamp() * 1000) if isinstance(stamp, datetime) else None


def _record(queue: str, position: int, message: Any) -> Record:
    key, headers, _ = headers_from_table(message.headers)
    try:
        return parse(queue, 0, position, _timestamp(message), key, message.body, headers)
    except NotADeadLetter as exc:
        return exc


def read(url: str, topic: str, selection: Selection, *, suffix: str, timeout_s: float) -> Iterator[Record]:
    """The messages ready in the dead-letter queue ``topic`` when called that the selection's position
    filters take, each as a :class:`DeadLetter` or the :class:`NotADeadLetter` error saying why it is not one;
    all of them back in the queue once the iteration ends (content filters are the caller's).

    Raises:
        BrokerUnreachable: no broker within ``timeout_s``. ConfigError: no such queue, refused credentials.
    """
    session = _Session(url, timeout_s).open()
    try:
        count = session.ready(topic, suffix)
        if not selection.takes_partition(0):
            return
        for position in range(count):
            if selection.to_offset is not None and position > selection.to_offset:
                return
            message = session.get()
            if message is None:
                return
            if selection.takes_position(position, _timestamp(message)):
                yield _record(topic, position, message)
    finally:
        session.close()


def follow(
    url: str,
    topic: str,
    selection: Selection,
    *,
    suffix: str,
    timeout_s: float,
    on_start: Callable[[dict[int, int]], None] | None = None,
) -> Iterator[Record]:
    """The dead letters arriving in ``topic`` from now on (those already there too when ``--since`` or
    ``--from-offset`` select them), until the caller stops; everything read goes back to the queue then.
    ``on_start`` gets ``{0: position it starts at}``."""
    session = _Session(url, timeout_s).open()
    try:
        count = session.ready(topic, suffix)
        looking_back = selection.since_ms is not None or selection.from_offset is not None
        if on_start is not None:
            on_start({0: selection.from_offset or 0 if looking_back else count})
        position = 0
        while True:
            message = session.get()
            if message is None:
                time.sleep(POLL_S)
                continue
            if (position >= count or looking_back) and selection.takes_partition(0):
                if selection.takes_position(position, _timestamp(message)):
                    yield _record(topic, position, message)
            position += 1
    finally:
        session.close()


def _restored(letter: DeadLetter) -> tuple[dict[str, Any], dict[str, str]]:
    """(properties, header types) of the original, from the dead letter's ``source.amqp``."""
    source = letter.body.get("source")
    amqp = source.get("amqp") if isinstance(source, dict) else None
    if not isinstance(amqp, dict):
        return {}, {}
    recorded = amqp.get("properties")
    if not isinstance(recorded, dict):
        recorded = {}
    properties: dict[str, Any] = {}
    for name, value in recorded.items():
        name = _PROPERTY_NAMES.get(name, name)
        if name not in _RESTORED or value is None:
            continue
        if name == "timestamp":
            try:
                value = datetime.fromisoformat(value) if isinstance(value, str) else None
            except ValueError:
                value = None
        if name == "priority" and not isinstance(value, int):
            value = None
        if value is not None:
            properties[name] = value if name in ("timestamp", "priority") else str(value)
    types = amqp.get("headerTypes")
    if not isinstance(types, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in types.items()):
        types = {}
    return properties, types


def _source_queue(letter: DeadLetter) -> str:
    source = letter.body.get("source")
    amqp = source.get("amqp") if isinstance(source, dict) else None
    queue = amqp.get("queue") if isinstance(amqp, dict) else None
    return queue if isinstance(queue, str) and queue else letter.original.topic


def replay(
    url: str,
    dlq: str,
    selection: Selection,
    *,
    to: str | None = None,
    group: str | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    force: bool = False,
    skip_invalid: bool = False,
    suffix: str = ".dlq",
    timeout_s: float = 30.0,
    on_progress: Callable[[ReplayReport], None] | None = None,
    on_letter: Callable[[DeadLetter, str, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> ReplayReport:
    """Replay the originals of the dead letters of the queue ``dlq`` that ``selection`` takes (module
    docstring): each republished to its source queue (or ``to``) with publisher confirms, then its dead letter
    acknowledged. ``group`` is not used (the queue itself records what was replayed). ``rate``: messages per
    second at most; ``on_letter`` is called for each one before it is sent (or, with ``dry_run``, instead).

    Raises:
        BrokerUnreachable / BrokerUnavailable: no broker, or a republished message not confirmed (what was
            confirmed before is replayed and removed from the dead-letter queue).
        ConfigError: ``dlq`` or ``to`` is missing, or ``to`` is a dead-letter queue.
        ReplayRefused: a message that is not a dead letter (without ``skip_invalid``) or whose destination is
            a dead-letter queue or missing; what came before it is replayed.
    """
    import aio_pika

    warn = on_warning or (lambda _text: None)
    report = ReplayReport()
    if to is not None:
        check_target(to, dlq, suffix)
    session = _Session(url, timeout_s).open()
    known: dict[str, bool] = {}

    def exists(queue: str) -> bool:
        if queue not in known:
            known[queue] = session.exists(queue)
        return known[queue]

    try:
        count = session.ready(dlq, suffix)
        if to is not None and not exists(to):
            raise ConfigError(
                f"--to {to!r}: no such queue; declare it first (a replay does not declare queues)", setting="--to"
            )
        report.total = count if selection.takes_partition(0) else 0
        next_at = time.monotonic()
        for position in range(report.total):
            if selection.to_offset is not None and position > selection.to_offset:
                break
            message = session.get()
            if message is None:
                break
            report.read += 1
            try:
                if not selection.takes_position(position, _timestamp(message)):
                    report.passed += 1
                    continue
                letter = _record(dlq, position, message)
                if isinstance(letter, NotADeadLetter):
                    if not skip_invalid:
                        raise ReplayRefused(
                            f"{letter}: this is not one of our dead letters, so there is no original to replay; "
                            "nothing from it on was replayed. Skip such messages with --skip-invalid "
                            "(`epistle dlq show` lists them)",
                            where=letter.where,
                        )
                    report.invalid += 1
                    report.invalid_seen.append(str(letter))
                    warn(f"skipped, not a dead letter: {letter}")
                    continue
                if not selection.takes(letter):
                    report.passed += 1
                    continue
                if letter.replayed_from and not force:
                    report.again += 1
                    warn(
                        f"skipped {letter.where}: its original was replayed already from {letter.replayed_from} "
                        "and failed again; replay it once more with --force"
                    )
                    continue
                target = to or _source_queue(letter)
                if to is None and (target == dlq or target.endswith(suffix)):
                    raise ReplayRefused(
                        f"{letter.where} came from {target}, a dead-letter queue: replaying it there would feed "
                        "dead letters back in; nothing from it on was replayed. Give --to with the queue its "
                        "consumer reads (or filter it out)",
                        where=letter.where,
                    )
                if not exists(target):
                    raise ReplayRefused(
                        f"{letter.where}: its source queue {target!r} does not exist; declare it, or give --to "
                        "QUEUE; nothing from it on was replayed",
                        where=letter.where,
                    )
                if on_letter is not None:
                    on_letter(letter, target, 0)
                if dry_run:
                    report.replayed += 1
                    continue
                if rate:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_at = max(next_at, time.monotonic()) + 1.0 / rate
                original = letter.original
                properties, types = _restored(letter)
                headers = [(name, value) for name, value in original.headers if name != REPLAYED_FROM]
                headers.append((REPLAYED_FROM, coordinates(dlq, 0, position).encode("utf-8")))
                republished = aio_pika.Message(
                    original.value or b"",
                    headers=table_from_headers(original.key, headers, types),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    **properties,
                )
                session.republish(republished, target)
                session.ack(message)  # only now: the broker confirmed the original is back in its queue
                report.replayed += 1
            finally:
                if on_progress is not None:
                    on_progress(report)
        return report
    finally:
        session.close()


__all__ = ["follow", "read", "replay"]
