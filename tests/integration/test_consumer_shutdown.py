"""SIGTERM: stop fetching, finish in-flight handlers, commit, return; a restart handles the rest once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from pathlib import Path

from toolkit.consumer import KafkaConsumer
from toolkit.consumer.testing import committed, envelope_bytes, produce
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
BODY = json.loads((ROOT / "schemas/orders/samples/1/valid/required-fields-only.json").read_text())
TOTAL = 400


def test_sigterm_finishes_in_flight_then_restart_handles_the_rest(kafka_bootstrap, make_topic, group_id):
    topic = make_topic("shutdown", partitions=3)
    for p in range(3):
        produce(
            kafka_bootstrap,
            topic,
            [envelope_bytes("orders", 1, BODY, message_id=f"{p}-{i}") for i in range(TOTAL // 4)],
            partition=p,
        )
    handled: Counter[str] = Counter()
    unfinished: set[str] = set()

    def make(**kw):
        consumer = KafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=group_id,
            registry=LocalFolderRegistry(ROOT / "schemas"),
            max_workers=3,
            commit_interval_s=5.0,
            **kw,
        )  # long interval: the shutdown commit matters

        async def handler(message):
            unfinished.add(message.header.message_id)
            await asyncio.sleep(0.01)
            handled[message.header.message_id] += 1
            unfinished.discard(message.header.message_id)
            if sum(handled.values()) == 60:
                os.kill(os.getpid(), signal.SIGTERM)

        consumer.register_handler(topic, handler)
        return consumer

    first = make()
    sigterm_before = signal.getsignal(signal.SIGTERM)
    asyncio.run(asyncio.wait_for(first.start(handle_signals=True), 60))  # returns normally on SIGTERM
    assert unfinished == set()  # every handler that started also finished
    handled_first = sum(handled.values())
    assert 60 <= handled_first < 3 * (TOTAL // 4)
    assert sum(max(o, 0) for o in committed(kafka_bootstrap, group_id, topic, 3).values()) == handled_first
    assert signal.getsignal(signal.SIGTERM) == sigterm_before  # our handler is gone again

    second = make(stop_when_idle=True)
    asyncio.run(asyncio.wait_for(second.start(), 60))
    assert len(handled) == 3 * (TOTAL // 4)
    assert max(handled.values()) == 1  # nothing handled twice
    assert committed(kafka_bootstrap, group_id, topic, 3) == {p: TOTAL // 4 for p in range(3)}
