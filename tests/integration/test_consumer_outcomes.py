"""One test per row of the outcomes table (docs/contracts.md), on the real broker, with the local-folder registry
(schemas/) unless the test says otherwise."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from pathlib import Path

import pytest

from tests.kafka_checks import records_in
from toolkit.consumer import BaseHandler, KafkaConsumer, RetryPolicy
from toolkit.consumer.deadletter import original_record
from toolkit.consumer.testing import committed, envelope_bytes, produce, read_topic
from toolkit.errors import RegistryUnavailable, RetryableError
from toolkit.registry import CachedRegistry, LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
FAST_RETRY = RetryPolicy(max_attempts=3, initial_s=0.05, max_s=0.2)


def sample(schema: str, version: int, index: int = 0) -> dict:
    files = sorted((SCHEMAS / schema / "samples" / str(version) / "valid").glob("*.json"))
    return json.loads(files[index].read_text())


def order(version: int = 1, **header) -> bytes:
    return envelope_bytes("orders", version, sample("orders", version), **header)


def make_consumer(kafka_bootstrap, group_id, topic, handler, registry=None, **kw) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group_id,
        registry=registry or LocalFolderRegistry(SCHEMAS),
        retry=kw.pop("retry", FAST_RETRY),
        stop_when_idle=kw.pop("stop_when_idle", True),
        commit_interval_s=0.2,
        **kw,
    )
    if handler is not None:
        consumer.register_handler(topic, handler)
    return consumer


def run(consumer: KafkaConsumer, timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(consumer.start(), timeout))


class Recorder(BaseHandler):
    """Returns the scripted results per messageId (default True) and records every call."""

    def __init__(self, script: dict[str, list] | None = None):
        self.script = script or {}
        self.calls: list[tuple[str, int, int]] = []

    async def _process_message(self, message):
        self.calls.append((message.header.message_id, message.offset, message.attempt))
        results = self.script.get(message.header.message_id)
        result = results.pop(0) if results else True
        if isinstance(result, BaseException):
            raise result
        return result


def dead_letters(kafka_bootstrap, topic, expected=None):
    return read_topic(kafka_bootstrap, f"{topic}.dlq", expected=expected, timeout_s=15)


def test_done_commits_every_offset(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders", partitions=2)
    produce(kafka_bootstrap, topic, [order(1, message_id=f"m{i}") for i in range(4)], partition=0)
    produce(kafka_bootstrap, topic, [order(2, message_id=f"n{i}") for i in range(3)], partition=1)
    handler = Recorder()
    consumer = make_consumer(kafka_bootstrap, group_id, topic, handler)
    run(consumer)
    expected = [f"m{i}" for i in range(4)] + [f"n{i}" for i in range(3)]
    assert sorted(c[0] for c in handler.calls) == sorted(expected)
    assert consumer.stats[topic].processed == 7 and consumer.stats[topic].dead_lettered_total == 0
    assert committed(kafka_bootstrap, group_id, topic, 2) == {0: 4, 1: 3}


def test_body_is_the_generated_model_and_header_is_snake_case(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders")
    produce(
        kafka_bootstrap, topic, [(b"k", order(2, message_id="m1", correlation_id="c1"))], headers=[("trace", b"t1")]
    )
    seen = []

    def handler(message):  # a plain function works as a handler
        seen.append(message)

    run(make_consumer(kafka_bootstrap, group_id, topic, handler))
    (message,) = seen
    assert type(message.body).__module__ == "generated_models.orders.v2"
    assert message.header.correlation_id == "c1" and message.header.schema_version == "2"
    assert (message.topic, message.partition, message.offset, message.key) == (topic, 0, 0, b"k")
    assert ("trace", b"t1") in message.headers and message.raw.startswith(b'{"header"')


def test_false_then_success_is_retried_in_order(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [order(1, message_id=f"m{i}") for i in range(3)])
    handler = Recorder({"m1": [False, False]})
    consumer = make_consumer(kafka_bootstrap, group_id, topic, handler)
    run(consumer)
    assert handler.calls == [("m0", 0, 1), ("m1", 1, 1), ("m1", 1, 2), ("m1", 1, 3), ("m2", 2, 1)]
    stats = consumer.stats[topic]
    assert stats.retried == 2 and stats.processed == 3 and stats.dead_lettered_total == 0
    assert committed(kafka_bootstrap, group_id, topic) == {0: 3}


def test_false_until_exhausted_is_dead_lettered_with_attempts(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders")
    raw = order(1, message_id="m0")
    produce(kafka_bootstrap, topic, [(b"key-0", raw), (None, order(1, message_id="m1"))])
    handler = Recorder({"m0": [False, False, False]})
    consumer = make_consumer(kafka_bootstrap, group_id, topic, handler)
    run(consumer)
    (dl,) = dead_letters(kafka_bootstrap, topic, expected=1)
    value = dl.json()
    assert value["error"]["stage"] == "retries_exhausted" and value["source"]["attempts"] == 3
    assert value["source"]["offset"] == 0 and value["source"]["consumerGroup"] == group_id
    assert dl.key == b"key-0" and original_record(dl.value, dl.key, dl.headers).value == raw
    assert [c[0] for c in handler.calls] == ["m0", "m0", "m0", "m1"]
    assert consumer.stats[topic].dead_lettered == {"retries_exhausted": 1}
    assert committed(kafka_bootstrap, group_id, topic) == {0: 2}


def test_retryable_error_is_retried(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [order(1, message_id="m0")])
    handler = Recorder({"m0": [RetryableError("database busy")]})
    consumer = make_consumer(kafka_bootstrap, group_id, topic, handler)
    run(consumer)
    assert [c[2] for c in handler.calls] == [1, 2]
    assert consumer.stats[topic].retried == 1 and consumer.stats[topic].processed == 1
    assert committed(kafka_bootstrap, group_id, topic) == {0: 1}


def test_other_exception_is_dead_lettered_at_once(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [order(1, message_id="m0"), order(1, message_id="m1")])
    handler = Recorder({"m0": [KeyError("no such customer")]})
    consumer = make_consumer(kafka_bootstrap, group_id, topic, handler)
    run(consumer)
    (dl,) = dead_letters(kafka_bootstrap, topic, expected=1)
    value = dl.json()
    assert value["error"]["stage"] == "handler" and value["error"]["type"] == "builtins.KeyError"
    assert value["original_message"]["header"]["messageId"] == "m0"
    headers = dict(dl.headers)
    assert headers["kafka_dlt-exception-fqcn"] == b"builtins.KeyError"
    assert b"no such customer" in headers["kafka_dlt-exception-stacktrace"]
    assert len(handler.calls) == 2
    assert committed(kafka_bootstrap, group_id, topic) == {0: 2}


def test_malformed_is_dead_lettered_at_once(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [b"\xff not json", order(1, message_id="ok")])
    handler = Recorder()
    consumer = make_consumer(kafka_bootstrap, group_id, topic, handler)
    run(consumer)
    (dl,) = dead_letters(kafka_bootstrap, topic, expected=1)
    value = dl.json()
    assert value["error"]["stage"] == "decode" and value["original_encoding"] == "base64"
    assert base64.b64decode(value["original_message"]) == b"\xff not json"
    assert [c[0] for c in handler.calls] == ["ok"]
    assert committed(kafka_bootstrap, group_id, topic) == {0: 2}


def test_no_handler_is_dead_lettered_with_stage_routing(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders")
    produce(
        kafka_bootstrap,
        topic,
        [
            order(1, message_type="OrderCreated", message_id="a"),
            order(1, message_type="OrderCancelled", message_id="b"),
        ],
    )
    handler = Recorder()
    consumer = make_consumer(kafka_bootstrap, group_id, topic, None)
    consumer.register_handler(topic, handler, message_type="OrderCreated")
    run(consumer)
    (dl,) = dead_letters(kafka_bootstrap, topic, expected=1)
    assert dl.json()["error"]["stage"] == "routing"
    assert dl.json()["original_message"]["header"]["messageId"] == "b"
    assert [c[0] for c in handler.calls] == ["a"]


def test_handler_declaring_accepted_schemas(kafka_bootstrap, make_topic, group_id):
    class V2Only(Recorder):
        accepts = {"orders": {2}}

    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [order(1, message_id="v1"), order(2, message_id="v2")])
    handler = V2Only()
    consumer = make_consumer(kafka_bootstrap, group_id, topic, handler)
    run(consumer)
    (dl,) = dead_letters(kafka_bootstrap, topic, expected=1)
    assert dl.json()["error"]["stage"] == "routing" and "v1" in dl.json()["error"]["reason"]
    assert [c[0] for c in handler.calls] == ["v2"]


class FlakyRegistry:
    """Implements the SchemaRegistry lookups; raises RegistryUnavailable until ``healthy`` is set."""

    def __init__(self, inner):
        self.inner = inner
        self.healthy = threading.Event()
        self.failures = 0

    def get(self, subject, version):
        if not self.healthy.is_set():
            self.failures += 1
            raise RegistryUnavailable("connection refused (simulated)", subject=subject, version=version)
        return self.inner.get(subject, version)

    def latest(self, subject):
        return self.get(subject, self.inner.versions(subject)[-1])

    def subjects(self):
        return self.inner.subjects()

    def versions(self, subject):
        return self.inner.versions(subject)

    def register(self, *args):
        raise NotImplementedError

    def check_compatibility(self, *args, **kwargs):
        raise NotImplementedError

    def close(self):
        pass


def test_registry_unavailable_pauses_never_dead_letters(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [order(1, message_id=f"m{i}") for i in range(3)])
    flaky = FlakyRegistry(LocalFolderRegistry(SCHEMAS))
    handler = Recorder()
    consumer = make_consumer(kafka_bootstrap, group_id, topic, handler, registry=CachedRegistry(flaky))
    observed = {}

    async def scenario():
        task = asyncio.create_task(consumer.start())
        deadline = time.monotonic() + 20
        while flaky.failures < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # several commit intervals pass during the outage
        observed["calls"] = list(handler.calls)
        observed["committed"] = await asyncio.to_thread(committed, kafka_bootstrap, group_id, topic)
        flaky.healthy.set()
        await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    assert flaky.failures >= 3
    assert observed["calls"] == [] and observed["committed"][0] < 0  # nothing handled, nothing committed
    assert [c[0] for c in handler.calls] == ["m0", "m1", "m2"]
    stats = consumer.stats[topic]
    assert stats.paused >= 3 and stats.dead_lettered_total == 0 and stats.processed == 3
    assert committed(kafka_bootstrap, group_id, topic) == {0: 3}
    assert records_in(kafka_bootstrap, f"{topic}.dlq") == 0


@pytest.mark.parametrize("policy", ["STOP"])
def test_stop_policy_stops_and_commits_nothing_past(kafka_bootstrap, make_topic, group_id, policy):
    from toolkit.consumer import ConsumerStopped

    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [order(1, message_id="m0"), b"garbage", order(1, message_id="m2")])
    handler = Recorder()
    consumer = make_consumer(kafka_bootstrap, group_id, topic, handler, error_policy=policy)
    with pytest.raises(ConsumerStopped) as info:
        run(consumer)
    assert info.value.stage == "decode" and info.value.offset == 1
    assert committed(kafka_bootstrap, group_id, topic) == {0: 1}
    assert records_in(kafka_bootstrap, f"{topic}.dlq") == 0


def test_dead_letter_produce_failure_commits_nothing_until_acknowledged(
    kafka_bootstrap, make_topic, group_id, monkeypatch
):
    from toolkit.consumer import kafka_io
    from toolkit.errors import BrokerUnavailable

    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [b"not json", order(1, message_id="m1")])
    real_send = kafka_io.DeadLetterSender.send
    attempts = []
    seen_committed = []

    def flaky_send(self, record, **kwargs):
        attempts.append(record.topic)
        if len(attempts) <= 3:  # the broker refuses the first three tries
            seen_committed.append(committed(kafka_bootstrap, group_id, topic)[0])
            future = self._loop.create_future()
            future.set_exception(BrokerUnavailable("simulated: broker down"))
            return future
        return real_send(self, record, **kwargs)

    monkeypatch.setattr(kafka_io.DeadLetterSender, "send", flaky_send)
    handler = Recorder()
    consumer = make_consumer(kafka_bootstrap, group_id, topic, handler)
    run(consumer)
    assert len(attempts) == 4 and consumer.stats[topic].dead_letter_send_failures == 3
    assert all(offset < 0 for offset in seen_committed)  # nothing committed while it failed
    assert consumer.stats[topic].dead_lettered == {"decode": 1}
    assert len(dead_letters(kafka_bootstrap, topic, expected=1)) == 1
    assert committed(kafka_bootstrap, group_id, topic) == {0: 2}


def test_from_settings_builds_registry_models_and_policies(kafka_bootstrap, make_topic, group_id, admin):
    from toolkit.settings import load_settings

    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [order(2, message_id="m0"), b"[]"])
    settings = load_settings(
        env_file=None,
        kafka__bootstrap_servers=kafka_bootstrap,
        kafka__group_id=group_id,
        consumer__schemas_dir=SCHEMAS,
        consumer__dlq_suffix=".dead",
        consumer__max_workers=2,
        consumer__ordering="KEY",
        registry__url="",
    )
    consumer = KafkaConsumer.from_settings(settings, stop_when_idle=True)
    assert (consumer.group_id, consumer.max_workers, consumer.ordering.value) == (group_id, 2, "KEY")
    seen = []
    consumer.register_handler(topic, seen.append)
    run(consumer)
    assert [type(m.body).__module__ for m in seen] == ["generated_models.orders.v2"]
    (dl,) = read_topic(kafka_bootstrap, f"{topic}.dead", expected=1)
    admin.delete_topics([f"{topic}.dead"])  # the fixture cleans up only the default .dlq suffix
    assert dl.json()["error"]["stage"] == "envelope"


def test_a_handler_registered_while_running_gets_the_next_records(kafka_bootstrap, make_topic, group_id):
    """Routes are remembered per header after the first record; registering a handler drops them."""
    topic = make_topic("orders")
    produce(
        kafka_bootstrap,
        topic,
        [order(1, message_id=f"m{i}", message_type="OrderPlaced") for i in range(6)],
        partition=0,
    )
    by_type = Recorder()
    seen_by_topic_handler: list[str] = []

    def topic_handler(message):
        seen_by_topic_handler.append(message.header.message_id)
        if message.header.message_id == "m1":
            consumer.register_handler(topic, by_type, "OrderPlaced")
        return True

    consumer = make_consumer(kafka_bootstrap, group_id, topic, topic_handler)
    run(consumer)
    assert seen_by_topic_handler == ["m0", "m1"]
    assert [mid for mid, _, _ in by_type.calls] == ["m2", "m3", "m4", "m5"]
    assert committed(kafka_bootstrap, group_id, topic) == {0: 6}
