"""The poll thread's pause/resume commands against an in-memory consumer (no broker)."""

from __future__ import annotations

import asyncio

from confluent_kafka import TopicPartition

from toolkit.consumer.kafka_io import PollThread
from toolkit.consumer.transport import Assignment


class FakeConsumer:
    """The part of confluent_kafka.Consumer the poll thread's commands and rebalance callbacks use."""

    def __init__(self) -> None:
        self.assigned: set[tuple[str, int]] = set()
        self.paused: set[tuple[str, int]] = set()

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.assigned)]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update((tp.topic, tp.partition) for tp in partitions)

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        pass

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        return offsets


class Events:
    """The engine's side, doing nothing."""

    def on_batch(self, records, ends) -> None:
        pass

    def on_assign(self, assigned) -> None:
        pass

    async def release(self, partitions, lost):
        return []

    def on_fatal(self, reason: str) -> None:
        pass

    def in_flight(self) -> int:
        return 0


def _poller(loop: asyncio.AbstractEventLoop) -> tuple[PollThread, FakeConsumer]:
    poller = PollThread({}, ["t"], loop, Events(), max_poll_records=10, max_in_flight=100)
    consumer = FakeConsumer()
    poller.consumer = consumer  # type: ignore[assignment]
    return poller, consumer


def _assign(poller: PollThread, consumer: FakeConsumer, *tps: tuple[str, int]) -> None:
    consumer.assigned.update(tps)
    poller._assigned(consumer, [TopicPartition(t, p) for t, p in tps])  # type: ignore[arg-type]


def _revoke(poller: PollThread, consumer: FakeConsumer, *tps: tuple[str, int]) -> None:
    poller._revoked(consumer, [TopicPartition(t, p) for t, p in tps])  # type: ignore[arg-type]
    consumer.assigned.difference_update(tps)


def test_a_pause_queued_before_a_revoke_does_not_pause_the_next_assignment(loop) -> None:
    poller, consumer = _poller(loop)
    _assign(poller, consumer, ("t", 0))
    generation = poller._generation[("t", 0)]
    poller.pause([Assignment("t", 0, generation)])  # queued by the loop, not yet run
    _revoke(poller, consumer, ("t", 0))
    _assign(poller, consumer, ("t", 0))  # the loop now has a new, unpaused state for it
    poller._run_commands()
    assert consumer.paused == set()
    assert poller._paused_by_loop == set()


def test_a_pause_queued_before_a_revoke_and_run_before_the_reassignment_does_not_stick(loop) -> None:
    poller, consumer = _poller(loop)
    _assign(poller, consumer, ("t", 0))
    poller.pause([Assignment("t", 0, poller._generation[("t", 0)])])
    _revoke(poller, consumer, ("t", 0))
    poller._run_commands()
    _assign(poller, consumer, ("t", 0))
    assert consumer.paused == set()
    # a full window ending resumes every partition the loop did not pause: this one included
    poller._window_paused = True
    poller._apply_window(free=100)
    assert consumer.paused == set() and poller._paused_by_loop == set()


def test_a_pause_by_the_loop_left_over_from_an_older_assignment_is_dropped_on_assignment(loop) -> None:
    poller, consumer = _poller(loop)
    _assign(poller, consumer, ("t", 0))
    poller._paused_by_loop.add(("t", 0))
    consumer.paused.add(("t", 0))
    _assign(poller, consumer, ("t", 0))
    assert consumer.paused == set() and poller._paused_by_loop == set()


def test_pause_and_resume_of_the_current_assignment_still_apply(loop) -> None:
    poller, consumer = _poller(loop)
    _assign(poller, consumer, ("t", 0), ("t", 1))
    poller.pause([Assignment("t", 0, poller._generation[("t", 0)])])
    poller._run_commands()
    assert consumer.paused == {("t", 0)} and poller._paused_by_loop == {("t", 0)}
    poller._window_paused = True
    consumer.pause(consumer.assignment())
    poller._apply_window(free=100)  # the window ends: the loop's own pause stays
    assert consumer.paused == {("t", 0)}
    poller.resume([Assignment("t", 0, poller._generation[("t", 0)])])
    poller._run_commands()
    assert consumer.paused == set() and poller._paused_by_loop == set()
