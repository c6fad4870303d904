"""The engine's fast lane: a record whose schema is resolved goes to its ``async def`` handler without a
coroutine of the engine's own; what it does not settle (any result but done) goes on in ``_process`` with the
first attempt's result, so outcomes are the same either way."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from toolkit import KafkaConsumer, Retry
from toolkit.consumer.engine import Engine
from toolkit.consumer.middleware import Hooks, LoggingMiddleware, Middleware, StatsMiddleware
from toolkit.consumer.stats import ConsumerStats
from toolkit.registry import LocalFolderRegistry
from toolkit.testing import InMemoryBroker, InMemoryRecord, envelope

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "schemas/orders/samples/1/valid/full-card-payment.json").read_text())


def _count_process(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = Engine._process

    async def counted(self, part, msg, *args, **kwargs):
        calls.append(msg.offset())
        return await original(self, part, msg, *args, **kwargs)

    monkeypatch.setattr(Engine, "_process", counted)
    return calls


def _run(broker: InMemoryBroker, handler, **options) -> KafkaConsumer:
    consumer = KafkaConsumer(
        group_id="g",
        transport=broker.transport(),
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
        commit_interval_s=0.05,
        **options,
    )
    consumer.register_handler("orders", handler)
    asyncio.run(asyncio.wait_for(consumer.start(), 20))
    return consumer


def test_done_records_take_the_fast_lane_and_a_retried_one_goes_on_in_process(monkeypatch) -> None:
    calls = _count_process(monkeypatch)
    broker = InMemoryBroker()
    for _ in range(20):
        broker.produce("orders", envelope("orders", 1, ORDER))
    broker.produce("orders", b"{not json")  # offset 20: fails its stages, taken from the start by _process
    attempts: dict[int, int] = {}

    async def handle(message) -> None:
        attempts[message.offset] = attempts.get(message.offset, 0) + 1
        if message.offset == 5 and attempts[5] == 1:
            raise Retry("once", delay_s=0.01)

    consumer = _run(broker, handle)
    # the first (its schema is looked up off the loop), the retried record and the malformed one
    assert calls == [0, 5, 20]
    assert attempts[5] == 2 and all(attempts[o] == 1 for o in range(20) if o != 5)
    assert broker.committed("g", "orders") == 21
    assert consumer.stats["orders"].processed == 20 and consumer.stats["orders"].retried == 1
    [dead] = broker.records("orders.dlq")
    assert (dead.json()["source"]["offset"], dead.json()["error"]["stage"]) == (20, "decode")


def test_a_plain_function_handler_takes_the_full_path_and_on_record_middleware_the_fast_lane(monkeypatch) -> None:
    calls = _count_process(monkeypatch)
    broker = InMemoryBroker()
    for _ in range(3):
        broker.produce("orders", envelope("orders", 1, ORDER))
    seen: list[int] = []
    _run(broker, lambda message: seen.append(message.offset))
    assert seen == [0, 1, 2] and calls == [0, 1, 2]

    class Watch(Middleware):
        def on_record(self, record) -> None:
            seen.append(-1)

    calls.clear()

    async def handle(message) -> None:
        seen.append(message.offset)

    seen.clear()
    broker2 = InMemoryBroker()
    for _ in range(2):
        broker2.produce("orders", envelope("orders", 1, ORDER))
    _run(broker2, handle, middleware=[Watch()])
    assert seen == [-1, 0, -1, 1] and calls == [0]  # on_record runs once before each; the second is fast


def test_a_stage_raising_a_base_exception_is_an_outcome_on_the_fast_lane_too() -> None:
    """User code runs in the stages (model index, validators, subject strategy): a SystemExit raised there is
    the record's outcome (dead letter), as on the full path, and never stops the lane."""

    class Exploding:
        def get(self, schema_name: str, version: int):
            raise SystemExit("a model index that exits")

    broker = InMemoryBroker()
    for _ in range(3):
        broker.produce("orders", envelope("orders", 1, ORDER))
    handled: list[int] = []

    async def handle(message) -> None:
        handled.append(message.offset)

    _run(broker, handle, models=Exploding())
    assert handled == []
    assert [d.json()["source"]["offset"] for d in broker.records("orders.dlq")] == [0, 1, 2]
    assert broker.committed("g", "orders") == 3


def test_on_record_and_around_handler_middleware_see_every_record_and_every_attempt() -> None:
    """With both hooks: on_record once per record (before its stages), around_handler around every handler
    attempt (the retry's too); a record whose stages fail never reaches around_handler."""
    events: list[tuple[str, int]] = []

    class Watch(Middleware):
        def on_record(self, record) -> None:
            events.append(("record", record.offset()))

        async def around_handler(self, message, call_next):
            events.append(("around", message.offset))
            return await call_next(message)

    broker = InMemoryBroker()
    for _ in range(3):
        broker.produce("orders", envelope("orders", 1, ORDER))
    broker.produce("orders", b"{not json")
    attempts: dict[int, int] = {}

    async def handle(message) -> None:
        attempts[message.offset] = attempts.get(message.offset, 0) + 1
        if message.offset == 1 and attempts[1] == 1:
            raise Retry("once", delay_s=0.01)

    consumer = _run(broker, handle, middleware=[Watch()])
    assert [e for e in events if e[0] == "record"] == [("record", o) for o in range(4)]
    assert [e for e in events if e[0] == "around"] == [("around", 0), ("around", 1), ("around", 1), ("around", 2)]
    assert broker.committed("g", "orders") == 4 and consumer.stats["orders"].processed == 3


def test_a_partition_end_with_an_offset_moves_the_commit_only_past_records_it_holds() -> None:
    """An end's offset (librdkafka's, past transaction markers) lets the commit reach it once every record is
    done; never while the consumer is stopping, when the records it fetched are dropped uncommitted."""
    broker = InMemoryBroker()
    for _ in range(3):
        broker.produce("orders", envelope("orders", 1, ORDER))
    handled: list[int] = []

    async def handle(message) -> None:
        handled.append(message.offset)

    consumer = KafkaConsumer(
        group_id="g",
        transport=broker.transport(),
        registry=LocalFolderRegistry(ROOT / "schemas"),
        commit_interval_s=0.05,
    )
    consumer.register_handler("orders", handle)

    async def scenario() -> None:
        task = asyncio.create_task(consumer.start())
        while len(handled) < 3 or broker.committed("g", "orders") != 3:
            await asyncio.sleep(0.01)
        engine = consumer._engine
        assert engine is not None
        engine.on_batch([], [("orders", 0, 5)])  # two markers after the last record
        while broker.committed("g", "orders") != 5:
            await asyncio.sleep(0.01)
        engine._stopping = True  # (as request_stop sets it: records fetched from now on are dropped)
        engine.on_batch([], [("orders", 0, 9)])
        assert engine._parts[("orders", 0)].tracker.watermark == 5
        engine._stopping = False
        await consumer.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert broker.committed("g", "orders") == 5


class Outcomes(Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def on_outcome(self, record, message, outcome, attempt, delay_s) -> None:
        self.seen.append((record.offset(), type(outcome).__name__))


def test_the_fast_lane_counts_and_logs_a_done_record_as_the_built_in_middleware_would(caplog, monkeypatch) -> None:
    calls = _count_process(monkeypatch)
    broker = InMemoryBroker()
    for _ in range(6):
        broker.produce("orders", envelope("orders", 1, ORDER))
    user = Outcomes()

    async def handle(message) -> None:
        pass

    with caplog.at_level(logging.DEBUG, logger="toolkit.consumer"):
        consumer = _run(broker, handle, middleware=[user])
    done = [r for r in caplog.records if r.name == "toolkit.consumer" and r.getMessage() == "done"]
    assert [(r.topic, r.offset) for r in done] == [("orders", offset) for offset in range(6)]
    assert all(r.messageId for r in done)  # (the record context LoggingMiddleware gives its lines)
    assert consumer.stats["orders"].processed == 6
    assert user.seen == [(offset, "Done") for offset in range(6)]  # the other hooks are still called
    assert calls == [0]  # (records 1 to 5 were done on the fast lane)


def test_only_the_built_in_hooks_first_in_line_are_done_by_the_lane() -> None:
    stats, user = ConsumerStats(), Outcomes()
    hooks = Hooks([StatsMiddleware(stats), LoggingMiddleware(), user])
    assert hooks.done_stats is stats and hooks.done_logs and hooks.on_done == [user.on_outcome]

    class Counting(StatsMiddleware):  # a subclass may do more than count: its hook is called
        pass

    subclassed = Hooks([Counting(stats), LoggingMiddleware()])
    assert subclassed.done_stats is None and not subclassed.done_logs and len(subclassed.on_done) == 2
    later = Hooks([user, StatsMiddleware(stats)])  # not first: called in its place
    assert later.done_stats is None and len(later.on_done) == 2
    assert Hooks([]).on_done == [] and Hooks([]).done_stats is None


def test_an_on_record_hook_that_raises_is_logged_and_the_next_still_called_on_the_fast_lane(
    caplog, monkeypatch
) -> None:
    calls = _count_process(monkeypatch)
    broker = InMemoryBroker()
    for _ in range(3):
        broker.produce("orders", envelope("orders", 1, ORDER))
    after: list[int] = []

    class Raises(Middleware):
        def on_record(self, record) -> None:
            raise RuntimeError("a bug in a middleware")

    class After(Middleware):
        def on_record(self, record) -> None:
            after.append(record.offset())

    handled: list[int] = []

    async def handle(message) -> None:
        handled.append(message.offset)

    with caplog.at_level(logging.ERROR, logger="toolkit.consumer"):
        _run(broker, handle, middleware=[Raises(), After()])
    assert handled == [0, 1, 2] and after == [0, 1, 2]
    failures = [r for r in caplog.records if r.getMessage() == "middleware on_record failed"]
    assert len(failures) == 3 and all(r.exc_info for r in failures)
    assert calls == [0]  # (the first record resolves its schema in _process; the others stay on the fast lane)


def test_worker_slots_come_back_after_handlers_raise_and_hooks_fail_on_the_fast_lane(caplog) -> None:
    broker = InMemoryBroker()
    for _ in range(8):
        broker.produce("orders", envelope("orders", 1, ORDER))
    after = Outcomes()

    class Raises(Middleware):
        def on_outcome(self, record, message, outcome, attempt, delay_s) -> None:
            raise RuntimeError("a bug in a middleware")

    class Refuses(logging.Filter):
        def filter(self, record) -> bool:
            if record.getMessage() == "done":
                raise RuntimeError("a logging filter that raises")
            return True

    async def handle(message) -> None:
        if message.offset % 2:
            raise ValueError("a handler bug")  # (ErrorPolicy DLQ: dead-lettered, the slot given back)

    refuses = Refuses()
    logger = logging.getLogger("toolkit.consumer")
    logger.addFilter(refuses)
    try:
        with caplog.at_level(logging.DEBUG, logger="toolkit.consumer"):
            consumer = _run(broker, handle, middleware=[Raises(), after], max_workers=2)
    finally:
        logger.removeFilter(refuses)
    engine = consumer._engine
    assert engine is not None and engine._workers.free == 2  # every slot back
    assert [offset for offset, kind in after.seen if kind == "Done"] == [0, 2, 4, 6]
    assert consumer.stats["orders"].processed == 4 and sum(consumer.stats["orders"].dead_lettered.values()) == 4
    assert broker.committed("g", "orders") == 8
    failed = [r for r in caplog.records if r.getMessage() == "middleware on_outcome failed"]
    assert len(failed) >= 8  # each done record: the raising filter and the raising hook, logged


def test_a_cancelled_handler_gives_its_slot_back_on_the_fast_lane() -> None:
    broker = InMemoryBroker()
    for _ in range(3):
        broker.produce("orders", envelope("orders", 1, ORDER))
    started = asyncio.Event()
    consumer = KafkaConsumer(
        group_id="g",
        transport=broker.transport(),
        registry=LocalFolderRegistry(ROOT / "schemas"),
        commit_interval_s=0.05,
        max_workers=1,
        shutdown_timeout_s=0.2,  # (the handler is cancelled past it)
    )
    seen: list[int] = []

    async def handle(message) -> None:
        seen.append(message.offset)
        if message.offset == 1:  # on the fast lane (0 resolved the schema): hangs until the consumer stops
            started.set()
            await asyncio.sleep(3600)

    consumer.register_handler("orders", handle)

    async def scenario() -> None:
        task = asyncio.create_task(consumer.start())
        await asyncio.wait_for(started.wait(), 10)
        engine = consumer._engine
        assert engine is not None and engine._workers.free == 0
        await consumer.stop()
        await asyncio.wait_for(task, 10)
        assert engine._workers.free == 1

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert seen == [0, 1] and broker.committed("g", "orders") == 1


def test_a_batch_is_taken_run_by_run_and_a_redelivered_offset_in_it_is_skipped_alone(caplog) -> None:
    """A fetch holds runs of records per partition, taken with one look-up per run; a record whose offset
    was handed out before (librdkafka redelivering after a seek) is skipped with a warning, and the records
    after it in the same batch, of its partition and of others, are still taken, in order."""
    broker = InMemoryBroker(partitions=2)
    broker.create_topic("orders", 2)
    for index in range(4):
        broker.produce("orders", envelope("orders", 1, ORDER), partition=index % 2)
    handled: list[tuple[int, int]] = []

    async def handle(message) -> None:
        handled.append((message.partition, message.offset))

    consumer = KafkaConsumer(
        group_id="g",
        transport=broker.transport(),
        registry=LocalFolderRegistry(ROOT / "schemas"),
        commit_interval_s=0.05,
    )
    consumer.register_handler("orders", handle)
    value = envelope("orders", 1, ORDER)

    def record(partition: int, offset: int) -> InMemoryRecord:
        return InMemoryRecord("orders", partition, offset, None, value, None, 1_700_000_000_000)

    async def scenario() -> None:
        task = asyncio.create_task(consumer.start())
        while len(handled) < 4:
            await asyncio.sleep(0.01)
        engine = consumer._engine
        assert engine is not None
        batch = [record(0, 2), record(0, 1), record(0, 3), record(1, 2), record(1, 2), record(1, 3), record(0, 4)]
        with caplog.at_level(logging.WARNING, logger="toolkit.consumer"):
            engine.on_batch(batch, [])
        assert sum("skipping redelivered offset" in r.getMessage() for r in caplog.records) == 2
        while len(handled) < 9:
            await asyncio.sleep(0.01)
        # Runs of both partitions, gaps in their offsets (compaction): each run to its own partition.
        engine.on_batch([record(0, 6), record(0, 7), record(1, 9), record(1, 10), record(0, 8), record(1, 12)], [])
        while len(handled) < 15:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # (nothing more comes)
        assert engine._in_flight == 0 and all(part.buffered == 0 for part in engine._parts.values())
        await consumer.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert sorted(handled[:4]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [o for p, o in handled if p == 0] == [0, 1, 2, 3, 4, 6, 7, 8]
    assert [o for p, o in handled if p == 1] == [0, 1, 2, 3, 9, 10, 12]
    assert broker.committed("g", "orders", 0) == 9 and broker.committed("g", "orders", 1) == 13


def test_records_of_two_partitions_in_one_batch_each_go_to_their_own_lane() -> None:
    """Runs of one partition, then another, then the first again, in one batch (as on_batch receives a
    fetch): each partition's records reach the handler in offset order, and every one is committed."""
    broker = InMemoryBroker(partitions=3)
    broker.create_topic("orders", 3)
    for index in range(60):
        broker.produce("orders", envelope("orders", 1, ORDER), partition=(index // 7) % 3)
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}

    async def handle(message) -> None:
        seen[message.partition].append(message.offset)

    consumer = _run(broker, handle, max_poll_records=25)
    assert consumer.stats.as_dict()["orders"]["processed"] == 60
    for partition, offsets in seen.items():
        assert offsets == list(range(broker.end_offset("orders", partition)))
        assert broker.committed("g", "orders", partition) == broker.end_offset("orders", partition)


class Timer(Middleware):
    def __init__(self) -> None:
        self.times: list[tuple[int, int, float]] = []

    def on_handler_time(self, message, seconds) -> None:
        self.times.append((message.offset, message.attempt, seconds))


class BrokenTimer(Middleware):
    def on_handler_time(self, message, seconds) -> None:
        raise RuntimeError("a timer that fails")


@pytest.mark.parametrize("kind", ["async", "plain", "around"])
def test_on_handler_time_times_every_attempt_on_every_path_and_a_failing_timer_changes_nothing(kind, caplog) -> None:
    """Each handler attempt is timed, from the call to its result: on the fast lane (an async handler), in
    _process (a plain function in the pool; with around_handler middleware; a retried attempt), a wait for
    the handler included; a timer that raises is logged, and the next timer and the outcome are as before."""
    calls = []
    broker = InMemoryBroker()
    for _ in range(3):
        broker.produce("orders", envelope("orders", 1, ORDER))
    tries: dict[int, int] = {}

    def work(message) -> None:
        tries[message.offset] = tries.get(message.offset, 0) + 1
        if message.offset == 1 and tries[message.offset] == 1:
            raise Retry("once more", delay_s=0.01)

    if kind == "plain":

        def handle(message) -> None:
            import time

            time.sleep(0.03)
            work(message)

    else:

        async def handle(message) -> None:
            await asyncio.sleep(0.03)
            work(message)

    class Around(Middleware):
        async def around_handler(self, message, call_next):
            calls.append(message.offset)
            return await call_next(message)

    timer = Timer()
    middleware = [BrokenTimer(), timer] + ([Around()] if kind == "around" else [])
    with caplog.at_level(logging.ERROR, logger="toolkit.consumer"):
        consumer = _run(broker, handle, middleware=middleware)
    assert consumer.stats.as_dict()["orders"]["processed"] == 3
    assert [(offset, attempt) for offset, attempt, _ in timer.times] == [(0, 1), (1, 1), (1, 2), (2, 1)]
    assert all(seconds >= 0.03 for _, _, seconds in timer.times)
    assert sum("middleware on_handler_time failed" in r.getMessage() for r in caplog.records) == 4
    assert broker.committed("g", "orders") == 3
    assert calls == ([0, 1, 1, 2] if kind == "around" else [])


def test_the_fast_lane_builds_a_model_once_even_when_the_model_refuses_the_body() -> None:
    """A model's validators are user code: a body the model refuses is validated once (its `before` validator
    called once per record, not again to explain the refusal), and dead-lettered at stage model with
    pydantic's details; the body that fits is built once too."""
    from pydantic import BaseModel, model_validator

    from generated_models.orders.v1 import Order as Generated

    calls: list[int] = []

    class Counted(Generated):
        @model_validator(mode="before")
        @classmethod
        def count(cls, data):
            calls.append(1)
            return data

        @model_validator(mode="after")
        def refuse_big(self):
            if str(self.order_id).endswith("000000000002"):
                raise ValueError("this order is refused by the model")
            return self

    class Models:
        def get(self, schema_name: str, version: int) -> type[BaseModel] | None:
            return Counted

    broker = InMemoryBroker()
    ids = [f"00000000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3)]
    for order_id in ids:
        broker.produce("orders", envelope("orders", 1, {**ORDER, "orderId": order_id}))
    handled: list[str] = []

    async def handle(message) -> None:
        handled.append(str(message.body.order_id))

    _run(broker, handle, models=Models())
    assert handled == [ids[0], ids[2]] and len(calls) == 3
    (letter,) = [d.json() for d in broker.records("orders.dlq")]
    assert letter["error"]["stage"] == "model" and "this order is refused by the model" in json.dumps(letter)
    assert broker.committed("g", "orders") == 3
