"""The rejoin watchdog's verdicts and timing, and the poll thread's side of it (no broker: the group's
description is given as the broker would answer it). On the real broker: tests/integration/test_consumer_rejoin.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from toolkit.consumer import kafka_io
from toolkit.consumer.kafka_io import PollThread
from toolkit.consumer.rejoin import MAX_BACKOFF, GroupView, RejoinWatchdog, after_s, out_of_group

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
        (view("STABLE", Member(ME, Assigned([("t", 0)])), topics_exist=False), "gives it 1 partition(s)"),
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


def test_default_waits_three_sessions_and_at_least_30_s_and_a_setting_at_least_one_session() -> None:
    assert after_s({}, None) == 135.0  # librdkafka's 45 s session
    assert after_s({"session.timeout.ms": 6000}, None) == 30.0
    assert after_s({"session.timeout.ms": "20000"}, None) == 60.0
    assert after_s({"session.timeout.ms": "nonsense"}, None) == 135.0
    assert after_s({"session.timeout.ms": 6000}, 0.5) == 6.0  # a slow cold start is not a stuck consumer
    assert after_s({"session.timeout.ms": 6000}, 20) == 20
    assert after_s({}, 0) == 0  # never


class Broker:
    """Answers the watchdog's questions: each question gets the next answer (a GroupView or an exception)."""

    def __init__(self, *answers: GroupView | BaseException, hold: bool = False) -> None:
        self.answers = list(answers)
        self.questions: list[Future[GroupView]] = []
        self.hold = hold

    def describe(self, group_id: str, member_id: str | None) -> Future[GroupView]:
        assert group_id == "g" and member_id == ME
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
    watchdog.recreated()  # (the poll thread tells it with the new consumer)
    assert _run(watchdog, clock, since=clock.now, until=clock.now + 59) == []  # (twice after_s, now)


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


def test_an_answer_asked_for_an_earlier_spell_without_partitions_does_not_count() -> None:
    broker, clock = Broker(view("EMPTY"), view("EMPTY"), view("EMPTY"), hold=True), Clock()
    watchdog = _watchdog(broker, clock)
    first = clock.now - 30
    assert _run(watchdog, clock, first, until=clock.now + 1) == []  # asked, not answered yet
    assert _run(watchdog, clock, None, until=clock.now + 1) == []  # partitions came: the question is dropped
    broker.answer(broker.questions[0])
    # Partitions came and went between two rounds (within one fetch): the answer is about the spell before.
    broker.questions.clear()
    broker.answers.insert(0, view("EMPTY"))
    assert _run(watchdog, clock, first, until=clock.now + 5) == []  # asked again for the first spell
    assert len(broker.questions) == 1
    broker.answer(broker.questions[0])
    second = first + 1
    assert _run(watchdog, clock, second, until=clock.now + 0.5) == []  # read: asked for another spell
    assert watchdog.answers == 0
    assert _run(watchdog, clock, second, until=clock.now + 5) == []
    broker.answer(broker.questions[1])  # stuck once
    assert _run(watchdog, clock, second, until=clock.now + 5.5) == []
    broker.answer(broker.questions[2])  # stuck twice: only now
    assert len(_run(watchdog, clock, second, until=clock.now + 1)) == 1


def test_a_consumer_recreated_again_and_again_waits_longer_each_time() -> None:
    broker, clock = Broker(*[view("EMPTY")] * 40), Clock()
    watchdog = _watchdog(broker, clock)
    waits = []
    for _ in range(5):
        since = clock.now  # a new consumer, and still no partitions
        while not _run(watchdog, clock, since, until=clock.now + 0.5):
            pass
        waits.append(round(clock.now - since))
        watchdog.recreated()
    assert waits == [36, 66, 126, 246, 246], waits  # after_s doubled each time, up to MAX_BACKOFF times
    assert MAX_BACKOFF == 8
    assert _run(watchdog, clock, None, until=clock.now + 1) == []  # partitions came: back to after_s
    since = clock.now
    while not _run(watchdog, clock, since, until=clock.now + 0.5):
        pass
    assert round(clock.now - since) == 36


def test_a_watchdog_that_gets_no_answers_says_so_once(caplog) -> None:
    down = RuntimeError("GROUP_AUTHORIZATION_FAILED")
    broker, clock = Broker(*[down] * 10), Clock()
    watchdog = _watchdog(broker, clock)
    with caplog.at_level("DEBUG", logger="toolkit.consumer.rejoin"):
        assert _run(watchdog, clock, since=clock.now - 30, until=clock.now + 50) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cannot describe group g (GROUP_AUTHORIZATION_FAILED)" in warnings[0]
    assert watchdog.answers == 0


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


class ClosingConsumer(FakeConsumer):
    """A consumer whose close() serves a pending assignment first (librdkafka serves rebalance callbacks
    inside close(), on the closing thread), then waits until ``release`` is set."""

    def __init__(self, poller: PollThread) -> None:
        super().__init__()
        self.poller = poller
        self.release = threading.Event()
        self.release.set()

    def close(self) -> None:
        self.poller._assigned(self, [TopicPartition("t", 0)])  # type: ignore[arg-type]
        self.poller._revoked(self, [TopicPartition("t", 0)])  # type: ignore[arg-type]
        self.release.wait(30)
        self.closed = True


def _replacing_poller(loop, config: dict[str, Any]) -> tuple[PollThread, Events, ClosingConsumer, FakeConsumer]:
    events = Events()
    watchdog = RejoinWatchdog(Broker().describe, "g", after_s=30)
    poller = PollThread(config, ["t"], loop, events, max_poll_records=10, max_in_flight=100, watchdog=watchdog)
    old, new = ClosingConsumer(poller), FakeConsumer()
    poller.consumer = old  # type: ignore[assignment]
    poller._window_paused = True
    poller._new_consumer = lambda: new  # type: ignore[method-assign]
    return poller, events, old, new


def _wait_replaced(poller: PollThread, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        replaced = poller._replaced()
        if replaced is not None:
            return replaced
        time.sleep(0.01)
    return None


def test_a_replaced_consumers_callbacks_while_it_closes_change_nothing(loop) -> None:
    poller, events, old, new = _replacing_poller(loop, {"group.id": "g"})
    poller._recreate(old, "stuck")  # type: ignore[arg-type]
    assert _wait_replaced(poller, 10) is new
    assert old.closed and poller.consumer is new and poller.recreated == 1
    assert not poller._window_paused
    # The assignment its close() served did not reach the engine or the poll thread's state.
    assert events.assigned == [] and poller._generation == {}
    poller._assigned(new, [TopicPartition("t", 0)])  # type: ignore[arg-type]
    assert poller._generation == {("t", 0): 1} and poller._unassigned_since is None
    deadline = time.monotonic() + 5
    while not events.assigned and time.monotonic() < deadline:  # (handed to the loop)
        time.sleep(0.01)
    assert [(a.topic, a.partition) for a in events.assigned] == [("t", 0)]


def test_with_static_membership_the_new_consumer_waits_for_the_old_one_to_close(loop, monkeypatch) -> None:
    monkeypatch.setattr(kafka_io, "RECREATE_CLOSE_WAIT_S", 0.2)
    poller, _, old, new = _replacing_poller(loop, {"group.id": "g", "group.instance.id": "i-1"})
    old.release.clear()  # its close() hangs
    poller._recreate(old, "stuck")  # type: ignore[arg-type]
    assert _wait_replaced(poller, 1.0) is None  # past RECREATE_CLOSE_WAIT_S, still waiting: same instance id
    assert poller.consumer is old and poller.recreated == 0
    old.release.set()
    assert _wait_replaced(poller, 10) is new


def test_without_static_membership_a_hanging_close_is_left_behind(loop, monkeypatch) -> None:
    monkeypatch.setattr(kafka_io, "RECREATE_CLOSE_WAIT_S", 0.2)
    poller, _, old, new = _replacing_poller(loop, {"group.id": "g"})
    old.release.clear()
    poller._recreate(old, "stuck")  # type: ignore[arg-type]
    assert _wait_replaced(poller, 10) is new
    assert not old.closed
    old.release.set()


def test_commands_are_served_while_the_old_consumer_closes(loop) -> None:
    """The poll thread itself: a close() that hangs does not hold the loop's commands (nor /healthz)."""
    poller, _, old, _new = _replacing_poller(loop, {"group.id": "g", "group.instance.id": "i-1"})
    old.release.clear()
    poller._recreate(old, "stuck")  # type: ignore[arg-type]
    thread = threading.Thread(target=poller._fetch_loop, daemon=True)
    thread.start()
    try:
        done = poller.commit([])
        done.result(5)  # answered while the old consumer is still closing
        before = poller.last_poll
        time.sleep(0.2)
        assert poller.last_poll is not None and before is not None and poller.last_poll > before
    finally:
        poller.close().result(5)  # a close while replacing ends the thread without a second close()
        thread.join(5)
        old.release.set()
    assert not thread.is_alive() and poller.recreated == 0


def test_partitions_assigned_end_the_backoff_as_the_poll_thread_reports_them(loop) -> None:
    broker, clock = Broker(*[view("EMPTY")] * 20), Clock()
    watchdog = _watchdog(broker, clock)
    watchdog.recreated()
    watchdog.recreated()  # waiting 4 x after_s now
    poller = PollThread(
        {"group.id": "g"}, ["t"], loop, Events(), max_poll_records=10, max_in_flight=100, watchdog=watchdog
    )
    consumer = FakeConsumer()
    poller.consumer = consumer  # type: ignore[assignment]
    poller._assigned(consumer, [TopicPartition("t", 0)])  # type: ignore[arg-type]  (check() is not asked meanwhile)
    since = clock.now
    while not _run(watchdog, clock, since, until=clock.now + 0.5):
        pass
    assert round(clock.now - since) == 36  # after_s again, not 4 x after_s


def test_with_static_membership_a_close_that_never_ends_stops_the_consumer(loop, monkeypatch) -> None:
    monkeypatch.setattr(kafka_io, "RECREATE_CLOSE_WAIT_S", 0.1)
    monkeypatch.setattr(kafka_io, "RECREATE_STATIC_GIVE_UP_S", 0.3)
    fatal: list[str] = []
    poller, events, old, new = _replacing_poller(loop, {"group.id": "g", "group.instance.id": "i-1"})
    events.on_fatal = fatal.append  # type: ignore[method-assign]
    old.release.clear()  # its close() hangs
    poller._recreate(old, "stuck")  # type: ignore[arg-type]
    assert _wait_replaced(poller, 1.0) is None
    deadline = time.monotonic() + 5
    while not fatal and time.monotonic() < deadline:  # (handed to the loop)
        time.sleep(0.01)
    assert len(fatal) == 1 and "did not close within" in fatal[0]
    assert not poller._fetching.is_set()
    old.release.set()  # it closes at last: still no new consumer (the consumer has stopped)
    time.sleep(0.1)
    assert poller._replaced() is None and poller.consumer is old and poller.recreated == 0
