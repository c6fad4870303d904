"""``epistle dlq`` as a subprocess on the real broker, on dead letters written by a real consumer: stats,
show with its filters, tail until Ctrl-C, and replay (exact originals, once, never into a dead-letter topic),
including a replay killed with SIGKILL and run again: nothing replayed twice, nothing skipped."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from confluent_kafka.admin import NewTopic

from tests.kafka_checks import records_in
from toolkit.consumer import KafkaConsumer, RetryPolicy
from toolkit.consumer.deadletter import SourceRecord, build_dead_letter
from toolkit.consumer.testing import envelope_bytes, produce, read_topic
from toolkit.dlq.letters import REPLAYED_FROM
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
EPISTLE = [sys.executable, "-m", "toolkit.cli", "dlq"]
ORDER = json.loads((SCHEMAS / "orders/samples/1/valid/full-card-payment.json").read_text())


def order(message_id: str, message_type: str = "OrderPlaced", **changes) -> bytes:
    return envelope_bytes("orders", 1, {**ORDER, **changes}, message_id=message_id, message_type=message_type)


def env(bootstrap: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_STARTUP_TIMEOUT_S": "10", **extra}


def epistle(bootstrap: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*EPISTLE, *args], cwd=ROOT, env=env(bootstrap), capture_output=True, text=True, timeout=timeout
    )


def dead_letter(bootstrap: str, topic: str, group: str, *, fail: tuple[str, ...] = ("boom",)) -> None:
    """Run a consumer over ``topic`` until it is drained: malformed records and the handler's failures
    (message ids in ``fail``) become dead letters in ``<topic>.dlq``."""

    async def handler(message):
        if message.header.message_id in fail:
            raise RuntimeError(f"downstream down for {message.header.message_id}")

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        registry=LocalFolderRegistry(SCHEMAS),
        retry=RetryPolicy(max_attempts=1, initial_s=0.01, max_s=0.02),
        stop_when_idle=True,
        commit_interval_s=0.2,
    )
    consumer.register_handler(topic, handler)
    asyncio.run(asyncio.wait_for(consumer.start(), 90))


MIXED = [
    (b"k0", b"not json 0"),
    (b"k1", b'{"header": "abc'),
    (b"k2", b"not json 2"),
    (b"k3", b'{"header": {}, "body": {}}'),
    (b"k4", order("v1", orderId=5)),
    (b"k5", order("ok-1")),
    (b"k6", order("boom", message_type="OrderCancelled")),
    (b"k7", order("v2", orderId=6)),
]
MIXED_STAGES = ["decode", "decode", "decode", "envelope", "validation", "handler", "validation"]


def mixed_dead_letters(bootstrap: str, make_topic, group_id: str) -> tuple[str, str]:
    """A topic whose consumer dead-lettered one record of each kind (MIXED_STAGES, in offset order)."""
    topic = make_topic("orders")
    produce(bootstrap, topic, MIXED, headers=[("trace", b"\x00\x01")])
    dead_letter(bootstrap, topic, group_id)
    assert records_in(bootstrap, f"{topic}.dlq") == len(MIXED_STAGES)
    return topic, f"{topic}.dlq"


# -- stats and show ------------------------------------------------------------------------------------------


def test_stats_counts_by_each_dimension_and_skips_what_is_not_a_dead_letter(kafka_bootstrap, make_topic, group_id):
    _, dlq = mixed_dead_letters(kafka_bootstrap, make_topic, group_id)
    produce(kafka_bootstrap, dlq, [b"not a dead letter"])
    proc = epistle(kafka_bootstrap, "stats", dlq, "--json")
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout)
    assert counts["dead_letters"] == 7 and counts["not_dead_letters"] == 1
    assert counts["by_stage"] == dict(Counter(MIXED_STAGES))
    assert counts["by_message_type"] == {"OrderPlaced": 2, "OrderCancelled": 1, "(none)": 4}
    assert counts["by_schema_version"] == {"orders v1": 3, "(none)": 4}
    assert counts["by_reason"]["RuntimeError: downstream down for boom"] == 1
    assert counts["by_reason"]["not JSON: Unterminated string starting at line 1 column 12"] == 1
    assert sum(counts["by_hour"].values()) == 7
    assert f"skipped, not a dead letter: {dlq}:0:7" in proc.stderr

    text = epistle(kafka_bootstrap, "stats", dlq, "--stage", "decode", "--stage", "handler")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"{dlq}: 4 dead letter(s)")
    assert "by stage" in text.stdout and "by hour dead-lettered (UTC)" in text.stdout


def test_show_filters_by_stage_reason_type_offsets_and_time(kafka_bootstrap, make_topic, group_id):
    topic, dlq = mixed_dead_letters(kafka_bootstrap, make_topic, group_id)

    def shown(*args: str) -> list[dict]:
        proc = epistle(kafka_bootstrap, "show", dlq, "--json", *args)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    everything = shown()
    assert [d["stage"] for d in everything] == MIXED_STAGES
    assert [d["dlq"]["offset"] for d in everything] == list(range(7))
    assert [d["source"]["offset"] for d in everything] == [0, 1, 2, 3, 4, 6, 7]  # 5 was processed
    assert everything[0]["original"] == {"encoding": "text", "value": "not json 0"}
    assert everything[4]["original"]["value"]["body"]["orderId"] == 5
    assert everything[4]["error"]["details"][0]["path"] == "$.orderId"

    assert [d["dlq"]["offset"] for d in shown("--stage", "validation")] == [4, 6]
    assert [d["reason"] for d in shown("--reason", "DOWNSTREAM")] == ["RuntimeError: downstream down for boom"]
    assert [d["messageType"] for d in shown("--message-type", "OrderCancelled")] == ["OrderCancelled"]
    assert [d["dlq"]["offset"] for d in shown("--from-offset", "2", "--to-offset", "4")] == [2, 3, 4]
    assert shown("--since", "1h", "--until", "2099-01-01") == everything
    assert shown("--since", "2099-01-01") == []

    text = epistle(kafka_bootstrap, "show", dlq, "--limit", "2", "--stage", "decode")
    assert text.returncode == 0, text.stderr
    assert text.stdout.count(f"{dlq}:0:") == 2 and "stopped at --limit 2" in text.stderr
    assert "reason   not JSON: Expecting value at line 1 column 1" in text.stdout
    assert f"source   {topic}:0:0  key k0" in text.stdout and "original (text) not json 0" in text.stdout


def test_a_missing_topic_and_a_missing_broker_are_one_message_each(kafka_bootstrap, make_topic):
    topic = make_topic("orders")
    for command in ("stats", "show", "tail", "replay"):
        proc = epistle(kafka_bootstrap, command, topic + "-nope.dlq")
        assert proc.returncode == 1, proc.stderr
        assert f"error: topic '{topic}-nope.dlq' does not exist" in proc.stderr
        assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [*EPISTLE, "stats", "orders.dlq"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env("127.0.0.1:1", KAFKA_STARTUP_TIMEOUT_S="1"),
    )
    assert proc.returncode == 1
    assert "no Kafka broker answered at 127.0.0.1:1 within 1s" in proc.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in proc.stderr and "Traceback" not in proc.stderr


# -- tail ------------------------------------------------------------------------------------------------------


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def _wait_for(lines: queue.Queue, predicate, seen: list[str], limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not any(predicate(line) for line in seen):
        assert time.monotonic() < deadline, f"not seen; so far: {seen}"
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            pass


def test_tail_prints_new_dead_letters_as_they_come_and_ctrl_c_ends_it(kafka_bootstrap, make_topic, admin, group_id):
    topic = make_topic("orders")
    dlq = f"{topic}.dlq"
    admin.create_topics([NewTopic(dlq, num_partitions=1, replication_factor=1)])[dlq].result(timeout=30)
    produce(
        kafka_bootstrap,
        dlq,
        [
            build_dead_letter(
                SourceRecord(topic, 0, 0, None, b"old", [], None),
                stage="decode",
                reason="an old one",
                consumer_group="g",
                attempts=1,
            ).value
        ],
    )
    proc = subprocess.Popen(
        [*EPISTLE, "tail", dlq, "--json"],
        cwd=ROOT,
        env=env(kafka_bootstrap),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = queue.Queue(), queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    threading.Thread(target=_lines, args=(proc.stderr, err), daemon=True).start()
    try:
        _wait_for(err, lambda line: line.startswith(f"following {dlq} from 0@1"), [])
        produce(kafka_bootstrap, topic, [b"not json", order("boom")])
        dead_letter(kafka_bootstrap, topic, group_id)
        seen: list[str] = []
        _wait_for(out, lambda _line: len(seen) >= 2, seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    letters = [json.loads(line) for line in seen]
    assert [(d["dlq"]["offset"], d["stage"]) for d in letters] == [(1, "decode"), (2, "handler")]
    stderr = []
    while not err.empty():
        stderr.append(err.get())
    assert "stopped: 2 dead letter(s) shown\n" in stderr and not any("Traceback" in line for line in stderr)


# -- replay ----------------------------------------------------------------------------------------------------


def replayed(records) -> list:
    """The records of a topic that a replay wrote, by the dead letter they came from."""
    return [r for r in records if any(name == REPLAYED_FROM for name, _ in r.headers)]


def replayed_from(record) -> str:
    (value,) = [value for name, value in record.headers if name == REPLAYED_FROM]
    return value.decode()


def test_replay_gives_back_the_exact_originals_once_and_dry_run_sends_nothing(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("orders")
    headers = [("trace", b"\x00\xff"), ("null", None), ("trace", b"twice")]
    produce(
        kafka_bootstrap,
        topic,
        [(b"k-\xff", b"\xc3\x28 not utf8"), (None, order("boom")), (b"k", order("ok"))],
        headers=headers,
    )
    dead_letter(kafka_bootstrap, topic, group_id)
    dlq = f"{topic}.dlq"
    originals = read_topic(kafka_bootstrap, topic, expected=3)[:2]

    dry = epistle(kafka_bootstrap, "replay", dlq, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would replay {dlq}:0:0 -> {topic}:0  stage decode" in dry.stdout
    assert "dry run, " in dry.stdout and "2 would be replayed" in dry.stdout
    assert records_in(kafka_bootstrap, topic) == 3

    proc = epistle(kafka_bootstrap, "replay", dlq)
    assert proc.returncode == 0, proc.stderr
    assert f"2 replayed; recorded in group epistle-dlq-replay.{dlq}" in proc.stdout
    back = replayed(read_topic(kafka_bootstrap, topic, expected=5))
    assert [(r.partition, r.key, r.value, r.timestamp) for r in back] == [
        (o.partition, o.key, o.value, o.timestamp) for o in originals
    ]
    for record, original in zip(back, originals, strict=True):
        assert record.headers[:-1] == original.headers == headers  # null values stay null, order kept
    assert [replayed_from(r) for r in back] == [f"{dlq}:0:0", f"{dlq}:0:1"]

    again = epistle(kafka_bootstrap, "replay", dlq)
    assert again.returncode == 0, again.stderr
    assert "0 replayed" in again.stdout and records_in(kafka_bootstrap, topic) == 5

    forced = epistle(kafka_bootstrap, "replay", dlq, "--force", "--stage", "handler")
    assert forced.returncode == 0, forced.stderr
    assert "1 replayed" in forced.stdout and records_in(kafka_bootstrap, topic) == 6


def test_replay_with_filters_into_another_topic_then_the_rest(kafka_bootstrap, make_topic, group_id):
    _, dlq = mixed_dead_letters(kafka_bootstrap, make_topic, group_id)
    target = make_topic("repaired")
    first = epistle(kafka_bootstrap, "replay", dlq, "--to", target, "--stage", "validation")
    assert first.returncode == 0, first.stderr
    assert "2 replayed, 5 not selected" in first.stdout
    assert [replayed_from(r) for r in read_topic(kafka_bootstrap, target, expected=2)] == [f"{dlq}:0:4", f"{dlq}:0:6"]

    rest = epistle(kafka_bootstrap, "replay", dlq, "--to", target)  # the same group: what it did is recorded
    assert rest.returncode == 0, rest.stderr
    assert "5 replayed, 2 already replayed (skipped)" in rest.stdout
    records = read_topic(kafka_bootstrap, target, expected=7)
    assert sorted(replayed_from(r) for r in records) == [f"{dlq}:0:{o}" for o in range(7)]
    assert records_in(kafka_bootstrap, target) == 7


def test_replay_stops_at_a_record_that_is_not_a_dead_letter_unless_told_to_skip_it(
    kafka_bootstrap, make_topic, group_id
):
    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [b"not json 0"])
    dead_letter(kafka_bootstrap, topic, group_id)
    dlq = f"{topic}.dlq"
    produce(kafka_bootstrap, dlq, [b"junk"])
    produce(kafka_bootstrap, topic, [b"not json 2"])
    dead_letter(kafka_bootstrap, topic, group_id)  # the same group: only the new record

    stopped = epistle(kafka_bootstrap, "replay", dlq)
    assert stopped.returncode == 1
    assert f"error: {dlq}:0:1: " in stopped.stderr and "--skip-invalid" in stopped.stderr
    assert "1 replayed before it stopped" in stopped.stderr
    assert [r.value for r in replayed(read_topic(kafka_bootstrap, topic, expected=3))] == [b"not json 0"]

    skipped = epistle(kafka_bootstrap, "replay", dlq, "--skip-invalid")
    assert skipped.returncode == 0, skipped.stderr
    assert "1 replayed, 1 not dead letters (skipped)" in skipped.stdout
    assert f"skipped, not a dead letter: {dlq}:0:1" in skipped.stderr
    assert [r.value for r in replayed(read_topic(kafka_bootstrap, topic, expected=4))] == [b"not json 0", b"not json 2"]


def test_a_dead_letter_from_a_dead_letter_topic_is_never_replayed_there(kafka_bootstrap, make_topic):
    topic = make_topic("orders")
    dlq = f"{topic}.dlq"
    looped = build_dead_letter(
        SourceRecord(dlq, 0, 3, b"k", b"a dead letter itself", [], None),
        stage="decode",
        reason="not JSON",
        consumer_group="someone-reading-the-dlq",
        attempts=1,
    )
    produce(kafka_bootstrap, dlq, [(looped.key, looped.value)])
    proc = epistle(kafka_bootstrap, "replay", dlq)
    assert proc.returncode == 1
    assert f"came from {dlq}, a dead-letter topic" in proc.stderr and "--to" in proc.stderr
    assert records_in(kafka_bootstrap, dlq) == 1
    to = epistle(kafka_bootstrap, "replay", dlq, "--to", topic)
    assert to.returncode == 0, to.stderr
    assert [r.value for r in read_topic(kafka_bootstrap, topic, expected=1)] == [b"a dead letter itself"]


def test_a_replayed_record_that_fails_again_is_not_replayed_a_second_time_unless_forced(
    kafka_bootstrap, make_topic, group_id
):
    topic = make_topic("orders")
    produce(kafka_bootstrap, topic, [(b"k", order("boom"))])
    dead_letter(kafka_bootstrap, topic, group_id)
    dlq = f"{topic}.dlq"
    assert epistle(kafka_bootstrap, "replay", dlq).returncode == 0
    dead_letter(kafka_bootstrap, topic, group_id)  # the replayed record fails again: a second dead letter
    assert records_in(kafka_bootstrap, dlq) == 2

    proc = epistle(kafka_bootstrap, "replay", dlq)
    assert proc.returncode == 0, proc.stderr
    assert "0 replayed, 1 of records that failed again after a replay (skipped; --force)" in proc.stdout
    assert f"skipped {dlq}:0:1: its original was replayed already from {dlq}:0:0" in proc.stderr
    assert records_in(kafka_bootstrap, topic) == 2

    forced = epistle(kafka_bootstrap, "replay", dlq, "--force")
    assert forced.returncode == 0, forced.stderr
    records = read_topic(kafka_bootstrap, topic, expected=4)
    assert [replayed_from(r) for r in records[1:]] == [f"{dlq}:0:0", f"{dlq}:0:0", f"{dlq}:0:1"]


# -- replay interrupted --------------------------------------------------------------------------------------------

KEYS = 40


def many_dead_letters(bootstrap: str, make_topic, admin, group_id: str) -> tuple[str, str, list]:
    """KEYS dead letters over two source partitions, in a two-partition dead-letter topic."""
    topic = make_topic("orders", partitions=2)
    dlq = f"{topic}.dlq"
    admin.create_topics([NewTopic(dlq, num_partitions=2, replication_factor=1)])[dlq].result(timeout=30)
    for partition in (0, 1):
        produce(
            bootstrap,
            topic,
            [(f"k{i}".encode(), f"not json {partition}/{i}".encode()) for i in range(KEYS // 2)],
            partition=partition,
            headers=[("n", b"1")],
        )
    originals = read_topic(bootstrap, topic, expected=KEYS)
    dead_letter(bootstrap, topic, group_id)
    assert records_in(bootstrap, dlq) == KEYS
    return topic, dlq, originals


def assert_each_replayed_once(bootstrap: str, target: str, dlq: str, originals: list) -> None:
    records = read_topic(bootstrap, target, expected=KEYS)
    assert records_in(bootstrap, target) == KEYS  # nothing twice
    sources = sorted(replayed_from(r) for r in records)
    assert len(set(sources)) == KEYS  # nothing skipped
    for partition in (0, 1):  # each into the partition it came from, exactly (the two dead-letter
        # partitions are read side by side: the order holds per key, and each key is once here)
        assert sorted(
            (r.key, r.value, r.headers[:-1], r.timestamp) for r in records if r.partition == partition
        ) == sorted((o.key, o.value, o.headers, o.timestamp) for o in originals if o.partition == partition)


def test_a_replay_killed_with_sigkill_goes_on_where_it_stopped(kafka_bootstrap, make_topic, admin, group_id):
    _, dlq, originals = many_dead_letters(kafka_bootstrap, make_topic, admin, group_id)
    target = make_topic("repaired", partitions=2)
    proc = subprocess.Popen(
        [*EPISTLE, "replay", dlq, "--to", target, "--rate", "8"],
        cwd=ROOT,
        env=env(kafka_bootstrap),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while records_in(kafka_bootstrap, target) < 10:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the replay did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    sent = records_in(kafka_bootstrap, target)
    assert 10 <= sent < KEYS  # killed mid-way

    resumed = epistle(kafka_bootstrap, "replay", dlq, "--to", target)
    assert resumed.returncode == 0, resumed.stderr
    assert_each_replayed_once(kafka_bootstrap, target, dlq, originals)
    assert epistle(kafka_bootstrap, "replay", dlq, "--to", target).returncode == 0
    assert records_in(kafka_bootstrap, target) == KEYS


# The process dies after the broker acknowledged a batch and before the group recorded it: the window the
# destination's marks are for. Patched in a child process so that the kill lands exactly there.
_DIE_AFTER_ACKS = """
import os, signal, sys
from toolkit.dlq import kafka

def settle(self):
    if self.sent and self.producer is not None and len(self.sent) >= 5:
        assert self.producer.flush(30) == 0
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self)

real = kafka._Replay._settle
kafka._Replay._settle = settle
sys.argv = ["epistle", *sys.argv[1:]]
from toolkit.cli import main
main()
"""


def test_a_replay_killed_between_acknowledgement_and_record_does_not_send_again(
    kafka_bootstrap, make_topic, admin, group_id
):
    _, dlq, originals = many_dead_letters(kafka_bootstrap, make_topic, admin, group_id)
    target = make_topic("repaired", partitions=2)
    killed = subprocess.run(
        [sys.executable, "-c", _DIE_AFTER_ACKS, "dlq", "replay", dlq, "--to", target, "--rate", "20"],
        cwd=ROOT,
        env=env(kafka_bootstrap),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    sent = records_in(kafka_bootstrap, target)
    assert 5 <= sent < KEYS

    resumed = epistle(kafka_bootstrap, "replay", dlq, "--to", target)
    assert resumed.returncode == 0, resumed.stderr
    assert "was interrupted: reading" in resumed.stderr
    found = re.search(r"(\d+) found sent by an interrupted run \(recorded\)", resumed.stdout)
    assert found and int(found[1]) >= 5, resumed.stdout  # the batch it was killed in (earlier ones recorded)
    assert_each_replayed_once(kafka_bootstrap, target, dlq, originals)
