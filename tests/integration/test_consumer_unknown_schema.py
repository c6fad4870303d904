"""On the real broker and real Apicurio: a schema the registry does not know is waited for
(``unknown_schema_grace_s``) while its partition holds and the others go on; only after the grace is the
record dead-lettered, with how long it waited. A number beyond the double range is dead-lettered
at stage ``validation``.

Registering late and never registering use the shared registry (own subjects, nothing stopped); the
restart runs a private Apicurio (in-memory storage: empty after the restart), as test_registry_outage does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_registry_outage import PrivateRegistry, _free_port
from tests.kafka_checks import records_in
from toolkit.consumer import KafkaConsumer, RetryPolicy
from toolkit.consumer.deadletter import original_record
from toolkit.consumer.testing import committed, envelope_bytes, produce, read_topic
from toolkit.layout import SchemaFormat
from toolkit.registry import CachedRegistry, ConfluentHttpRegistry, LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
SHIPMENTS = ROOT / "schemas" / "shipments"


def sample(version: int, index: int = 0) -> dict:
    return json.loads(sorted((SHIPMENTS / "samples" / str(version) / "valid").glob("*.json"))[index].read_text())


def schema_text(version: int) -> str:
    return (SHIPMENTS / f"{version}.avsc").read_text()


def log_end(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unknown-schema-ends"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        consumer.close()


class Running:
    """A consumer running in a thread of its own (asyncio.run), recording what reached the handler."""

    def __init__(self, consumer: KafkaConsumer, topic: str) -> None:
        self.consumer = consumer
        self.handled: list[tuple[str, int, float]] = []  # messageId, partition, wall time
        self.error: BaseException | None = None

        async def handler(message) -> bool:
            self.handled.append((message.message_id, message.partition, time.time()))
            return True

        consumer.register_handler(topic, handler)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self.consumer.start())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def ids(self) -> set[str]:
        return {message_id for message_id, _, _ in self.handled}

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            if not self.thread.is_alive():
                raise AssertionError(f"the consumer ended ({self.error!r}) before {what}")
            time.sleep(0.05)
        raise AssertionError(f"not within {timeout_s}s: {what} (handled {len(self.handled)})")

    def stop(self, timeout_s: float = 60) -> None:
        self.consumer.request_stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the consumer did not stop"
        assert self.error is None, repr(self.error)


class Waits(logging.Handler):
    """Counts the consumer's 'waiting' log lines for a schema the registry does not know (yet)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "SchemaNotYetKnown" in record.getMessage():
            self.count += 1


@pytest.fixture
def waits() -> Iterator[Waits]:
    handler = Waits()
    logger = logging.getLogger("toolkit.consumer")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def consumer_for(bootstrap: str, group: str, registry, subject: str, grace: float, **options) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        registry=registry,
        subject_strategy=lambda ctx: subject,
        commit_interval_s=0.2,
        retry=RetryPolicy(3, 0.2, 2.0),
        unknown_schema_grace_s=grace,
        **options,
    )


def test_a_version_registered_while_its_records_wait_is_handled_and_nothing_is_dead_lettered(
    kafka_bootstrap, registry_url, make_topic, group_id, unique_name, waits
):
    subject = unique_name("shipments")
    http = ConfluentHttpRegistry(registry_url)
    http.register(subject, schema_text(1), SchemaFormat.AVRO)
    topic = make_topic("late", partitions=3)
    ids = []
    for partition in range(3):
        batch = []
        for i in range(60):
            version = 2 if i % 3 == 1 else 1  # v2 is not registered yet when the consumer meets it
            message_id = f"p{partition}-{i}-v{version}"
            ids.append(message_id)
            batch.append(envelope_bytes("shipments", version, sample(version), message_id=message_id))
        produce(kafka_bootstrap, topic, batch, partition=partition)

    running = Running(
        consumer_for(kafka_bootstrap, group_id, CachedRegistry(http), subject, grace=60, stop_when_idle=True), topic
    )
    # Every partition stops at its first v2 record and waits; the producer's team registers v2 then.
    running.wait_for(lambda: waits.count >= 3, "the records of v2 waited")
    assert running.ids() == {i for i in ids if i.endswith("-0-v1")}, "a partition went past its waiting record"
    assert http.register(subject, schema_text(2), SchemaFormat.AVRO).version == 2
    running.thread.join(120)
    assert not running.thread.is_alive() and running.error is None, repr(running.error)

    assert running.ids() == set(ids)
    assert records_in(kafka_bootstrap, f"{topic}.dlq") == 0
    assert committed(kafka_bootstrap, group_id, topic, 3) == log_end(kafka_bootstrap, topic, 3)
    assert running.consumer.stats[topic].dead_lettered_total == 0
    http.close()


@pytest.mark.parametrize("grace", [0, 6])
def test_a_version_never_registered_is_dead_lettered_after_the_grace_while_other_partitions_go_on(
    kafka_bootstrap, registry_url, make_topic, group_id, unique_name, grace
):
    subject = unique_name("shipments")
    http = ConfluentHttpRegistry(registry_url)
    http.register(subject, schema_text(1), SchemaFormat.AVRO)
    topic = make_topic("never", partitions=2)
    before, after = ["p0-before"], [f"p0-after-{i}" for i in range(5)]
    others = [f"p1-{i}" for i in range(40)]
    produce(
        kafka_bootstrap,
        topic,
        [
            envelope_bytes("shipments", 1, sample(1), message_id=before[0]),
            envelope_bytes("shipments", 9, sample(1), message_id="p0-v9"),
            *(envelope_bytes("shipments", 1, sample(1), message_id=m) for m in after),
        ],
        partition=0,
    )
    produce(
        kafka_bootstrap, topic, [envelope_bytes("shipments", 1, sample(1), message_id=m) for m in others], partition=1
    )

    running = Running(
        consumer_for(kafka_bootstrap, group_id, CachedRegistry(http), subject, grace=grace, stop_when_idle=True), topic
    )
    running.thread.join(120)
    assert not running.thread.is_alive() and running.error is None, repr(running.error)

    assert running.ids() == {*before, *after, *others}
    (dead,) = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=1)
    letter = dead.json()
    error = letter["error"]
    assert letter["original_message"]["header"]["messageId"] == "p0-v9"
    assert error["stage"] == "schema" and "version 9" in error["reason"]
    assert error["details"][0]["grace_s"] == grace
    if grace:
        assert (
            f"still unknown after {error['details'][0]['unknown_for_s']:.1f}s of asking again "
            f"(EPISTLE_UNKNOWN_SCHEMA_GRACE_S={grace})" in error["reason"]
        )
        assert error["details"][0]["unknown_for_s"] >= grace
        # While partition 0 waited, partition 1 was handled; partition 0's later records waited behind it.
        handled_at = {message_id: at for message_id, _, at in running.handled}
        p1_done = max(handled_at[m] for m in others)
        p0_resumed = min(handled_at[m] for m in after)
        assert p1_done < p0_resumed
        assert p0_resumed - handled_at[before[0]] >= grace
    else:
        assert "not waited for (EPISTLE_UNKNOWN_SCHEMA_GRACE_S=0)" in error["reason"]
    assert committed(kafka_bootstrap, group_id, topic, 2) == log_end(kafka_bootstrap, topic, 2) == {0: 7, 1: 40}
    http.close()


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory) -> Iterator[PrivateRegistry]:
    if os.environ.get("SCHEMA_REGISTRY_URL"):
        pytest.skip("an external registry is configured (SCHEMA_REGISTRY_URL): this test restarts its own")
    port = _free_port()
    env = {
        **os.environ,
        "EPISTLE_SERVICES_DIR": str(tmp_path_factory.mktemp("services")),
        "EPISTLE_REGISTRY_PORT": str(port),
    }
    registry = PrivateRegistry(f"http://127.0.0.1:{port}/apis/ccompat/v7", env)
    registry.up()
    try:
        yield registry
    finally:
        registry.down()


@pytest.mark.reliability
@pytest.mark.timeout(900)
def test_registry_restarted_empty_and_repopulated_during_consumption(
    private_registry, kafka_bootstrap, make_topic, group_id, unique_name, waits
):
    """The registry restarted with in-memory storage (empty), the schemas
    registered again a few seconds later. Records of a version the consumer had not resolved yet arrive in
    that window: every one is handled once the schemas are back, none is dead-lettered."""
    subject = unique_name("shipments")
    http = ConfluentHttpRegistry(private_registry.url, max_attempts=2, backoff_initial_s=0.05, timeout_s=2)
    for version in (1, 2):
        http.register(subject, schema_text(version), SchemaFormat.AVRO)
    topic = make_topic("restart", partitions=3)
    first = [f"a-{i}" for i in range(300)]
    produce(
        kafka_bootstrap,
        topic,
        [(str(i).encode(), envelope_bytes("shipments", 1, sample(1), message_id=m)) for i, m in enumerate(first)],
    )
    running = Running(consumer_for(kafka_bootstrap, group_id, CachedRegistry(http), subject, grace=120), topic)
    try:
        running.wait_for(lambda: running.ids() >= set(first), "the first records were handled")

        private_registry.down()
        second = [f"b-{i}" for i in range(600)]  # v2 (never resolved by this consumer) and v1 (cached)
        produce(
            kafka_bootstrap,
            topic,
            [
                (
                    str(i).encode(),
                    envelope_bytes("shipments", 2 if i % 2 else 1, sample(2 if i % 2 else 1), message_id=m),
                )
                for i, m in enumerate(second)
            ],
        )
        private_registry.up()  # back, and empty
        running.wait_for(
            lambda: waits.count >= 3, "records waited for a schema the empty registry lacks", timeout_s=180
        )
        assert not running.ids() >= set(second)
        for version in (1, 2):  # repopulated, as an operator or a deploy script would
            assert http.register(subject, schema_text(version), SchemaFormat.AVRO).version == version
        running.wait_for(lambda: running.ids() >= set(second), "every record was handled after the re-registration")
    finally:
        running.stop()
    assert running.ids() == set(first) | set(second)
    assert records_in(kafka_bootstrap, f"{topic}.dlq") == 0
    assert running.consumer.stats[topic].dead_lettered_total == 0
    assert committed(kafka_bootstrap, group_id, topic, 3) == log_end(kafka_bootstrap, topic, 3)
    print(
        f"\nregistry restart: {waits.count} waits for a schema not known yet, {len(running.handled)} handled "
        f"({len(running.handled) - len(running.ids())} twice), 0 dead-lettered"
    )
    http.close()


def draining(bootstrap: str, group: str, **options) -> KafkaConsumer:
    """A consumer of the repository's schemas/ folder that stops once the topic is drained."""
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
        commit_interval_s=0.2,
        **options,
    )


# --- a number beyond the double range ------------------------------------------------------------------


def test_a_number_beyond_the_double_range_is_dead_lettered_at_validation(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("doubles")
    valid = envelope_bytes("shipments", 1, sample(1, 1), message_id="ok")
    assert b'"lengthCm":30.0' in valid
    hostile = {
        "plus": valid.replace(b'"lengthCm":30.0', b'"lengthCm":1e400').replace(b'"ok"', b'"plus"'),
        "minus": valid.replace(b'"widthCm":20.5', b'"widthCm":-1e400').replace(b'"ok"', b'"minus"'),
    }
    produce(kafka_bootstrap, topic, [valid, *hostile.values()])
    running = Running(draining(kafka_bootstrap, group_id), topic)
    running.thread.join(120)
    assert running.error is None and running.ids() == {"ok"}
    by_value = {value: name for name, value in hostile.items()}
    dead = {
        by_value[original_record(d.value, d.key, d.headers).value]: d
        for d in read_topic(kafka_bootstrap, f"{topic}.dlq", expected=2)
    }  # the exact original bytes
    assert set(dead) == {"plus", "minus"}
    for name, field in (("plus", "lengthCm"), ("minus", "widthCm")):
        letter = json.loads(dead[name].value, parse_constant=_not_json)  # strict JSON: no Infinity in it
        error = letter["error"]
        path = f"$.parcels[0].dimensions['com.epistle.shipments.Dimensions'].{field}"
        assert error["stage"] == "validation"
        assert error["reason"].startswith(f"{path}: number beyond the double range"), error["reason"]
        assert error["details"][0]["path"] == path
    assert committed(kafka_bootstrap, group_id, topic) == {0: 3}


def _not_json(name: str) -> None:
    raise AssertionError(f"{name} in a dead letter: not JSON")


# --- a schemaName the local folder can never hold --------------------------------------------------------


def test_a_schema_name_the_folder_can_never_hold_is_dead_lettered_without_a_grace(
    kafka_bootstrap, make_topic, group_id, waits
):
    """With the default grace (30 s) and the local folder: path-like, control-character and overlong
    schemaNames go to the dead-letter topic at once (stage ``schema``, their exact bytes) and the records
    behind them are handled; nothing waits (no 'not yet known' line)."""
    topic = make_topic("never-names")
    names = ["../shipments", "shipments/../../etc/passwd", "shipments\x00", "s" * 5_000]
    hostile = [
        envelope_bytes(name, 1, sample(1), message_type="ShipmentCreated", message_id=f"bad-{i}")
        for i, name in enumerate(names)
    ]
    assert [json.loads(value)["header"]["schemaName"] for value in hostile] == names
    produce(kafka_bootstrap, topic, [*hostile, envelope_bytes("shipments", 1, sample(1), message_id="ok")])
    running = Running(draining(kafka_bootstrap, group_id, unknown_schema_grace_s=30), topic)
    running.thread.join(120)
    assert running.error is None and running.ids() == {"ok"}
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=len(hostile))
    assert sorted(original_record(d.value, d.key, d.headers).value for d in dead) == sorted(hostile)
    for letter in dead:
        error = json.loads(letter.value)["error"]
        assert error["stage"] == "schema" and "can never be in" in error["reason"], error["reason"]
        assert error["details"][0]["path"] == "/header/schemaName"
    assert waits.count == 0
    assert committed(kafka_bootstrap, group_id, topic) == {0: len(hostile) + 1}


def test_a_schema_name_the_http_registry_refuses_is_dead_lettered_without_a_grace(
    kafka_bootstrap, registry_url, make_topic, group_id, unique_name, waits
):
    """The real Apicurio refuses a subject over 512 characters (HTTP 400), a longer one in the URL (414) and
    one with a newline (400) while it answers everything else: such a record is dead-lettered at stage
    ``schema`` at once, with the default grace (30 s), and the records behind it are handled (before, the
    refusal read as the registry being unavailable: its partition waited for ever)."""
    subject = unique_name("shipments")
    http = ConfluentHttpRegistry(registry_url)
    http.register(subject, schema_text(1), SchemaFormat.AVRO)
    topic = make_topic("refused-names")
    names = ["s" * 600, "s" * 6_000, "shipments\n"]
    hostile = [
        envelope_bytes(name, 1, sample(1), message_type="ShipmentCreated", message_id=f"bad-{i}")
        for i, name in enumerate(names)
    ]
    produce(kafka_bootstrap, topic, [*hostile, envelope_bytes("shipments", 1, sample(1), message_id="ok")])
    running = Running(
        KafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=group_id,
            registry=CachedRegistry(http),
            subject_strategy=lambda ctx: subject if ctx.schema_name == "shipments" else ctx.schema_name,
            stop_when_idle=True,
            commit_interval_s=0.2,
            unknown_schema_grace_s=30,
        ),
        topic,
    )
    running.thread.join(120)
    assert not running.thread.is_alive() and running.error is None, repr(running.error)
    assert running.ids() == {"ok"}
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq", expected=len(hostile))
    assert sorted(original_record(d.value, d.key, d.headers).value for d in dead) == sorted(hostile)
    for letter in dead:
        error = json.loads(letter.value)["error"]
        assert error["stage"] == "schema" and "the registry refuses the name (HTTP" in error["reason"], error
    assert waits.count == 0
    assert committed(kafka_bootstrap, group_id, topic) == {0: len(hostile) + 1}
