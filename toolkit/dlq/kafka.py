"""``epistle dlq`` on the broker: read a range of a dead-letter topic, follow it, replay its originals.

Readers assign partitions at explicit offsets under a throwaway group id and never commit. The replay reads
under its own group (``epistle-dlq-replay.<dlq topic>`` unless ``--group``) whose committed offsets and
metadata record what was replayed (:mod:`toolkit.dlq.ledger`), committed only once the broker acknowledged
the replayed records (acks=all, idempotent producer).
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from toolkit.consumer.kafka_io import DLQ_MAX_MESSAGE_BYTES, broker_error, wait_for_broker
from toolkit.consumer.kafka_log import kafka_logger
from toolkit.dlq.ledger import Ledger
from toolkit.dlq.letters import REPLAYED_FROM, DeadLetter, NotADeadLetter, Selection, parse
from toolkit.errors import BrokerUnavailable, BrokerUnreachable, ConfigError, ReplayRefused

TIMEOUT_S = 10.0  # one metadata, watermark or commit request
Record = DeadLetter | NotADeadLetter


def connect(config: dict[str, Any], timeout_s: float) -> Any:
    """The cluster's metadata once a broker answers.

    Raises:
        BrokerUnreachable: none answered within ``timeout_s`` (the message names the settings to check).
    """
    servers = config.get("bootstrap.servers", "")
    try:
        return wait_for_broker(config, timeout_s)
    except BrokerUnavailable as exc:
        raise BrokerUnreachable(
            f"no Kafka broker answered at {servers} within {timeout_s:g}s ({exc}); check KAFKA_BOOTSTRAP_SERVERS "
            "(and KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* for a secured cluster), start a local one with "
            "`make services-up`, or give a slow cluster longer with KAFKA_STARTUP_TIMEOUT_S",
            bootstrap_servers=servers,
            timeout_s=timeout_s,
        ) from None


def require_topic(metadata: Any, topic: str, suffix: str) -> list[int]:
    """The partitions of ``topic``.

    Raises:
        ConfigError: it does not exist; the message lists the dead-letter topics that do.
    """
    if topic in metadata.topics:
        return sorted(metadata.topics[topic].partitions)
    dead = sorted(name for name in metadata.topics if name.endswith(suffix))
    hint = (
        f"dead-letter topics on this cluster: {', '.join(dead[:20])}"
        if dead
        else f"this cluster has no topic ending with {suffix} (EPISTLE_DLQ_SUFFIX)"
    )
    if not topic.endswith(suffix) and f"{topic}{suffix}" in metadata.topics:
        hint = f"did you mean {topic}{suffix}?"
    raise ConfigError(f"topic {topic!r} does not exist; {hint}", setting="TOPIC")


def _consumer(config: dict[str, Any], group: str | None = None) -> Consumer:
    settings = {
        **config,
        "group.id": group or f"epistle-dlq-reader-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.message.max.bytes": DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
        "logger": kafka_logger(),
    }
    try:
        return Consumer(settings)
    except (KafkaException, TypeError, ValueError) as exc:
        raise ConfigError(f"the Kafka client could not be created: {exc}", setting="KAFKA_*") from None


def _watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=TIMEOUT_S, cached=False)
    except KafkaException as exc:
        raise broker_error(exc, f"reading the offsets of {topic} partition {partition}") from None


def _ranges(
    consumer: Consumer, topic: str, partitions: list[int], selection: Selection, starts: dict[int, int] | None = None
) -> dict[int, tuple[int, int]]:
    """Per taken partition, the offsets to read ``[start, end)``: the selection's offsets and time range
    within what the partition holds now (``starts``: a lower bound of its own, e.g. a replay's record)."""
    out: dict[int, tuple[int, int]] = {}
    for partition in partitions:
        if not selection.takes_partition(partition):
            continue
        low, high = _watermarks(consumer, topic, partition)
        start, end = max(low, (starts or {}).get(partition, 0)), high
        if selection.from_offset is not None:
            start = max(start, selection.from_offset)
        if selection.to_offset is not None:
            end = min(end, selection.to_offset + 1)
        if selection.since_ms is not None and start < end:
            start = max(start, _offset_at(consumer, topic, partition, selection.since_ms, high))
        out[partition] = (start, max(start, end))
    return out


def _offset_at(consumer: Consumer, topic: str, partition: int, when_ms: int, high: int) -> int:
    """The first offset whose timestamp is at least ``when_ms`` (``high`` when there is none)."""
    try:
        (found,) = consumer.offsets_for_times([TopicPartition(topic, partition, when_ms)], timeout=TIMEOUT_S)
    except KafkaException as exc:
        raise broker_error(exc, f"finding the offset at a time in {topic} partition {partition}") from None
    return found.offset if found.offset >= 0 else high


def _fetch(
    consumer: Consumer, topic: str, ranges: dict[int, tuple[int, int]], *, follow: bool = False
) -> Iterator[Any]:
    """The records of ``ranges`` in each partition's order (partitions interleaved); with ``follow``, the
    ends are ignored and it goes on until the caller stops."""
    todo = {p for p, (start, end) in ranges.items() if start < end or follow}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in sorted(todo)])
    while todo:
        for msg in consumer.consume(500, timeout=0.5):
            err = msg.error()
            partition = msg.partition()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if not follow:
                        todo.discard(partition)
                    continue
                if err.fatal() or err.code() in (
                    KafkaError._ALL_BROKERS_DOWN,
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._UNKNOWN_PARTITION,
                    KafkaError.TOPIC_AUTHORIZATION_FAILED,
                ):
                    raise BrokerUnavailable(f"reading {topic}: {err.name()}: {err.str()}")
                continue  # transient: librdkafka retries
            if partition not in todo:
                continue
            end = ranges[partition][1]
            offset = msg.offset()
            if not follow and offset is not None and offset >= end:
                todo.discard(partition)
                continue
            if not follow and offset is not None and offset >= end - 1:
                todo.discard(partition)
            yield msg


def _timestamp(msg: Any) -> int | None:
    kind, value = msg.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else value


def _record(msg: Any) -> Record:
    try:
        return parse(msg.topic(), msg.partition(), msg.offset(), _timestamp(msg), msg.key(), msg.value(), msg.headers())
    except NotADeadLetter as exc:
        return exc


def read(
    config: dict[str, Any], topic: str, selection: Selection, *, suffix: str, timeout_s: float
) -> Iterator[Record]:
    """The records of ``topic`` the selection's position filters take, up to its end when called, each as
    a :class:`DeadLetter` or the :class:`NotADeadLetter` error saying why it is not one. Content filters
    are the caller's (it counts what it skips)."""
    metadata = connect(config, timeout_s)
    partitions = require_topic(metadata, topic, suffix)
    consumer = _consumer(config)
    try:
        ranges = _ranges(consumer, topic, partitions, selection)
        for msg in _fetch(consumer, topic, ranges):
            if selection.takes_position(msg.offset(), _timestamp(msg)):
                yield _record(msg)
    finally:
        consumer.close()


def follow(
    config: dict[str, Any],
    topic: str,
    selection: Selection,
    *,
    suffix: str,
    timeout_s: float,
    on_start: Callable[[dict[int, int]], None] | None = None,
) -> Iterator[Record]:
    """The records written to ``topic`` from now on (from ``--since``/``--from-offset`` when given), as they
    come, until the caller stops (Ctrl-C). ``on_start`` gets the offsets it starts at."""
    metadata = connect(config, timeout_s)
    partitions = require_topic(metadata, topic, suffix)
    consumer = _consumer(config)
    try:
        starts = {}
        for partition in partitions:
            if selection.takes_partition(partition):
                low, high = _watermarks(consumer, topic, partition)
                start = high
                if selection.from_offset is not None:
                    start = max(low, selection.from_offset)
                elif selection.since_ms is not None:
                    start = _offset_at(consumer, topic, partition, selection.since_ms, high)
                starts[partition] = start
        if on_start is not None:
            on_start(starts)
        for msg in _fetch(consumer, topic, {p: (s, s) for p, s in starts.items()}, follow=True):
            if selection.takes_position(msg.offset(), _timestamp(msg)):
                yield _record(msg)
    finally:
        consumer.close()


# -- replay ---------------------------------------------------------------------------------------------------


@dataclass
class ReplayReport:
    """What a replay run did (counts so far while it runs)."""

    total: int = 0  # records in the range it reads
    read: int = 0
    replayed: int = 0  # with dry_run: would be replayed
    already: int = 0  # recorded as replayed by this group: skipped (unless force)
    again: int = 0  # originals that were replayed once already and failed again: skipped (unless force)
    passed: int = 0  # not taken by the filters
    invalid: int = 0  # not dead letters, skipped with skip_invalid
    recovered: int = 0  # found replayed by an interrupted run (their headers in the targets) and recorded
    invalid_seen: list[str] = field(default_factory=list)


def default_group(dlq: str) -> str:
    return f"epistle-dlq-replay.{dlq}"


def check_target(topic: str, dlq: str, suffix: str) -> None:
    """Refuse a destination that is a dead-letter topic.

    Raises:
        ConfigError: it is ``dlq`` itself or ends with ``suffix``.
    """
    if topic == dlq or topic.endswith(suffix):
        raise ConfigError(
            f"--to {topic!r} is a dead-letter topic: a replay never writes into one (its records "
            "would be read as dead letters); give the topic the consumer reads",
            setting="--to",
        )


# Delivery errors that a second attempt would meet again.
_PERMANENT = ("MSG_SIZE_TOO_LARGE", "AUTHORIZATION_FAILED", "INVALID_RECORD", "RECORD_LIST_TOO_LARGE")


class _Replay:
    def __init__(
        self,
        config: dict[str, Any],
        dlq: str,
        selection: Selection,
        *,
        to: str | None,
        group: str,
        rate: float | None,
        dry_run: bool,
        force: bool,
        skip_invalid: bool,
        suffix: str,
        batch: int,
        on_progress: Callable[[ReplayReport], None] | None,
        on_letter: Callable[[DeadLetter, str, int], None] | None,
        on_warning: Callable[[str], None] | None,
    ) -> None:
        self.config, self.dlq, self.selection, self.to, self.group = config, dlq, selection, to, group
        self.rate, self.dry_run, self.force, self.skip_invalid = rate, dry_run, force, skip_invalid
        self.suffix, self.batch = suffix, batch
        self.on_progress, self.on_letter = on_progress, on_letter
        self.on_warning = on_warning or (lambda _text: None)
        self.report = ReplayReport()
        self.ledgers: dict[int, Ledger] = {}
        self.topics: dict[str, int] = {}  # topic -> partition count
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.sent: list[tuple[int, int]] = []  # (dlq partition, offset) produced since the last settle
        self.acked: list[tuple[int, int]] = []
        self.failures: list[str] = []
        self.window_started = 0.0
        self.next_at = 0.0

    # -- the run -------------------------------------------------------------------------------------------
    def run(self, timeout_s: float) -> ReplayReport:
        if self.to is not None:
            check_target(self.to, self.dlq, self.suffix)
        metadata = connect(self.config, timeout_s)
        partitions = require_topic(metadata, self.dlq, self.suffix)
        self.topics = {name: len(meta.partitions) for name, meta in metadata.topics.items()}
        if self.to is not None:
            if self.to not in self.topics:
                raise ConfigError(
                    f"--to {self.to!r}: no such topic; create it first (a replay does not create topics)",
                    setting="--to",
                )
        self.consumer = _consumer(self.config, self.group)
        try:
            self._load(partitions)
            self._recover()
            starts = {p: ledger.next_offset for p, ledger in self.ledgers.items()} if not self.force else {}
            ranges = _ranges(self.consumer, self.dlq, list(self.ledgers), self.selection, starts)
            self.report.total = sum(end - start for start, end in ranges.values())
            self._progress()
            if not self.dry_run:
                self.producer = Producer(
                    {
                        **self.config,
                        "acks": "all",
                        "enable.idempotence": True,
                        "linger.ms": 5,
                        "message.max.bytes": DLQ_MAX_MESSAGE_BYTES,
                        "logger": kafka_logger(),
                    }
                )
            self.next_at = time.monotonic()
            try:
                for msg in _fetch(self.consumer, self.dlq, ranges):
                    self._one(msg)
            finally:  # Ctrl-C and refusals included: what was acknowledged is recorded
                self._settle()
            return self.report
        finally:
            self.consumer.close()

    def _load(self, partitions: list[int]) -> None:
        assert self.consumer is not None
        taken = [p for p in partitions if self.selection.takes_partition(p)]
        try:
            committed = self.consumer.committed([TopicPartition(self.dlq, p) for p in taken], timeout=TIMEOUT_S)
        except KafkaException as exc:
            raise broker_error(exc, f"reading the offsets of group {self.group}") from None
        for tp in committed:
            ledger = Ledger.load(self.dlq, tp.partition, tp.offset, tp.metadata, self.group)
            ledger.forget_below(_watermarks(self.consumer, self.dlq, tp.partition)[0])
            self.ledgers[tp.partition] = ledger

    def _recover(self) -> None:
        """After an interrupted run: find in the target partitions it marked the records it replayed (by
        their header) and record them, so they are not sent twice."""
        marks: dict[tuple[str, int], int] = {}
        for ledger in self.ledgers.values():
            for topic, ends in ledger.pending.items():
                for partition, end in ends.items():
                    marks[(topic, partition)] = min(end, marks.get((topic, partition), end))
        if not marks:
            return
        self.on_warning(
            f"an earlier replay of group {self.group} was interrupted: reading "
            f"{', '.join(f'{t}:{p} from offset {o}' for (t, p), o in sorted(marks.items()))} for "
            "what it replayed"
        )
        reader = _consumer(self.config)
        prefix = f"{self.dlq}:"
        try:
            for (topic, partition), start in sorted(marks.items()):
                if topic not in self.topics or partition >= self.topics[topic]:
                    continue
                high = _watermarks(reader, topic, partition)[1]
                for msg in _fetch(reader, topic, {partition: (start, high)}):
                    for name, value in msg.headers() or []:
                        if name != REPLAYED_FROM or value is None:
                            continue
                        text = value.decode("utf-8", "replace")
                        if not text.startswith(prefix):
                            continue
                        part, _, offset = text[len(prefix) :].partition(":")
                        found = self.ledgers.get(int(part)) if part.isdigit() else None
                        if found is not None and offset.isdigit() and not found.done(int(offset)):
                            found.add(int(offset))
                            self.report.recovered += 1
                reader.unassign()
        finally:
            reader.close()
        for ledger in self.ledgers.values():
            ledger.pending.clear()
        if not self.dry_run:
            self._commit(list(self.ledgers.values()))

    def _one(self, msg: Any) -> None:
        report = self.report
        report.read += 1
        partition, offset = msg.partition(), msg.offset()
        ledger = self.ledgers[partition]
        try:
            if ledger.done(offset) and not self.force:
                report.already += 1
                return
            if not self.selection.takes_position(offset, _timestamp(msg)):
                report.passed += 1
                return
            record = _record(msg)
            if isinstance(record, NotADeadLetter):
                if not self.skip_invalid:
                    raise ReplayRefused(
                        f"{record}: this is not one of our dead letters, so there is no original "
                        "to replay; nothing from it on was replayed. Skip such records with "
                        "--skip-invalid (`epistle dlq show` lists them)",
                        where=record.where,
                    )
                report.invalid += 1
                report.invalid_seen.append(str(record))
                self.on_warning(f"skipped, not a dead letter: {record}")
                return
            if not self.selection.takes(record):
                report.passed += 1
                return
            if record.replayed_from and not self.force:
                report.again += 1
                self.on_warning(
                    f"skipped {record.where}: its original was replayed already from "
                    f"{record.replayed_from} and failed again; replay it once more with --force"
                )
                return
            target, target_partition = self._target(record)
            if self.on_letter is not None:
                self.on_letter(record, target, target_partition)
            if self.dry_run:
                report.replayed += 1
                return
            self._send(record, ledger, target, target_partition)
        finally:
            self._progress()

    def _target(self, letter: DeadLetter) -> tuple[str, int]:
        """Where the original goes: ``--to`` or its source topic, in the partition it came from (its number
        modulo the partition count when the destination has fewer)."""
        topic = self.to or letter.original.topic
        if self.to is None and (topic == self.dlq or topic.endswith(self.suffix)):
            raise ReplayRefused(
                f"{letter.where} came from {topic}, a dead-letter topic: replaying it there would "
                "feed dead letters back in; nothing from it on was replayed. Give --to with the "
                "topic its consumer reads (or filter it out)",
                where=letter.where,
            )
        if topic not in self.topics:
            raise ReplayRefused(
                f"{letter.where}: its source topic {topic!r} does not exist; create it, or give "
                "--to TOPIC; nothing from it on was replayed",
                where=letter.where,
            )
        return topic, letter.original.partition % self.topics[topic]

    def _send(self, letter: DeadLetter, ledger: Ledger, topic: str, partition: int) -> None:
        assert self.producer is not None and self.consumer is not None
        # A record that would no longer fit stops the run before it is sent: counted with every record sent
        # and not settled yet (they are added to the record at the next settle, after the broker's answer).
        unsettled = [offset for dlq_partition, offset in self.sent if dlq_partition == letter.partition]
        if ledger.ranges or unsettled:
            probe = copy.deepcopy(ledger)
            for offset in (*unsettled, letter.offset):
                probe.add(offset)
            probe.metadata()
        if self.rate:
            delay = self.next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.next_at = max(self.next_at, time.monotonic()) + 1.0 / self.rate
        if partition not in ledger.pending.get(topic, {}):
            # committed before the first record goes there, so that an interruption is found again
            ledger.mark(topic, partition, _watermarks(self.consumer, topic, partition)[1])
            self._commit([ledger])
        if not self.sent:
            self.window_started = time.monotonic()
        original = letter.original
        headers = [(name, value) for name, value in original.headers if name != REPLAYED_FROM]
        headers.append((REPLAYED_FROM, letter.where.encode("utf-8")))
        kwargs: dict[str, Any] = {
            "partition": partition,
            "key": original.key,
            "value": original.value,
            "headers": headers,
        }
        if original.timestamp is not None and original.timestamp > 0:  # 0 would mean "now" to librdkafka
            kwargs["timestamp"] = original.timestamp
        key = (letter.partition, letter.offset)

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                self.acked.append(key)
            else:
                self.failures.append(f"{letter.where} -> {topic}:{partition}: {err.name()}: {err.str()}")

        while True:
            try:
                self.producer.produce(topic, on_delivery=delivered, **kwargs)
                break
            except BufferError:
                self.producer.poll(0.1)
            except KafkaException as exc:  # refused by the producer itself (e.g. too large): nothing sent
                self._settle()
                raise broker_error(exc, f"replaying {letter.where} to {topic}:{partition}") from None
        self.sent.append(key)
        self.producer.poll(0)
        if len(self.sent) >= self.batch or time.monotonic() - self.window_started >= 1.0:
            self._settle()

    def _settle(self) -> None:
        """Wait for the acknowledgements of what was sent and record those in the group; the marks of the
        target partitions are cleared only when every record was acknowledged."""
        if self.producer is None or not self.sent:
            return
        left = self.producer.flush(60)
        touched = {partition for partition, _ in self.sent}
        for partition, offset in self.acked:
            self.ledgers[partition].add(offset)
        complete = not self.failures and not left and len(self.acked) == len(self.sent)
        self.report.replayed += len(self.acked)
        if complete:
            for partition in touched:
                self.ledgers[partition].pending.clear()
        failures = list(self.failures)
        self.sent, self.acked, self.failures = [], [], []
        self._commit([self.ledgers[p] for p in sorted(touched)])
        permanent = [f for f in failures if any(code in f for code in _PERMANENT)]
        if permanent:  # sending it again would fail the same way: say what to change instead
            raise ReplayRefused(
                f"the broker refused a replayed record for good ({permanent[0]}): raise the destination topic's "
                "max.message.bytes, grant the replaying principal write access, or leave the record out with "
                f"the filters (--stage, --offsets ...); {self.report.replayed} replayed and recorded so far",
                where=permanent[0].split(" -> ", 1)[0],
            )
        if not complete:
            raise BrokerUnavailable(
                f"replayed records not acknowledged ({', '.join(failures[:3]) or 'timed out'}"
                f"); {self.report.replayed} replayed and recorded so far: run the same command "
                "again to go on (it checks the destination for what was sent)"
            )

    def _commit(self, ledgers: list[Ledger]) -> None:
        assert self.consumer is not None
        if self.dry_run or not ledgers:
            return
        offsets = [
            TopicPartition(self.dlq, ledger.partition, ledger.next_offset, ledger.metadata()) for ledger in ledgers
        ]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise broker_error(exc, f"recording the replay in group {self.group}") from None

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.report)


def replay(
    config: dict[str, Any],
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
    batch: int = 100,
    on_progress: Callable[[ReplayReport], None] | None = None,
    on_letter: Callable[[DeadLetter, str, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> ReplayReport:
    """Replay the originals of the dead letters of ``dlq`` that ``selection`` takes and the group has not
    replayed yet: key, value, headers and timestamp exact, plus an ``epistle-replayed-from`` header, to
    their source topic (or ``to``), each into the partition it came from. ``rate``: records per second at
    most. ``on_letter`` is called for each one before it is sent (or, with ``dry_run``, instead).

    Raises:
        BrokerUnreachable / BrokerUnavailable: no broker, or records not acknowledged (what was is recorded).
        ConfigError: the topic or ``to`` is missing or a dead-letter topic; the group is someone else's.
        ReplayRefused: a record that is not a dead letter (without ``skip_invalid``) or whose destination is
            a dead-letter topic or missing; what came before it is replayed and recorded.
    """
    run = _Replay(
        config,
        dlq,
        selection,
        to=to,
        group=group or default_group(dlq),
        rate=rate,
        dry_run=dry_run,
        force=force,
        skip_invalid=skip_invalid,
        suffix=suffix,
        batch=batch,
        on_progress=on_progress,
        on_letter=on_letter,
        on_warning=on_warning,
    )
    return run.run(timeout_s)
