"""The outcomes table (docs/contracts.md): done, each malformed kind dead-lettered with its stage and its
original bytes, retries and their exhaustion, ``Retry``/``DeadLetter``, and ``ErrorPolicy.STOP``."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from tests.behaviour.backends import Backend, order, run, sample
from toolkit.consumer import ConsumerStopped, DeadLetter, Middleware, Retry, original_record
from toolkit.consumer.outcomes import RetryAfter
from toolkit.errors import HandlerTimedOut
from toolkit.testing import envelope


class Recorder:
    """A handler that records ``(messageId, offset, attempt)`` and plays a script of results per messageId
    (True once the script is spent); an exception in the script is raised."""

    def __init__(self, script: dict[str, list] | None = None) -> None:
        self.script = script or {}
        self.calls: list[tuple[str, int, int]] = []

    async def __call__(self, message) -> bool:
        self.calls.append((message.header.message_id, message.offset, message.attempt))
        results = self.script.get(message.header.message_id)
        result = results.pop(0) if results else True
        if isinstance(result, BaseException):
            raise result
        return result


def test_valid_records_are_handled_and_committed_to_the_end(backend: Backend) -> None:
    topic = backend.topic(partitions=2)
    backend.produce(topic, [order(f"a{i}") for i in range(4)], partition=0)
    backend.produce(topic, [order(f"b{i}", version=2) for i in range(3)], partition=1)
    handler = Recorder()
    consumer = backend.consumer()
    consumer.register_handler(topic, handler)
    run(consumer)
    assert sorted(c[0] for c in handler.calls) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2"]
    assert all(attempt == 1 for *_, attempt in handler.calls)
    assert consumer.stats[topic].processed == 7 and consumer.stats[topic].dead_lettered_total == 0
    assert backend.committed(topic, 2) == {0: 4, 1: 3}
    assert backend.dead_letters(topic) == []


def test_each_malformed_kind_is_dead_lettered_with_its_stage_and_original_bytes(backend: Backend) -> None:
    topic = backend.topic()
    body = sample(1)
    placed = {"message_type": "OrderPlaced"}
    records = [
        order("m0", **placed),
        b"not json",  # decode
        order("m2", **placed),
        json.dumps({"header": {"schemaName": "orders"}, "body": body}).encode(),  # envelope
        envelope("orders", 99, body, message_id="m4", **placed),  # schema: no version 99 (grace 0)
        envelope("orders", 1, sample(1, "invalid", "missing-customer"), message_id="m5", **placed),  # validation
        envelope("orders", 1, body, message_id="m6", message_type="OrderRefunded"),  # routing: no handler
        order("m7", **placed),
    ]
    # In name order: an AMQP header table is a map, and its names go on the wire sorted
    headers = [("empty", None), ("trace", b"t-1")]
    backend.produce(topic, [(f"k{i}".encode(), value) for i, value in enumerate(records)], headers=headers)
    handler = Recorder()
    consumer = backend.consumer(unknown_schema_grace_s=0)
    consumer.register_handler(topic, handler, "OrderPlaced")  # only this message type has a handler
    run(consumer)

    assert [c[0] for c in handler.calls] == ["m0", "m2", "m7"]
    stages = {1: "decode", 3: "envelope", 4: "schema", 5: "validation", 6: "routing"}
    dead = backend.dead_letters(topic)
    assert [d.json()["source"]["offset"] for d in dead] == list(stages)
    for dl in dead:
        offset = dl.json()["source"]["offset"]
        assert dl.json()["error"]["stage"] == stages[offset], offset
        assert dl.key == f"k{offset}".encode()
        original = original_record(dl.value)
        assert (original.topic, original.partition, original.offset) == (topic, 0, offset)
        assert original.value == records[offset] and original.key == f"k{offset}".encode()
        assert original.headers == headers
    assert consumer.stats[topic].dead_lettered == {stage: 1 for stage in stages.values()}
    assert consumer.stats[topic].processed == 3
    assert backend.committed(topic) == {0: 8}


def test_false_twice_then_true_is_retried_in_order(backend: Backend) -> None:
    topic = backend.topic()
    backend.produce(topic, [order(f"m{i}") for i in range(3)])
    handler = Recorder({"m1": [False, False]})
    consumer = backend.consumer()
    consumer.register_handler(topic, handler)
    run(consumer)
    assert handler.calls == [("m0", 0, 1), ("m1", 1, 1), ("m1", 1, 2), ("m1", 1, 3), ("m2", 2, 1)]
    stats = consumer.stats[topic]
    assert (stats.retried, stats.processed, stats.dead_lettered_total) == (2, 3, 0)
    assert backend.committed(topic) == {0: 3}
    assert backend.dead_letters(topic) == []


def test_retries_exhausted_are_dead_lettered_with_the_attempts(backend: Backend) -> None:
    topic = backend.topic()
    raw = order("m0")
    backend.produce(topic, [(b"key-0", raw), (None, order("m1"))])
    handler = Recorder({"m0": [False, False, False]})
    consumer = backend.consumer()
    consumer.register_handler(topic, handler)
    run(consumer)
    assert handler.calls == [("m0", 0, 1), ("m0", 0, 2), ("m0", 0, 3), ("m1", 1, 1)]
    (dl,) = backend.dead_letters(topic)
    value = dl.json()
    assert value["error"]["stage"] == "retries_exhausted" and value["source"]["attempts"] == 3
    assert value["source"]["consumerGroup"] == backend.group
    assert dl.key == b"key-0" and original_record(dl.value).value == raw
    assert consumer.stats[topic].retried == 2
    assert consumer.stats[topic].dead_lettered == {"retries_exhausted": 1}
    assert backend.committed(topic) == {0: 2}


def test_retry_with_its_own_delay_and_dead_letter_with_a_reason(backend: Backend) -> None:
    topic = backend.topic()
    backend.produce(topic, [order("m0"), order("m1"), order("m2")])
    delays: list[float | None] = []

    class Delays(Middleware):
        def on_outcome(self, record, message, outcome, attempt, delay_s):
            if isinstance(outcome, RetryAfter):
                delays.append(outcome.delay_s)

    handler = Recorder(
        {
            "m0": [Retry("stock service busy", delay_s=0.05)],
            "m1": [DeadLetter("no such customer", details={"customerId": "c-1"})],
        }
    )
    consumer = backend.consumer(middleware=[Delays()])
    consumer.register_handler(topic, handler)
    run(consumer)
    assert handler.calls == [("m0", 0, 1), ("m0", 0, 2), ("m1", 1, 1), ("m2", 2, 1)]  # DeadLetter: no retry
    assert delays == [0.05]  # Retry's own delay, not the policy's (0.02)
    (dl,) = backend.dead_letters(topic)
    error = dl.json()["error"]
    assert (error["stage"], error["reason"], error["details"]) == ("handler", "no such customer", {"customerId": "c-1"})
    assert dl.json()["source"]["offset"] == 1 and dl.json()["source"]["attempts"] == 1
    stats = consumer.stats[topic]
    assert (stats.retried, stats.processed, stats.dead_lettered) == (1, 2, {"handler": 1})
    assert backend.committed(topic) == {0: 3}


def test_stop_policy_raises_and_commits_nothing_past_the_failing_record(backend: Backend) -> None:
    topic = backend.topic()
    backend.produce(topic, [order("m0"), b"garbage", order("m2")])
    handler = Recorder()
    consumer = backend.consumer(error_policy="STOP")
    consumer.register_handler(topic, handler)
    with pytest.raises(ConsumerStopped) as stopped:
        run(consumer)
    assert (stopped.value.stage, stopped.value.offset) == ("decode", 1)
    assert handler.calls == [("m0", 0, 1)]
    assert backend.committed(topic) == {0: 1}
    assert backend.dead_letters(topic) == []


def test_a_dead_letter_over_the_consumers_limit_is_sent_shortened(backend: Backend) -> None:
    topic = backend.topic()
    big = json.dumps({"junk": "x" * 3500}).encode()  # JSON, not an envelope: kept as JSON and as base64 in
    # the full form (over 8,000 bytes), as base64 only in the shortened one (under)
    backend.produce(topic, [big, order("m1")])
    handler = Recorder()
    consumer = backend.consumer(dlq_max_message_bytes=8000)
    consumer.register_handler(topic, handler)
    run(consumer)
    (dl,) = backend.dead_letters(topic)
    assert "shortened" in dl.json() and len(dl.value) <= 8000
    assert original_record(dl.value).value == big
    assert handler.calls == [("m1", 1, 1)]
    assert backend.committed(topic) == {0: 2}


def test_an_async_handler_past_its_timeout_is_cancelled_retried_then_dead_lettered(backend: Backend) -> None:
    """A handler that never finishes (a hung call, a lost wake-up) does not hold its partition for good:
    each attempt is cancelled at ``handler_timeout_s`` and counts as a retryable failure."""
    topic = backend.topic()
    backend.produce(topic, [order("m0"), order("m1"), order("m2")])
    calls: list[tuple[str, int]] = []
    cancelled: list[int] = []

    async def handler(message) -> None:
        calls.append((message.header.message_id, message.attempt))
        if message.header.message_id == "m1":
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                cancelled.append(message.attempt)
                raise

    consumer = backend.consumer(handler_timeout_s=0.3)
    consumer.register_handler(topic, handler)
    run(consumer)
    assert calls == [("m0", 1), ("m1", 1), ("m1", 2), ("m1", 3), ("m2", 1)]
    assert cancelled == [1, 2, 3]
    (dl,) = backend.dead_letters(topic)
    error = dl.json()["error"]
    assert error["stage"] == "retries_exhausted"
    assert "HandlerTimedOut: the handler did not finish within 0.3 s" in error["reason"]
    assert error["reason"].endswith("(attempt 3 of 3)")
    stats = consumer.stats[topic]
    assert (stats.processed, stats.retried, stats.dead_lettered) == (2, 2, {"retries_exhausted": 1})
    assert backend.committed(topic) == {0: 3}


def test_a_plain_function_past_its_timeout_keeps_its_worker_until_it_returns(backend: Backend) -> None:
    """A plain function cannot be stopped: its attempt fails at the limit, and the retry waits for the worker
    it still holds (max_workers=1) instead of timing out in a queue before it ever ran."""
    topic = backend.topic()
    backend.produce(topic, [order("m0"), order("m1"), order("m2")])
    events: list[tuple[str, str, int]] = []

    def handler(message) -> None:
        key = message.header.message_id, message.attempt
        events.append(("start", *key))
        if key == ("m1", 1):
            time.sleep(1.0)  # past the 0.3 s limit, then returns (its result ignored)
        events.append(("end", *key))

    consumer = backend.consumer(handler_timeout_s=0.3, max_workers=1)
    consumer.register_handler(topic, handler)
    run(consumer)
    assert events == [
        ("start", "m0", 1),
        ("end", "m0", 1),
        ("start", "m1", 1),
        ("end", "m1", 1),  # the first attempt's thread ended before the retry started
        ("start", "m1", 2),
        ("end", "m1", 2),
        ("start", "m2", 1),
        ("end", "m2", 1),
    ]
    stats = consumer.stats[topic]
    assert (stats.processed, stats.retried, stats.dead_lettered_total) == (3, 1, 0)
    assert backend.dead_letters(topic) == []
    assert backend.committed(topic) == {0: 3}


def test_a_handlers_own_timeout_error_is_an_ordinary_failure(backend: Backend) -> None:
    topic = backend.topic()
    backend.produce(topic, [order("m0")])

    async def handler(message) -> None:
        raise TimeoutError("the payment service did not answer")

    consumer = backend.consumer(handler_timeout_s=30)
    consumer.register_handler(topic, handler)
    run(consumer)
    (dl,) = backend.dead_letters(topic)
    assert dl.json()["error"]["stage"] == "handler"
    assert dl.json()["error"]["reason"] == "TimeoutError: the payment service did not answer"


def test_an_async_handler_that_swallows_the_cancel_still_times_out(backend: Backend) -> None:
    topic = backend.topic()
    backend.produce(topic, [order("m0"), order("m1")])
    calls: list[tuple[str, int]] = []

    async def handler(message) -> None:
        calls.append((message.header.message_id, message.attempt))
        if message.header.message_id == "m0":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return  # (a handler that must not be cancelled: it returns instead)

    consumer = backend.consumer(handler_timeout_s=0.2)
    consumer.register_handler(topic, handler)
    run(consumer)
    assert calls == [("m0", 1), ("m0", 2), ("m0", 3), ("m1", 1)]
    (dl,) = backend.dead_letters(topic)
    assert "HandlerTimedOut" in dl.json()["error"]["reason"]
    assert backend.committed(topic) == {0: 2}


def test_a_retry_on_another_worker_gets_its_own_message_while_the_late_attempt_runs(backend: Backend) -> None:
    """With a second worker free, the retry does not wait for the late thread: each attempt reads its own
    message (the attempt number the late one sees at its end is still its own)."""
    topic = backend.topic()
    backend.produce(topic, [order("m0"), order("m1")])
    seen: list[tuple[str, int, int]] = []  # (messageId, attempt at the start, attempt at the end)
    lock = threading.Lock()

    def handler(message) -> None:
        first = message.attempt
        if (message.header.message_id, first) == ("m0", 1):
            time.sleep(1.0)
        with lock:
            seen.append((message.header.message_id, first, message.attempt))

    consumer = backend.consumer(handler_timeout_s=0.3, max_workers=2)
    consumer.register_handler(topic, handler)
    run(consumer)  # (may end before the late attempt does: its record was retried and done meanwhile)
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(seen) == [("m0", 1, 1), ("m0", 2, 2), ("m1", 1, 1)]
    stats = consumer.stats[topic]
    assert (stats.processed, stats.retried, stats.dead_lettered_total) == (2, 1, 0)


def test_a_handler_raising_handler_timed_out_itself_keeps_no_worker(backend: Backend) -> None:
    topic = backend.topic()
    backend.produce(topic, [order(f"m{i}") for i in range(3)])
    calls: list[str] = []

    async def handler(message) -> None:
        calls.append(message.header.message_id)
        if message.header.message_id == "m0":
            raise HandlerTimedOut(1.0, still_running=True)  # (its own, not the limit's: a slot is not kept)

    consumer = backend.consumer(handler_timeout_s=30, max_workers=1)
    consumer.register_handler(topic, handler)
    run(consumer)
    assert calls == ["m0", "m0", "m0", "m1", "m2"]
    assert backend.committed(topic) == {0: 3}
