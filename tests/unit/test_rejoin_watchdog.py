"""The rejoin watchdog's verdicts and timing, and the poll thread's side of it (no broker: the group's
description is given as the broker would answer it). On the real broker: tests/integration/test_consumer_rejoin.py."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from toolkit.consumer.kafka_io import PollThread
from toolkit.consumer.rejoin import GroupView, RejoinWatchdog, default_after_s, out_of_group

ME = "rdkafka-me"


@dataclass
class State:  # the shape of confluent-kafka's ConsumerGroupState: an enum with a name
    name: str


@dataclass
class Assigned:
    topic_partitions: list[Any] = field(default_factory=list)


@dataclass
class Member:
    member_id: str
    assignment: Assigned = field(default_factory=Assigned)


@dataclass
class Description:
    state: State
    members: list[Member] = field(default_factory=list)


def view(state: str, *members: Member, topics_exist: bool = True) -> GroupView:
    return GroupView(Description(State(state), list(members)), topics_exist)


@pytest.mark.parametrize(
    ("answer", "stuck"),
    [
        (view("STABLE", Member("other", Assigned([("t", 0)]))), "does not list it"),
        (view("EMPTY"), "does not list it"),
        (view("DEAD"), "does not list it"),
        (view("STABLE", Member(ME, Assigned([("t", 0), ("t", 1)]))), "gives it 2 partition(s) it never received"),
        (view("STABLE", Member(ME), Member("other", Assigned([("t", 0)]))), None),  # idle member
        (view("PREPARING_REBALANCE"), None),  # its JoinGroup is in: the rebalance is on its way
        (view("COMPLETING_REBALANCE", Member("other")), None),
        (view("UNKNOWN"), None),
        (view("EMPTY", topics_exist=False), None),  # librdkafka joins once one of its topics exists
    ],
)
def test_verdict_from_the_brokers_view(answer: GroupView, stuck: str | None) -> None:
    reason = out_of_group(answer, ME)
    if stuck is None:
        assert reason is None
    else:
        assert reason is not None and stuck in reason


def test_a_consumer_without_a_member_id_is_not_listed() -> None:
    assert out_of_group(view("STABLE", Member("other")), None) is not None


def test_default_waits_three_sessions_and_at_least_30_s() -> None:
    assert default_after_s({}) == 135.0  # librdkafka's 45 s session
    assert default_after_s({"session.timeout.ms": 6000}) == 30.0
    assert default_after_s({"session.timeout.ms": "20000"}) == 60.0
    assert default_after_s({"session.timeout.ms": "nonsense"}) == 135.0


class Broker:
    """Answers the watchdog's questions: each question gets the next answer (a GroupView or an exception)."""

    def __init__(self, *answers: GroupView | BaseException, hold: bool = False) -> None:
        self.answers = list(answers)
        self.questions: list[Future[GroupView]] = []
        self.hold = hold

    def describe(self, group_id: str) -> Future[GroupView]:
        assert group_id == "g"
        future: Future[GroupView] = Future()
        self.questions.append(future)
        if not self.hold:
            self.answer(future)
        return future

    def answer(self, future: Future[GroupView]) -> None:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watchdog(broker: Broker, clock: Clock) -> RejoinWatchdog:
    return RejoinWatchdog(broker.describe, "g", after_s=30, interval_s=5, clock=clock)


def _run(watchdog: RejoinWatchdog, clock: Clock, since: float | None, until: float) -> list[str]:
    """Rounds of the poll thread every 0.5 s up to ``until``; the reasons to recreate."""
    reasons = []
    while clock.now < until:
        reason = watchdog.check(since, lambda: ME)
        if reason:
            reasons.append(reason)
        clock.now += 0.5
    return reasons


def test_nothing_is_asked_before_after_s_without_partitions() -> None:
    broker, clock = Broker(), Clock()
    watchdog = _watchdog(broker, clock)
    assert _run(watchdog, clock, since=clock.now, until=clock.now + 29.5) == []
    assert broker.questions == []
    assert _run(watchdog, clock, since=None, until=clock.now + 100) == []  # partitions: nothing asked
    assert broker.questions == []


def test_two_stuck_answers_interval_s_apart_recreate_the_consumer() -> None:
    broker, clock = Broker(view("EMPTY"), view("EMPTY"), view("EMPTY"), view("EMPTY")), Clock()
    watchdog = _watchdog(broker, clock)
    since = clock.now
    clock.now += 30
    assert _run(watchdog, clock, since, until=clock.now + 5) == []  # first answer: stuck once
    assert len(broker.questions) == 1
    reasons = _run(watchdog, clock, since, until=clock.now + 1)  # second question at +35 s, read at +35.5 s
    assert reasons == ["no partitions for 36 s and the group (EMPTY, 0 member(s)) does not list it"]
    watchdog.reset()  # (the poll thread resets it with the new consumer)
    assert _run(watchdog, clock, since=clock.now, until=clock.now + 29) == []


def test_an_answer_that_it_is_in_or_joining_starts_the_count_again() -> None:
    answers = (view("EMPTY"), view("PREPARING_REBALANCE"), view("EMPTY"), view("STABLE", Member(ME)), view("EMPTY"))
    broker, clock = Broker(*answers), Clock()
    watchdog = _watchdog(broker, clock)
    since = clock.now - 30
    assert _run(watchdog, clock, since, until=clock.now + 24) == []
    assert len(broker.questions) == 5


def test_no_answer_is_an_outage_not_a_stuck_consumer() -> None:
    down = RuntimeError("KafkaError{code=_TRANSPORT}")
    broker, clock = Broker(view("EMPTY"), down, view("EMPTY"), down, view("EMPTY"), down), Clock()
    watchdog = _watchdog(broker, clock)
    assert _run(watchdog, clock, since=clock.now - 30, until=clock.now + 29) == []
    assert len(broker.questions) == 6


def test_a_question_still_unanswered_is_not_asked_again() -> None:
    broker, clock = Broker(view("EMPTY"), view("EMPTY"), hold=True), Clock()
    watchdog = _watchdog(broker, clock)
    since = clock.now - 30
    assert _run(watchdog, clock, since, until=clock.now + 60) == []
    assert len(broker.questions) == 1  # the broker has not answered in a minute: one question out
    broker.answer(broker.questions[0])
    assert _run(watchdog, clock, since, until=clock.now + 1) == []  # stuck once
    assert len(broker.questions) == 2  # (asked at the next round: the interval had passed)
    broker.answer(broker.questions[1])
    assert len(_run(watchdog, clock, since, until=clock.now + 0.5)) == 1


def test_getting_partitions_between_answers_starts_the_count_again() -> None:
    broker, clock = Broker(*[view("EMPTY")] * 4), Clock()
    watchdog = _watchdog(broker, clock)
    since = clock.now - 30
    assert _run(watchdog, clock, since, until=clock.now + 1) == []  # stuck once
    assert _run(watchdog, clock, None, until=clock.now + 1) == []  # then partitions came
    since = clock.now - 30  # and went again
    assert _run(watchdog, clock, since, until=clock.now + 4) == []  # stuck once more: not twice in a row


# -- the poll thread's side ----------------------------------------------------------------------------


class FakeConsumer:
    """The part of confluent_kafka.Consumer the rebalance callbacks use."""

    def __init__(self) -> None:
        self.closed = False

    def assignment(self) -> list[TopicPartition]:
        return []

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        pass

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        return offsets

    def close(self) -> None:
        self.closed = True


class Events:
    def __init__(self) -> None:
        self.assigned: list[Any] = []

    def on_batch(self, records, ends) -> None:
        pass

    def on_assign(self, assigned) -> None:
        self.assigned.extend(assigned)

    async def release(self, partitions, lost):
        return []

    def on_fatal(self, reason: str) -> None:
        pass

    def in_flight(self) -> int:
        return 0


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_the_poll_thread_tracks_when_it_last_had_no_partition(loop) -> None:
    poller = PollThread({}, ["t"], loop, Events(), max_poll_records=10, max_in_flight=100)
    consumer = FakeConsumer()
    poller.consumer = consumer  # type: ignore[assignment]
    poller._unassigned_since = 1.0
    poller._assigned(consumer, [TopicPartition("t", 0), TopicPartition("t", 1)])  # type: ignore[arg-type]
    assert poller._unassigned_since is None
    poller._revoked(consumer, [TopicPartition("t", 0)])  # type: ignore[arg-type]
    assert poller._unassigned_since is None  # one partition left
    poller._lost(consumer, [TopicPartition("t", 1)])  # type: ignore[arg-type]
    assert poller._unassigned_since is not None


def test_a_recreated_consumer_replaces_the_stuck_one_and_its_callbacks_are_ignored(loop) -> None:
    events = Events()
    broker = Broker()
    watchdog = RejoinWatchdog(broker.describe, "g", after_s=30)
    poller = PollThread(
        {"group.id": "g"}, ["t"], loop, events, max_poll_records=10, max_in_flight=100, watchdog=watchdog
    )
    old, new = FakeConsumer(), FakeConsumer()
    poller.consumer = old  # type: ignore[assignment]
    poller._window_paused = True
    poller._new_consumer = lambda: new  # type: ignore[method-assign]
    assert poller._recreate(old, "stuck") is new  # type: ignore[arg-type]
    assert old.closed and poller.consumer is new and poller.recreated == 1
    assert not poller._window_paused
    # The old consumer's callbacks (served while it closes) change nothing.
    poller._assigned(old, [TopicPartition("t", 0)])  # type: ignore[arg-type]
    assert events.assigned == [] and poller._generation == {}
    poller._assigned(new, [TopicPartition("t", 0)])  # type: ignore[arg-type]
    assert poller._generation == {("t", 0): 1} and poller._unassigned_since is None
