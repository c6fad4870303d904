"""Static membership: an ``epistle run`` process with ``KAFKA_GROUP_INSTANCE_ID`` is killed with SIGKILL and
started again with the same id. The restart takes the dead member's place in the group (replaced, not added:
the broker swaps the member id behind the instance id instead of waiting for the dead member's session to
expire) and drains the topic; nothing is lost and only what was handled but not committed comes back.

librdkafka's default session (45 s) is kept on purpose: without the instance id the restart would join as a
second member and get no partition until the broker expired the dead one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from confluent_kafka.admin import AdminClient

from tests.reliability.test_nothing_lost import _fill, _finish, _read, _wait_for_lines
from toolkit.consumer.testing import committed

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3


def _start(
    bootstrap: str, topic: str, group: str, instance_id: str, record_file: Path, log: Path, *, until_idle: bool
) -> subprocess.Popen:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SCHEMA_REGISTRY_URL": "",
        "KAFKA_GROUP_INSTANCE_ID": instance_id,
        "EPISTLE_COMMIT_INTERVAL_S": "0.2",
        "EPISTLE_MAX_IN_FLIGHT": "1000",
        "RECORDER_FILE": str(record_file),
        "RECORDER_TOPIC": topic,
    }
    command = [
        sys.executable,
        "-m",
        "toolkit.cli",
        "run",
        "--app",
        "tests.reliability.recorder_app:register",
        "--group-id",
        group,
        "--topics",
        topic,
        "--log-level",
        "INFO",
        *(["--until-idle"] if until_idle else []),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _members(bootstrap: str, group: str) -> list[tuple[str, str | None]]:
    """(member id, group instance id) of every member the coordinator holds for ``group``."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=15)[group].result(30)
    return [(m.member_id, m.group_instance_id) for m in description.members]


def test_sigkill_then_restart_with_the_same_instance_id_replaces_the_member(
    kafka_bootstrap, make_topic, group_id, tmp_path
):
    topic = make_topic("reliability-static", partitions=PARTITIONS)
    ids = _fill(kafka_bootstrap, topic)
    instance_id = f"{group_id}-instance"
    records, log = tmp_path / "handled.txt", tmp_path / "consumer.log"

    first = _start(kafka_bootstrap, topic, group_id, instance_id, records, log, until_idle=False)
    _wait_for_lines(records, first, 3_500, log)
    members_before = _members(kafka_bootstrap, group_id)
    assert [instance for _, instance in members_before] == [instance_id], members_before  # the setting took
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL
    before = _read(records)
    after_kill = committed(kafka_bootstrap, group_id, topic, PARTITIONS)
    # The dead member is still in the group: its session (45 s) has not expired.
    assert _members(kafka_bootstrap, group_id) == members_before

    second = _start(kafka_bootstrap, topic, group_id, instance_id, records, log, until_idle=True)
    try:
        # While the restart runs (and after it exits: a static member does not leave), the group holds one
        # member for the instance id, under a new member id: the dead member was replaced, not joined.
        replaced = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and second.poll() is None:
            members = _members(kafka_bootstrap, group_id)
            assert len(members) == 1, f"the restart was added beside the dead member: {members}"
            if members[0][0] != members_before[0][0]:
                replaced = members
                break
            time.sleep(0.2)
        assert _finish(second, log) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    replaced = replaced or _members(kafka_bootstrap, group_id)
    assert len(replaced) == 1 and replaced[0][1] == instance_id, replaced
    assert replaced[0][0] != members_before[0][0], "the restart still uses the dead member's id"

    everything = _read(records)
    after = everything[len(before) :]
    counts = Counter(h.message_id for h in everything)
    assert set(counts) == set(ids), f"lost: {sorted(set(ids) - set(counts))[:10]}"
    start = {p: max(o, 0) for p, o in after_kill.items()}
    uncommitted = {h.message_id for h in before if h.offset >= start[h.partition]}
    assert {m for m, n in counts.items() if n > 1} == uncommitted
    assert all(h.offset >= start[h.partition] for h in after)
    # Everything was committed: each partition's committed offset is its record count (its log end).
    end = {p: len({h.offset for h in everything if h.partition == p}) for p in range(PARTITIONS)}
    assert committed(kafka_bootstrap, group_id, topic, PARTITIONS) == end
