"""Middleware hooks: each record seen once before decoding, every handler attempt wrapped (the first
middleware outermost), each outcome and dead-letter delivery told, in order; an ``around_handler`` that
raises is the handler attempt failing."""

from __future__ import annotations

from collections import defaultdict

from tests.behaviour.backends import Backend, order, run
from toolkit.consumer import Middleware, original_record
from toolkit.consumer.outcomes import ToDeadLetter


class Trace(Middleware):
    def __init__(self, name: str, events: list[tuple[int, str]], fail_on: str | None = None) -> None:
        self.name, self.events, self.fail_on = name, events, fail_on

    def on_record(self, record) -> None:
        self.events.append((record.offset(), f"{self.name} record"))

    async def around_handler(self, message, call_next):
        self.events.append((message.offset, f"{self.name} >"))
        if message.header.message_id == self.fail_on:
            raise RuntimeError("the middleware failed")
        result = await call_next(message)
        self.events.append((message.offset, f"{self.name} < {result}"))
        return result

    def on_outcome(self, record, message, outcome, attempt, delay_s) -> None:
        stage = f" {outcome.stage}" if isinstance(outcome, ToDeadLetter) else ""
        has = "message" if message is not None else "no message"
        self.events.append((record.offset(), f"{self.name} {type(outcome).__name__}{stage} {attempt} {has}"))

    def on_dead_letter(self, record, dead_letter, outcome, error, failures, delay_s) -> None:
        state = "delivered" if error is None else "refused"
        self.events.append((record.offset(), f"{self.name} dead letter {outcome.stage} {state}"))


def test_hooks_are_called_in_order_with_the_outcomes(backend: Backend) -> None:
    topic = backend.topic()
    raws = [order("m0"), order("m1"), b"not json", order("m3")]
    backend.produce(topic, raws)
    events: list[tuple[int, str]] = []

    def handler(message):
        events.append((message.offset, f"handler {message.attempt}"))
        return not (message.header.message_id == "m1" and message.attempt == 1)

    consumer = backend.consumer(middleware=[Trace("A", events, fail_on="m3"), Trace("B", events)])
    consumer.register_handler(topic, handler)
    run(consumer)

    by_offset: dict[int, list[str]] = defaultdict(list)
    for offset, event in events:
        by_offset[offset].append(event)
    attempt = ["A >", "B >"]
    assert by_offset == {
        0: [
            "A record",
            "B record",
            *attempt,
            "handler 1",
            "B < True",
            "A < True",
            "A Done 1 message",
            "B Done 1 message",
        ],
        1: [
            "A record",
            "B record",
            *attempt,
            "handler 1",
            "B < False",
            "A < False",
            "A RetryAfter 1 message",
            "B RetryAfter 1 message",
            *attempt,
            "handler 2",
            "B < True",
            "A < True",
            "A Done 2 message",
            "B Done 2 message",
        ],
        2: [
            "A record",
            "B record",
            "A ToDeadLetter decode 1 no message",
            "B ToDeadLetter decode 1 no message",
            "A dead letter decode delivered",
            "B dead letter decode delivered",
        ],
        3: [
            "A record",
            "B record",
            "A >",  # A raised: neither B nor the handler ran
            "A ToDeadLetter handler 1 message",
            "B ToDeadLetter handler 1 message",
            "A dead letter handler delivered",
            "B dead letter handler delivered",
        ],
    }
    dead = backend.dead_letters(topic)
    assert [(d.json()["source"]["offset"], d.json()["error"]["stage"]) for d in dead] == [(2, "decode"), (3, "handler")]
    assert dead[1].json()["error"]["type"] == "builtins.RuntimeError"
    assert [original_record(d.value).value for d in dead] == [raws[2], raws[3]]
    stats = consumer.stats[topic]  # the built-in statistics are middleware too
    assert (stats.processed, stats.retried, stats.dead_lettered) == (2, 1, {"decode": 1, "handler": 1})
    assert backend.committed(topic) == {0: 4}


def test_middleware_sees_each_record_as_the_broker_gives_it(backend: Backend) -> None:
    topic = backend.topic()
    # In name order: an AMQP header table is a map, and its names go on the wire sorted
    headers = [("empty", None), ("trace", b"t-1")]
    backend.produce(topic, [(b"k0", order("m0"))], headers=headers)
    backend.produce(topic, [order("m1")])  # no key, no headers
    seen = []
    messages = []

    class Records(Middleware):
        def on_record(self, record) -> None:
            seen.append(
                (
                    record.topic(),
                    record.partition(),
                    record.offset(),
                    record.key(),
                    record.headers(),
                    record.timestamp()[0],
                    record.timestamp()[1] > 0,
                )
            )

    consumer = backend.consumer(middleware=[Records()])
    consumer.register_handler(topic, lambda message: messages.append((message.key, message.headers)))
    run(consumer)
    create_time = 1  # the timestamp type of a record whose producer set the time
    assert seen == [(topic, 0, 0, b"k0", headers, create_time, True), (topic, 0, 1, None, None, create_time, True)]
    assert messages == [(b"k0", headers), (None, [])]
