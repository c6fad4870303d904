"""A real Prometheus server scrapes ``epistle run --metrics-port`` on the real broker: PromQL over its HTTP
API gives the counts of what was produced; the probes answer; librdkafka's statistics give the lag."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from toolkit.consumer.testing import envelope_bytes, produce

ROOT = Path(__file__).resolve().parents[2]
EPISTLE = [sys.executable, "-m", "toolkit.cli"]
VALID, UNDECODABLE, INVALID = 12, 2, 3


def order(version: int, folder: str = "valid", name: str | None = None) -> bytes:
    samples = ROOT / "schemas" / "orders" / "samples" / str(version) / folder
    body = json.loads((samples / name if name else sorted(samples.glob("*.json"))[0]).read_text())
    if folder == "valid":
        body["orderId"] = str(uuid.uuid4())
    return envelope_bytes("orders", version, body, message_type="OrderPlaced")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(prometheus_url: str, promql: str) -> float | None:
    result = query(prometheus_url, promql)
    return float(result[0]["value"][1]) if result else None


def eventually(check: Callable[[], Any], what: str, timeout_s: float = 90.0) -> Any:
    """Poll ``check`` until it returns something truthy (the deadline only bounds a hung test)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"still waiting for {what} (last: {last!r})")


def test_prometheus_scrapes_a_running_consumer(kafka_bootstrap, prometheus, make_topic, group_id):
    orders, shipments = make_topic("orders", partitions=2), make_topic("shipments")
    valid = [order(1) for _ in range(VALID // 2)] + [order(2) for _ in range(VALID // 2)]
    invalid = [order(2, "invalid", "customer-email-invalid.json") for _ in range(INVALID)]
    # Half on each partition, named: records without a key go where librdkafka's sticky partitioner puts them,
    # all on one partition now and then, and a partition the group never committed on has no lag to report.
    records = [*valid, b"not json", b"\xff\xfe{", *invalid]
    for partition in (0, 1):
        produce(kafka_bootstrap, orders, records[partition::2], partition=partition)
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": "",
        "SHOP_ORDERS_TOPIC": orders,
        "SHOP_SHIPMENTS_TOPIC": shipments,
        "EPISTLE_COMMIT_INTERVAL_S": "0.2",
        "EPISTLE_METRICS_ADDRESS": "127.0.0.1",
    }
    consumer = subprocess.Popen(
        [*EPISTLE, "run", "--app", "examples.shop.app:register", "--group-id", group_id, "--metrics-port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    prometheus.targets.mkdir(parents=True, exist_ok=True)
    target = prometheus.targets / f"{group_id}.json"
    target.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"test_group": group_id}}]))
    url, mine = prometheus.url, f'test_group="{group_id}"'
    try:
        eventually(lambda: scalar(url, f"up{{{mine}}}") == 1, "Prometheus scraping the consumer")
        processed = f'sum(epistle_records_total{{{mine},topic="{orders}",outcome="processed"}})'
        dead = f'sum(epistle_records_total{{{mine},topic="{orders}",outcome="dead_lettered"}})'
        eventually(
            lambda: scalar(url, processed) == VALID and scalar(url, dead) == UNDECODABLE + INVALID,
            f"{VALID} processed and {UNDECODABLE + INVALID} dead-lettered in Prometheus",
        )
        by_stage = {
            r["metric"]["stage"]: float(r["value"][1])
            for r in query(url, f'sum by (stage) (epistle_records_total{{{mine},outcome="dead_lettered"}})')
        }
        assert by_stage == {"decode": UNDECODABLE, "validation": INVALID}
        by_version = {
            (r["metric"]["message_type"], r["metric"]["schema_version"]): float(r["value"][1])
            for r in query(
                url, f'sum by (message_type, schema_version) (epistle_records_total{{{mine},outcome="processed"}})'
            )
        }
        assert by_version == {("OrderPlaced", "1"): VALID // 2, ("OrderPlaced", "2"): VALID // 2}
        handled = f'sum(epistle_handler_duration_seconds_count{{{mine},topic="{orders}"}})'
        assert scalar(url, handled) == VALID  # the shop's handler ran once per valid order
        eventually(
            lambda: (scalar(url, f'sum(epistle_commits_total{{{mine},result="ok"}})') or 0) > 0, "commits counted"
        )
        assert scalar(url, f'sum(epistle_assigned_partitions{{{mine},topic="{orders}"}})') == 2
        # librdkafka's statistics (every 5 s): both partitions measured, nothing left behind
        lag = f'epistle_consumer_lag{{{mine},topic="{orders}"}}'
        eventually(lambda: len(query(url, lag)) == 2 and scalar(url, f"sum({lag})") == 0, "the lag measured as 0")
        assert scalar(url, f"epistle_healthy{{{mine}}}") == 1 and scalar(url, f"epistle_ready{{{mine}}}") == 1
        # every query of the Grafana dashboard is PromQL that Prometheus accepts, and finds this consumer
        dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
        answered = 0
        for panel in dashboard["panels"]:
            for shown in panel.get("targets", []):
                expr = shown["expr"].replace("$__rate_interval", "1m").replace('=~"$instance"', f'="127.0.0.1:{port}"')
                answered += bool(query(url, expr.replace("$group", ".*").replace("$topic", ".*")))
        assert answered >= 10, answered
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert health.status_code == 200 and health.json()["consumer_group"] == group_id
        assert ready.status_code == 200 and ready.json()["assigned_partitions"] == 3  # orders 2 + shipments 1
    finally:
        target.unlink(missing_ok=True)
        consumer.send_signal(signal.SIGTERM)
        try:
            out, err = consumer.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            consumer.kill()
            out, err = consumer.communicate()
    assert consumer.returncode == 0, out + err
    assert "Traceback" not in err


def test_a_private_prometheus_starts_answers_and_stops(tmp_path: Path) -> None:
    """The services script's Prometheus in a state folder of its own: up, ready, down, no process left."""
    port = free_port()
    env = {**os.environ, "EPISTLE_SERVICES_DIR": str(tmp_path), "EPISTLE_PROMETHEUS_PORT": str(port)}
    script = [sys.executable, str(ROOT / "scripts" / "services.py")]
    up = subprocess.run([*script, "up", "prometheus"], env=env, capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    pid = int((tmp_path / "prometheus" / "pid").read_text())
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=10).status_code == 200
        status = subprocess.run([*script, "status", "prometheus"], env=env, capture_output=True, text=True)
        assert status.returncode == 0 and "ready" in status.stdout
    finally:
        down = subprocess.run([*script, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "prometheus: stopped" in down.stdout, down.stdout + down.stderr
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # gone (or a zombie)
