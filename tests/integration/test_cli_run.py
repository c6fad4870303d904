"""``epistle run --app examples.shop.app:register`` as a subprocess on the real broker: with the local
``schemas/`` folder, with the real Apicurio registry over HTTP, stopped by SIGTERM, and failing fast on
start-up problems with a message naming the setting."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from toolkit.consumer.testing import committed, envelope_bytes, produce, read_topic

ROOT = Path(__file__).resolve().parents[2]
EPISTLE = [sys.executable, "-m", "toolkit.cli"]


def sample(schema: str, version: int, index: int = 0) -> dict:
    files = sorted((ROOT / "schemas" / schema / "samples" / str(version) / "valid").glob("*.json"))
    return json.loads(files[index].read_text())


def order(version: int, *, skus: list[str] | None = None, message_type: str = "OrderPlaced") -> bytes:
    body = sample("orders", version)
    body["orderId"] = str(uuid.uuid4())
    if skus:
        body["items"] = [{"sku": sku, "quantity": 1, "unitPrice": {"amount": "5", "currency": "EUR"}} for sku in skus]
    return envelope_bytes("orders", version, body, message_type=message_type)


def shipment(version: int, *, message_type: str = "ShipmentCreated", schema_version: int | None = None) -> bytes:
    body = sample("shipments", version)
    body["shipmentId"] = str(uuid.uuid4())
    return envelope_bytes("shipments", schema_version or version, body, message_type=message_type)


def run_env(kafka_bootstrap: str, orders: str, shipments: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": "",
        "SHOP_ORDERS_TOPIC": orders,
        "SHOP_SHIPMENTS_TOPIC": shipments,
        "EPISTLE_RETRY_BACKOFF_INITIAL_S": "0.05",
        "EPISTLE_COMMIT_INTERVAL_S": "0.2",
        **extra,
    }


def epistle(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([*EPISTLE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_run_the_shop_app_until_idle_with_the_local_folder(kafka_bootstrap, make_topic, group_id):
    orders, shipments = make_topic("orders", partitions=2), make_topic("shipments", partitions=2)
    # explicit partitions: unkeyed records may all land in one partition, and an empty one has nothing to commit
    produce(kafka_bootstrap, orders, [order(1), order(2)], partition=0)
    produce(kafka_bootstrap, orders, [order(2, skus=["LAMP-7"]), b"not json"], partition=1)
    produce(kafka_bootstrap, shipments, [shipment(1)], partition=0)
    produce(kafka_bootstrap, shipments, [shipment(2, message_type="ShipmentStatusChanged")], partition=1)
    started = time.perf_counter()
    proc = epistle(
        "run",
        "--app",
        "examples.shop.app:register",
        "--group-id",
        group_id,
        "--until-idle",
        "--max-workers",
        "2",
        env=run_env(kafka_bootstrap, orders, shipments),
    )
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()}
    assert rows[orders][1:4] == ["3", "1", "1"]  # processed, retried (LAMP-7 once), dead-lettered
    assert rows[shipments][1:4] == ["2", "0", "0"]
    assert "shop: 3 order(s) booked (v1: 1, v2: 2), 2 shipment(s) tracked" in proc.stderr  # cleanup ran
    assert committed(kafka_bootstrap, group_id, orders, 2) == _ends(kafka_bootstrap, orders, 2) == {0: 2, 1: 2}
    (dead,) = read_topic(kafka_bootstrap, f"{orders}.dlq", expected=1)
    assert dead.json()["error"]["stage"] == "decode"
    print(f"\nepistle run (local registry): {elapsed:.1f}s")


def _ends(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{uuid.uuid4().hex}"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        consumer.close()


def test_run_with_the_apicurio_registry_over_http(kafka_bootstrap, registry_url, make_topic, group_id, tmp_path):
    """Both example subjects are registered under ``<topic>-value`` (topic_value strategy) so the test owns
    its subjects on the shared registry; the consumer resolves every version over HTTP."""
    orders, shipments = make_topic("orders", partitions=1), make_topic("shipments", partitions=1)
    schemas = tmp_path / "schemas"
    for name, topic in (("orders", orders), ("shipments", shipments)):
        shutil.copytree(ROOT / "schemas" / name, schemas / name, ignore=shutil.ignore_patterns("samples"))
        (schemas / name / "subject.toml").write_text(f'compatibility = "BACKWARD"\ntopics = ["{topic}"]\n')
    env = {
        **run_env(kafka_bootstrap, orders, shipments),
        "SCHEMA_REGISTRY_SUBJECT_STRATEGY": "topic_value",
        "EPISTLE_UNKNOWN_SCHEMA_GRACE_S": "1.5",
    }
    registered = epistle("register", "--schemas", str(schemas), "--registry-url", registry_url, env=env)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert "registered 4" in registered.stdout

    produce(kafka_bootstrap, orders, [order(1), order(2)])
    produce(kafka_bootstrap, shipments, [shipment(1), shipment(2), shipment(2, schema_version=9)])
    proc = epistle(
        "run",
        "--app",
        "examples.shop.app:register",
        "--registry-url",
        registry_url,
        "--group-id",
        group_id,
        "--topics",
        f"{orders},{shipments}",
        "--until-idle",
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()}
    assert rows[orders][1:4] == ["2", "0", "0"]
    assert rows[shipments][1:4] == ["2", "0", "1"]
    (dead,) = read_topic(kafka_bootstrap, f"{shipments}.dlq", expected=1)
    error = dead.json()["error"]
    assert error["stage"] == "schema" and f"{shipments}-value" in error["reason"] and "9" in error["reason"]
    # epistle run took the grace from EPISTLE_UNKNOWN_SCHEMA_GRACE_S: asked again for 1.5 s, then gave up
    assert "(EPISTLE_UNKNOWN_SCHEMA_GRACE_S=1.5)" in error["reason"], error["reason"]
    assert 1.5 <= error["details"][0]["unknown_for_s"] < 10


def test_sigterm_finishes_commits_and_exits_zero(kafka_bootstrap, make_topic, group_id):
    orders, shipments = make_topic("orders", partitions=2), make_topic("shipments")
    produce(kafka_bootstrap, orders, [order(1) for _ in range(20)])
    proc = subprocess.Popen(
        [*EPISTLE, "run", "--app", "examples.shop.app:register", "--group-id", group_id, "--topics", orders],
        cwd=ROOT,
        env=run_env(kafka_bootstrap, orders, shipments),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def committed_total() -> int:
            return sum(max(0, n) for n in committed(kafka_bootstrap, group_id, orders, 2).values())

        for _ in range(150):  # polls 0.3 s apart: up to ~45 s for the 20 commits
            if committed_total() >= 20 or proc.poll() is not None:
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the consumer exited before committing"
        assert committed_total() >= 20, "nothing committed in time"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert "stopping" in err and "Traceback" not in err
    assert [line.split()[1] for line in out.splitlines() if line.startswith(orders)] == ["20"]


def test_start_up_problems_name_the_setting(kafka_bootstrap, make_topic, group_id):
    orders, shipments = make_topic("orders"), make_topic("shipments")
    env = run_env(kafka_bootstrap, orders, shipments)
    unreachable = epistle(
        "run",
        "--app",
        "examples.shop.app:register",
        "--group-id",
        group_id,
        "--registry-url",
        "http://127.0.0.1:9/apis/ccompat/v7",
        env={**env, "SCHEMA_REGISTRY_MAX_ATTEMPTS": "1"},
        timeout=60,
    )
    assert unreachable.returncode == 1
    assert "SCHEMA_REGISTRY_URL=http://127.0.0.1:9" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr

    no_broker = epistle(
        "run",
        "--app",
        "examples.shop.app:register",
        "--group-id",
        group_id,
        env={**env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "KAFKA_STARTUP_TIMEOUT_S": "2"},
        timeout=60,
    )
    assert no_broker.returncode == 1
    last = no_broker.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no Kafka broker answered at 127.0.0.1:9") and "KAFKA_BOOTSTRAP_SERVERS" in last
    assert "Traceback" not in no_broker.stderr and "%3|" not in no_broker.stderr

    missing = epistle(
        "run",
        "--app",
        "examples.shop.app:register",
        "--group-id",
        group_id,
        "--until-idle",
        "--topics",
        f"{orders},no-such-topic-{uuid.uuid4().hex[:6]}",
        env=env,
    )
    assert missing.returncode == 1 and "--topics" in missing.stderr and "no-such-topic" in missing.stderr
    assert "Traceback" not in missing.stderr
