"""The rejoin watchdog: a Kafka consumer that is out of its group and does not get back in is recreated.

librdkafka can stay out of its consumer group for good after the group coordinator went away: a broker
restart long enough for the session to expire makes it give up its partitions and rejoin, and sometimes its
JoinGroup request sits in the queue of a connection that never comes back. It then logs
``GroupCoordinator: Timed out 0 in-flight, 0 retry-queued, 1 out-queue`` every minute, gets no partitions,
and the consumer idles forever although the broker answers everyone else.

The poll thread asks this watchdog at every round. Only while the consumer has no partition for longer than
``after_s`` does it ask the broker (an admin request, answered in the background) how the group stands:

- a rebalance under way (``PREPARING_REBALANCE``, ``COMPLETING_REBALANCE``, ...): wait, the consumer is on
  its way in;
- a settled group (``STABLE``, ``EMPTY``, ``DEAD``) that does not list the consumer, or lists it with
  partitions it never received: the consumer is stuck;
- a settled group listing the consumer without partitions: an idle member (more members than partitions):
  nothing to do;
- none of the subscribed topics exists: librdkafka does not join a group until one does: nothing to do;
- no answer (the broker is down): an outage, which librdkafka rides out on its own.

Two "stuck" answers in a row, ``interval_s`` apart, and the poll thread closes the consumer and creates a new
one. Nothing is committed meanwhile (the consumer has no partition), so at-least-once holds: the new member
starts from the group's committed offsets.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

GroupDescriber = Callable[[str], "Future[GroupView]"]
"""``describe(group_id)``: a future of the group as the broker sees it (:class:`GroupView`)."""


@dataclass(frozen=True, slots=True)
class GroupView:
    """The broker's answer to the watchdog's question."""

    description: Any
    """The group's description (the shape of confluent-kafka's ``ConsumerGroupDescription``: ``state``,
    ``members`` with ``member_id`` and ``assignment.topic_partitions``)."""
    topics_exist: bool
    """At least one subscribed topic exists (librdkafka does not join a group before)."""


SETTLED = frozenset({"STABLE", "EMPTY", "DEAD"})
"""Group states in which no rebalance is under way: a member that is not listed is not on its way in."""

STUCK_ANSWERS = 2
"""Consecutive answers that say "stuck" before the consumer is recreated."""

DEFAULT_SESSION_TIMEOUT_MS = 45_000  # librdkafka's session.timeout.ms


def default_after_s(consumer_config: dict[str, Any]) -> float:
    """How long a consumer may stay without partitions before the broker is asked: three sessions
    (``session.timeout.ms``, librdkafka's 45 s unless set), at least 30 s."""
    try:
        session_ms = float(consumer_config.get("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS))
    except (TypeError, ValueError):
        session_ms = DEFAULT_SESSION_TIMEOUT_MS
    return max(30.0, 3 * session_ms / 1000)


def _state(description: Any) -> str:
    state = getattr(description, "state", None)
    return str(getattr(state, "name", state)).upper()


def out_of_group(view: GroupView, member_id: str | None) -> str | None:
    """Why the broker's ``view`` of the group says this member is out of it and not on its way in; None
    when it is in (or a rebalance is under way, it is an idle member, or none of its topics exists yet)."""
    description = view.description
    state = _state(description)
    if state not in SETTLED or not view.topics_exist:
        return None
    members = list(getattr(description, "members", None) or ())
    for member in members:
        if member_id and getattr(member, "member_id", None) == member_id:
            assignment = getattr(member, "assignment", None)
            partitions = list(getattr(assignment, "topic_partitions", None) or ())
            if partitions:
                return f"the group ({state}) gives it {len(partitions)} partition(s) it never received"
            return None
    return f"the group ({state}, {len(members)} member(s)) does not list it"


class RejoinWatchdog:
    """Tells the poll thread when to recreate a consumer stuck out of its group (the module's docstring).

    Args:
        describe: asks the broker for the group's description (in the background; see :data:`GroupDescriber`).
        group_id: the consumer group.
        after_s: how long without partitions before the broker is asked.
        interval_s: the time between two questions.
        clock: ``time.monotonic`` unless a test gives another.
    """

    def __init__(
        self,
        describe: GroupDescriber,
        group_id: str,
        after_s: float,
        *,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._describe = describe
        self._group_id = group_id
        self.after_s = after_s
        self.interval_s = interval_s if interval_s is not None else min(15.0, max(1.0, after_s / 6))
        self._clock = clock
        self._pending: Future[Any] | None = None
        self._stuck = 0
        self._next_question = 0.0

    def check(self, unassigned_since: float | None, member_id: Callable[[], str | None]) -> str | None:
        """Called by the poll thread at every round; quick unless the consumer has had no partition for
        ``after_s``. Returns why the consumer should be recreated, or None.

        Args:
            unassigned_since: ``clock()`` when the consumer last had no partition left (or started); None
                while it has some.
            member_id: the consumer's group member id now (read only when an answer is in).
        """
        if unassigned_since is None:
            self._stuck = 0
            return None
        now = self._clock()
        if now - unassigned_since < self.after_s:
            self._stuck = 0
            return None
        pending = self._pending
        if pending is not None:
            if not pending.done():
                return None
            self._pending = None
            try:
                view = pending.result()
            except Exception as exc:  # noqa: BLE001 - the broker did not answer: an outage, not a stuck client
                log.debug("rejoin watchdog: the group could not be described: %s", exc)
                self._stuck = 0
                return None
            reason = out_of_group(view, member_id())
            if reason is None:
                self._stuck = 0
                return None
            self._stuck += 1
            log.info(
                "no partitions for %.0f s and %s (answer %d of %d before the consumer is recreated)",
                now - unassigned_since,
                reason,
                self._stuck,
                STUCK_ANSWERS,
            )
            if self._stuck >= STUCK_ANSWERS:
                self._stuck = 0
                return f"no partitions for {now - unassigned_since:.0f} s and {reason}"
            return None
        if now >= self._next_question:
            self._next_question = now + self.interval_s
            try:
                self._pending = self._describe(self._group_id)
            except Exception as exc:  # noqa: BLE001 - asked again at the next interval
                log.debug("rejoin watchdog: describing the group failed: %s", exc)
        return None

    def reset(self) -> None:
        """Forget the answers so far (a new consumer was created)."""
        self._pending = None
        self._stuck = 0
        self._next_question = self._clock() + self.interval_s


def group_describer(client_config: dict[str, Any], topics: list[str], timeout_s: float = 10.0) -> GroupDescriber:
    """A :data:`GroupDescriber` asking with an admin client of ``client_config``'s connection settings (created
    at the first question: most consumers never ask one), each question on a thread of its own."""
    admin: Any = None
    lock = threading.Lock()

    def ask(group_id: str) -> GroupView:
        nonlocal admin
        with lock:
            if admin is None:
                from confluent_kafka.admin import AdminClient

                from toolkit.consumer.kafka_log import kafka_logger

                config: dict[str, Any] = {**client_config, "logger": kafka_logger()}
                admin = AdminClient(config)
        described = admin.describe_consumer_groups([group_id], request_timeout=timeout_s)[group_id]
        existing = admin.list_topics(timeout=timeout_s).topics
        return GroupView(described.result(timeout_s + 5), any(_matches(topic, existing) for topic in topics))

    def describe(group_id: str) -> Future[GroupView]:
        future: Future[GroupView] = Future()

        def run() -> None:
            try:
                future.set_result(ask(group_id))
            except BaseException as exc:  # noqa: BLE001 - handed to the watchdog as "no answer"
                future.set_exception(exc)

        threading.Thread(target=run, name="epistle-rejoin-question", daemon=True).start()
        return future

    return describe


def _matches(topic: str, existing: Any) -> bool:
    """``topic`` exists, or (a ``^`` regular expression, as librdkafka subscribes them) matches one that does."""
    if not topic.startswith("^"):
        return topic in existing
    try:
        pattern = re.compile(topic)
    except re.error:
        return True  # librdkafka's own syntax: not ours to judge, assume it matches
    return any(pattern.search(name) for name in existing)
