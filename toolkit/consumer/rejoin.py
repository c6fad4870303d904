"""The rejoin watchdog: a Kafka consumer that is out of its group and does not get back in is recreated.

librdkafka can stay out of its consumer group for good after the group coordinator went away: a broker
restart long enough for the session to expire makes it give up its partitions and rejoin, and sometimes its
JoinGroup request sits in the queue of a connection that never comes back. It then logs
``GroupCoordinator: Timed out 0 in-flight, 0 retry-queued, 1 out-queue`` every minute, gets no partitions,
and the consumer idles forever although the broker answers everyone else.

The poll thread asks this watchdog at every round. Only while the consumer has no partition for longer than
``after_s`` does it ask the broker (an admin request, answered in the background) how the group stands:

- a rebalance under way (``PREPARING_REBALANCING``, ``COMPLETING_REBALANCING``, or a state of the new
  protocol): wait, the consumer is on its way in;
- a settled group (``STABLE``, ``EMPTY``, ``DEAD``) that does not list the consumer, or lists it with
  partitions it never received: the consumer is stuck;
- a settled group listing the consumer without partitions: an idle member (more members than partitions):
  nothing to do;
- none of the subscribed topics exists: librdkafka does not join a group until one does: nothing to do;
- no answer (the broker is down): an outage, which librdkafka rides out on its own.

Two "stuck" answers in a row, ``interval_s`` apart, and the poll thread closes the consumer and, once it is
closed, subscribes a new one. Nothing is committed meanwhile (the consumer has no partition), so
at-least-once holds: the new member starts from the group's committed offsets. A new consumer that gets no
partitions either is recreated again only after twice as long (up to ``MAX_BACKOFF`` times ``after_s``).
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

GroupDescriber = Callable[[str, "str | None"], "Future[GroupView]"]
"""``describe(group_id, member_id)``: a future of the group as the broker sees it (:class:`GroupView`)."""


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
MAX_BACKOFF = 8  # a consumer recreated again and again waits up to this many times after_s in between
FAILURES_TO_WARN = 3  # questions in a row the broker did not answer before a warning says the watchdog is blind


def _session_s(consumer_config: dict[str, Any]) -> float:
    try:
        return float(consumer_config.get("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS)) / 1000
    except (TypeError, ValueError):
        return DEFAULT_SESSION_TIMEOUT_MS / 1000


def after_s(consumer_config: dict[str, Any], configured: float | None) -> float:
    """How long a consumer may stay without partitions before the broker is asked: ``configured``
    (``EPISTLE_REJOIN_TIMEOUT_S``) but at least one session (``session.timeout.ms``, librdkafka's 45 s unless
    set: a slower cold start is not a stuck consumer); unset, three sessions and at least 30 s; 0: never."""
    session = _session_s(consumer_config)
    if configured is None:
        return max(30.0, 3 * session)
    return 0.0 if configured == 0 else max(configured, session)


def _state(description: Any) -> str:
    state = getattr(description, "state", None)
    return str(getattr(state, "name", state)).upper()


def listed(description: Any, member_id: str | None) -> Any:
    """The member of ``description`` with ``member_id`` (None: not listed)."""
    for member in getattr(description, "members", None) or ():
        if member_id and getattr(member, "member_id", None) == member_id:
            return member
    return None


def out_of_group(view: GroupView, member_id: str | None) -> str | None:
    """Why the broker's ``view`` of the group says this member is out of it and not on its way in; None
    when it is in (or a rebalance is under way, it is an idle member, or none of its topics exists yet)."""
    description = view.description
    state = _state(description)
    if state not in SETTLED:
        return None
    member = listed(description, member_id)
    if member is not None:
        assignment = getattr(member, "assignment", None)
        partitions = list(getattr(assignment, "topic_partitions", None) or ())
        if partitions:
            return f"the group ({state}) gives it {len(partitions)} partition(s) it never received"
        return None
    if not view.topics_exist:
        return None
    members = list(getattr(description, "members", None) or ())
    return f"the group ({state}, {len(members)} member(s)) does not list it"


class RejoinWatchdog:
    """Tells the poll thread when to recreate a consumer stuck out of its group (the module's docstring).

    Args:
        describe: asks the broker about the group (in the background; see :data:`GroupDescriber`).
        group_id: the consumer group.
        after_s: how long without partitions before the broker is asked (see :func:`after_s`).
        interval_s: the time between two questions (a sixth of ``after_s``, 1 to 15 s, unless given).
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
        self._pending: Future[GroupView] | None = None
        self._asked_for: float | None = None  # the unassigned_since the pending question was asked for
        self._stuck = 0
        self._next_question = 0.0
        self._backoff = 1  # doubles with each recreate that did not bring partitions, up to MAX_BACKOFF
        self._failures = 0
        self.answers = 0  # answers read (for tests and debugging)

    def _forget(self) -> None:
        self._pending = None
        self._stuck = 0

    def check(self, unassigned_since: float | None, member_id: Callable[[], str | None]) -> str | None:
        """Called by the poll thread at every round; quick unless the consumer has had no partition for
        ``after_s``. Returns why the consumer should be recreated, or None.

        Args:
            unassigned_since: ``clock()`` when the consumer last had no partition left (or started); None
                while it has some.
            member_id: the consumer's group member id now (read only when a question is asked or answered).
        """
        if unassigned_since is None:
            if self._pending is not None or self._stuck:
                self._forget()
            self._backoff = 1  # partitions came: the last recreate (if any) worked
            return None
        now = self._clock()
        waited = now - unassigned_since
        if waited < self.after_s * self._backoff:
            if self._pending is not None or self._stuck:
                self._forget()  # an answer asked for earlier is about another spell without partitions
            return None
        pending = self._pending
        if pending is not None:
            if not pending.done():
                return None
            self._pending = None
            if self._asked_for != unassigned_since:  # asked before the partitions came and went again
                self._stuck = 0
                return None
            return self._answered(pending, member_id(), waited)
        if now >= self._next_question:
            self._next_question = now + self.interval_s
            self._asked_for = unassigned_since
            try:
                self._pending = self._describe(self._group_id, member_id())
            except Exception as exc:  # noqa: BLE001 - asked again at the next interval
                self._failed(exc)
        return None

    def _answered(self, answer: Future[GroupView], member_id: str | None, waited: float) -> str | None:
        try:
            view = answer.result()
        except Exception as exc:  # noqa: BLE001 - the broker did not answer: an outage, not a stuck client
            self._failed(exc)
            self._stuck = 0
            return None
        if self._failures >= FAILURES_TO_WARN:
            log.info("the rejoin watchdog gets answers about group %s again", self._group_id)
        self._failures = 0
        self.answers += 1
        reason = out_of_group(view, member_id)
        if reason is None:
            self._stuck = 0
            return None
        self._stuck += 1
        log.info(
            "no partitions for %.0f s and %s (answer %d of %d before the consumer is recreated)",
            waited,
            reason,
            self._stuck,
            STUCK_ANSWERS,
        )
        if self._stuck < STUCK_ANSWERS:
            return None
        self._stuck = 0
        return f"no partitions for {waited:.0f} s and {reason}"

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures == FAILURES_TO_WARN:
            log.warning(
                "the rejoin watchdog cannot describe group %s (%s); until it can, it cannot tell whether this "
                "consumer is stuck out of its group (DESCRIBE on the group is needed)",
                self._group_id,
                exc,
            )
        else:
            log.debug("rejoin watchdog: the group could not be described: %s", exc)

    def assigned(self) -> None:
        """The consumer has partitions (the poll thread tells it from the rebalance callback; :meth:`check` is
        not asked meanwhile): the last recreate, if any, worked."""
        self._forget()
        self._backoff = 1

    def recreated(self) -> None:
        """A new consumer replaced the stuck one: forget the answers, and wait longer before the next recreate
        unless partitions come in between (a group that keeps refusing the consumer is not churned)."""
        self._forget()
        self._next_question = self._clock() + self.interval_s
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)


def group_describer(client_config: dict[str, Any], topics: list[str], timeout_s: float = 10.0) -> GroupDescriber:
    """A :data:`GroupDescriber` asking with an admin client of ``client_config``'s connection settings (created
    at the first question: most consumers never ask one, and kept for the consumer's life), each question on
    a thread of its own. The topics are looked up only when the group does not list the member."""
    admin: Any = None
    lock = threading.Lock()

    def ask(group_id: str, member_id: str | None) -> GroupView:
        nonlocal admin
        with lock:
            if admin is None:
                from confluent_kafka.admin import AdminClient

                from toolkit.consumer.kafka_log import kafka_logger

                config: dict[str, Any] = {**client_config, "logger": kafka_logger()}
                admin = AdminClient(config)
        try:
            description = admin.describe_consumer_groups([group_id], request_timeout=timeout_s)[group_id].result(
                timeout_s + 5
            )
            if listed(description, member_id) is not None:
                return GroupView(description, True)
            return GroupView(description, _any_exists(admin, topics, timeout_s))
        finally:
            admin.poll(0)  # serve its log lines (with a logger they wait on its queue for a poll)

    def describe(group_id: str, member_id: str | None) -> Future[GroupView]:
        future: Future[GroupView] = Future()

        def run() -> None:
            try:
                future.set_result(ask(group_id, member_id))
            except BaseException as exc:  # noqa: BLE001 - handed to the watchdog as "no answer"
                future.set_exception(exc)

        threading.Thread(target=run, name="epistle-rejoin-question", daemon=True).start()
        return future

    return describe


def _any_exists(admin: Any, topics: list[str], timeout_s: float) -> bool:
    """One of ``topics`` exists (a ``^`` regular expression, as librdkafka subscribes them: matches one that
    does). Named topics are described (a metadata request for one topic would create it on a broker that
    auto-creates topics); only a regular expression needs the whole list."""
    if any(topic.startswith("^") for topic in topics):
        existing = admin.list_topics(timeout=timeout_s).topics
        return any(_matches(topic, existing) for topic in topics)
    from confluent_kafka import KafkaError, KafkaException, TopicCollection

    answers = admin.describe_topics(TopicCollection(list(topics)), request_timeout=timeout_s)
    for answer in answers.values():
        try:
            answer.result(timeout_s + 5)
        except KafkaException as exc:
            if exc.args and getattr(exc.args[0], "code", lambda: None)() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise  # not an answer about the topic: the question failed
        return True
    return False


def _matches(topic: str, existing: Any) -> bool:
    """``topic`` exists, or (a ``^`` regular expression, as librdkafka subscribes them) matches one that does."""
    if not topic.startswith("^"):
        return topic in existing
    try:
        pattern = re.compile(topic)
    except re.error:
        return True  # librdkafka's own syntax: not ours to judge, assume it matches
    return any(pattern.search(name) for name in existing)
