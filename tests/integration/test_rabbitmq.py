"""RabbitMQ under the consumer, against a real node (the ``rabbitmq_url`` fixture): the malformed corpus
dead-lettered with its exact bytes and AMQP coordinates, a broker restart mid-stream, and ``epistle run
--broker rabbitmq`` killed (SIGKILL) or stopped (SIGTERM) part-way. "Nothing lost" is read from the
handlers' side effects and from the queues themselves (messages left ready or unacknowledged)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.malformed_corpus import corpus
from toolkit.consumer import KafkaConsumer, RetryPolicy
from toolkit.consumer.amqp import RabbitTransport, headers_from_table, table_from_headers
from toolkit.consumer.deadletter import original_record
from toolkit.consumer.testing import envelope_bytes
from toolkit.consumer.transport import FetchState, ObservableTransport
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]
SERVICES = [sys.executable, str(ROOT / "scripts" / "services.py")]
VALID_BODY = json.loads((ROOT / "schemas/orders/samples/1/valid/full-card-payment.json").read_text())
PREFETCH = 300  # the unacknowledged window of the subprocess tests: the bound on duplicates after a SIGKILL


def amqp(url: str, conversation: Any, *args: Any) -> Any:
    """Run ``conversation(connection, *args)`` on a connection of its own."""

    async def run() -> Any:
        import aio_pika

        connection = await aio_pika.connect(url)
        try:
            return await conversation(connection, *args)
        finally:
            await connection.close()

    return asyncio.run(run())


async def _publish(
    connection: Any, queue: str, messages: list[tuple[bytes | None, bytes, list]], arguments: dict | None = None
) -> None:
    import aio_pika

    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue, durable=True, arguments=arguments)
    for key, value, headers in messages:
        message = aio_pika.Message(
            value, headers=table_from_headers(key, headers), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)


async def _count(connection: Any, queue: str) -> int:
    """Messages ready in ``queue`` (those delivered and not acknowledged are not counted)."""
    channel = await connection.channel()
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count


async def _take(connection: Any, queue: str) -> list[Any]:
    """Every message of ``queue``, acknowledged (removed)."""
    channel = await connection.channel()
    declared = await channel.declare_queue(queue, passive=True)
    taken = []
    while (message := await declared.get(no_ack=True, fail=False)) is not None:
        taken.append(message)
    return taken


async def _delete(connection: Any, queues: list[str]) -> None:
    for queue in queues:
        channel = await connection.channel()
        await channel.queue_delete(queue)


@pytest.fixture
def queue(rabbitmq_url, unique_name):
    """A new queue name; the queue and its dead-letter queue are deleted after the test."""
    names: list[str] = []

    def make(prefix: str = "orders") -> str:
        names.append(unique_name(prefix))
        return names[-1]

    yield make
    amqp(rabbitmq_url, _delete, [n for name in names for n in (name, f"{name}.dlq", f"{name}.source")])


def test_malformed_corpus_is_dead_lettered_with_exact_bytes_and_amqp_coordinates(rabbitmq_url, queue, group_id):
    # AMQP has no null body: the corpus's tombstone is left out ("empty" is the empty body)
    entries = [entry for entry in corpus() if entry.value is not None]
    topic = queue("malformed")
    headers = [("origin", b"corpus")]
    messages = []
    for i, entry in enumerate(entries):
        messages.append((f"valid-{i}".encode(), envelope_bytes("orders", 1, VALID_BODY, message_id=f"v{i}"), headers))
        messages.append((entry.name.encode(), entry.value, headers))
    amqp(rabbitmq_url, _publish, topic, messages)
    handled = []

    async def handler(message):
        handled.append(message.header.message_id)

    consumer = KafkaConsumer(
        group_id=group_id,
        transport=RabbitTransport(rabbitmq_url),
        registry=LocalFolderRegistry(ROOT / "schemas"),
        stop_when_idle=True,
        retry=RetryPolicy(max_attempts=2, initial_s=0.05),
        commit_interval_s=0.2,
        unknown_schema_grace_s=0,
    )
    consumer.register_handler(topic, handler)
    asyncio.run(asyncio.wait_for(consumer.start(), 120))

    assert sorted(handled) == sorted(f"v{i}" for i in range(len(entries)))
    dead = amqp(rabbitmq_url, _take, f"{topic}.dlq")
    by_key = {}
    for message in dead:
        key, dl_headers, _ = headers_from_table(message.headers)
        by_key[key.decode()] = (message, dl_headers)
    assert sorted(by_key) == sorted(entry.name for entry in entries)
    wrong = {}
    for entry in entries:
        message, dl_headers = by_key[entry.name]
        value = json.loads(message.body)
        if value["error"]["stage"] != entry.stage:
            wrong[entry.name] = (value["error"]["stage"], entry.stage, value["error"]["reason"][:200])
        original = original_record(message.body, None, dl_headers)
        assert original.value == entry.value, entry.name
        assert original.key == entry.name.encode() and original.headers == headers
        assert (original.topic, original.partition) == (topic, 0)
        coordinates = value["source"]["amqp"]
        assert coordinates["queue"] == coordinates["routingKey"] == topic and coordinates["exchange"] == ""
        assert coordinates["deliveryTag"] == original.offset + 1 and coordinates["redelivered"] is False
        assert coordinates["properties"]["delivery_mode"] == 2
        assert message.delivery_mode == 2 and message.content_type == "application/json"  # persistent, JSON
    assert wrong == {}
    assert consumer.stats[topic].dead_lettered_total == len(entries)
    assert amqp(rabbitmq_url, _count, topic) == 0  # everything acknowledged: nothing comes back


def test_a_message_dead_lettered_by_rabbitmq_keeps_its_x_death_and_typed_headers(rabbitmq_url, queue, group_id):
    topic = queue("xdeath")
    amqp(rabbitmq_url, _publish, topic, [])  # declared before anything is routed to it
    # A queue whose messages expire at once into ``topic``: RabbitMQ adds x-death on the way
    source_args = {"x-message-ttl": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": topic}

    async def publish_typed(connection: Any) -> None:
        import aio_pika

        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(f"{topic}.source", durable=True, arguments=source_args)
        message = aio_pika.Message(b"not json", headers={"retries": 3, "urgent": True, "trace": "t-1"})
        await channel.default_exchange.publish(message, routing_key=f"{topic}.source")

    amqp(rabbitmq_url, publish_typed)
    consumer = KafkaConsumer(
        group_id=group_id,
        transport=RabbitTransport(rabbitmq_url),
        stop_when_idle=True,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        commit_interval_s=0.2,
    )
    consumer.register_handler(topic, lambda message: None)

    async def run_when_routed() -> None:
        for _ in range(200):  # the expiry is asynchronous: wait (bounded) until the message is in the queue
            if await asyncio.to_thread(amqp, rabbitmq_url, _count, topic):
                break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(consumer.start(), 60)

    asyncio.run(run_when_routed())
    (message,) = amqp(rabbitmq_url, _take, f"{topic}.dlq")
    value = json.loads(message.body)
    coordinates = value["source"]["amqp"]
    (death,) = coordinates["xDeath"]
    assert (death["queue"], death["reason"], death["count"]) == (f"{topic}.source", "expired", 1)
    assert coordinates["headerTypes"] == {"retries": "int", "urgent": "bool", "x-death": "array"}
    original = original_record(message.body)
    assert original.value == b"not json"
    table = table_from_headers(original.key, original.headers, coordinates["headerTypes"])
    assert (table["retries"], table["urgent"], table["trace"]) == (3, True, "t-1")  # the AMQP types come back
    assert table["x-death"][0]["reason"] == "expired"


def test_quorum_queue_with_a_single_active_consumer_keeps_the_order_across_two_consumers(rabbitmq_url, queue, group_id):
    topic = queue("quorum")
    ids = [f"q{i:03d}" for i in range(40)]
    handled: dict[str, list[str]] = {"a": [], "b": []}

    def member(name: str) -> KafkaConsumer:
        transport = RabbitTransport(rabbitmq_url, queue_type="quorum", single_active_consumer=True)
        consumer = KafkaConsumer(
            group_id=group_id,
            transport=transport,
            commit_interval_s=0.2,
            registry=LocalFolderRegistry(ROOT / "schemas"),
            max_workers=4,
        )

        @consumer.handler(topic)
        async def handle(message) -> None:
            await asyncio.sleep(0.002)
            handled[name].append(message.header.message_id)

        return consumer

    async def two_members() -> None:
        a, b = member("a"), member("b")
        tasks = [asyncio.create_task(a.start())]
        await asyncio.sleep(1)  # a declared the queue and is its active consumer
        tasks.append(asyncio.create_task(b.start()))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(
            amqp,
            rabbitmq_url,
            _publish,
            topic,
            [(None, envelope_bytes("orders", 1, VALID_BODY, message_id=i), []) for i in ids],
            {"x-queue-type": "quorum", "x-single-active-consumer": True},
        )
        for _ in range(600):  # bounded: 30 s
            if len(handled["a"]) + len(handled["b"]) >= len(ids):
                break
            await asyncio.sleep(0.05)
        for consumer, task in ((b, tasks[1]), (a, tasks[0])):
            await consumer.stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(two_members())
    assert handled == {"a": ids, "b": []}  # one active consumer, in the queue's order; the other stood by
    assert amqp(rabbitmq_url, _count, topic) == 0


def _restart_rabbitmq() -> None:
    for action in ("down", "up"):
        proc = subprocess.run([*SERVICES, action, "rabbitmq"], capture_output=True, text=True)
        assert proc.returncode == 0, f"services.py {action} rabbitmq:\n{proc.stdout}{proc.stderr}"


def test_a_broker_restart_mid_stream_loses_nothing(rabbitmq_url, queue, group_id):
    if os.environ.get("RABBITMQ_URL"):
        pytest.skip("RABBITMQ_URL points at a broker these tests did not start: it is not restarted")
    topic = queue("restart")
    ids = [f"r{i:05d}" for i in range(3000)]
    amqp(
        rabbitmq_url, _publish, topic, [(None, envelope_bytes("orders", 1, VALID_BODY, message_id=i), []) for i in ids]
    )
    handled: Counter[str] = Counter()
    consumer = KafkaConsumer(
        group_id=group_id,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        transport=RabbitTransport(rabbitmq_url, prefetch_count=200, reconnect_interval_s=0.5),
        commit_interval_s=0.2,
        max_in_flight=200,
    )

    @consumer.handler(topic)
    async def handle(message) -> None:
        await asyncio.sleep(0.001)  # slow enough that the restart lands mid-stream
        handled[message.header.message_id] += 1

    async def restart_mid_stream() -> None:
        task = asyncio.create_task(consumer.start())
        try:
            while len(handled) < len(ids) // 3:
                assert not task.done(), "the consumer stopped"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(_restart_rabbitmq)
            for _ in range(2400):  # bounded: 120 s
                if len(handled) == len(ids) and await asyncio.to_thread(amqp, rabbitmq_url, _count, topic) == 0:
                    break
                assert not task.done(), "the consumer stopped"
                await asyncio.sleep(0.05)
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 60)

    asyncio.run(restart_mid_stream())
    assert set(handled) == set(ids)  # nothing lost
    # Redelivered: at most the unacknowledged window (prefetch 200) each time the channel was lost; a restart
    # can lose it twice (the node stopping, then a channel opened while it was still booting)
    assert sum(count - 1 for count in handled.values()) <= 2 * 200
    assert amqp(rabbitmq_url, _count, topic) == 0  # every message acknowledged once the consumer stopped


def _orders(ids: list[str]) -> list[tuple[bytes | None, bytes, list]]:
    return [(None, envelope_bytes("orders", 1, VALID_BODY, message_id=i), []) for i in ids]


async def _until(condition: Any, task: asyncio.Task, what: str, timeout_s: float = 60.0) -> None:
    """Wait (bounded) until ``await condition()`` is true, the consumer's task still running."""
    for _ in range(int(timeout_s / 0.05)):
        if await condition():
            return
        assert not task.done(), f"the consumer stopped before {what}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_consumer_cancelled_by_the_broker_loses_nothing_and_acknowledges_nothing_unhandled(
    rabbitmq_url, queue, group_id
):
    # The broker cancels a consumer when its queue is deleted or a quorum queue loses its members; neither
    # keeps the messages on a one-node broker, so the broker's basic.cancel is fed to the channel's own
    # handler, as its reader does with the frame, while the broker's consumer stays (a leader change). The
    # window (prefetch 100, 20 in flight) keeps deliveries waiting in the transport at that moment: they must
    # come back, not be acknowledged by the next generation's basic.ack(multiple=True).
    from pamqp.commands import Basic

    topic = queue("cancel")
    ids = [f"c{i:04d}" for i in range(400)]
    amqp(rabbitmq_url, _publish, topic, _orders(ids))
    handled: Counter[str] = Counter()
    transport = RabbitTransport(rabbitmq_url, prefetch_count=100)
    consumer = KafkaConsumer(
        group_id=group_id,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        transport=transport,
        commit_interval_s=0.1,
        max_in_flight=20,
    )

    @consumer.handler(topic)
    async def handle(message) -> None:
        await asyncio.sleep(0.002)
        handled[message.header.message_id] += 1

    async def cancel_mid_stream() -> None:
        task = asyncio.create_task(consumer.start())
        try:

            async def some_handled() -> bool:
                return len(handled) >= 100

            await _until(some_handled, task, "100 records were handled")
            state = transport._queues[(topic, 0)]
            underlay, generation = state.underlay, state.generation
            (tag,) = underlay.consumers
            assert state.buffer, "no delivery waited in the transport: the test proves nothing"
            await underlay._on_cancel_frame(Basic.Cancel(consumer_tag=tag, nowait=True))

            async def all_handled_and_acknowledged() -> bool:
                return len(handled) == len(ids) and await asyncio.to_thread(amqp, rabbitmq_url, _count, topic) == 0

            await _until(all_handled_and_acknowledged, task, "every record was handled")
            assert state.generation > generation and state.underlay is not underlay and underlay.is_closed
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 60)

    asyncio.run(cancel_mid_stream())
    assert set(handled) == set(ids)  # the deliveries of the cancelled consumer came back
    assert amqp(rabbitmq_url, _count, topic) == 0


class _Commits:
    def __init__(self) -> None:
        self.seen: list[tuple[float, bool]] = []

    def on_commit(self, seconds: float, ok: bool) -> None:
        self.seen.append((seconds, ok))


def test_one_transport_runs_two_consumer_starts_and_reports_fetch_state_lag_and_commits(rabbitmq_url, queue, group_id):
    topic = queue("twice")
    first, second = [f"f{i:03d}" for i in range(30)], [f"s{i:03d}" for i in range(30)]
    transport = RabbitTransport(rabbitmq_url)
    assert isinstance(transport, ObservableTransport)
    commits = _Commits()
    transport.add_observer(commits, lag_interval_s=0.05)
    handled: list[str] = []
    seen: list[tuple[FetchState, dict]] = []
    consumer = KafkaConsumer(
        group_id=group_id,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        transport=transport,
        stop_when_idle=True,
        commit_interval_s=0.05,
        max_workers=1,
    )

    @consumer.handler(topic)
    async def handle(message) -> None:
        await asyncio.sleep(0.01)  # the lag is measured while records wait
        handled.append(message.header.message_id)
        seen.append((transport.fetch_state(), transport.lag()))

    amqp(rabbitmq_url, _publish, topic, _orders(first))
    asyncio.run(asyncio.wait_for(consumer.start(), 60))
    assert handled == first
    amqp(rabbitmq_url, _publish, topic, _orders(second))
    asyncio.run(asyncio.wait_for(consumer.start(), 60))  # the same transport again: it used to hang here
    assert handled == first + second
    assert amqp(rabbitmq_url, _count, topic) == 0
    assert all(state.alive and state.last_poll is not None for state, _ in seen)
    assert not transport.fetch_state().alive
    lags = [lag[(topic, 0)] for _, lag in seen if (topic, 0) in lag]
    assert lags and all(0 <= n <= len(first) for n in lags) and max(lags) > 0
    assert commits.seen and all(ok and seconds >= 0 for seconds, ok in commits.seen)


# -- epistle run --broker rabbitmq, killed or stopped ------------------------------------------------------
def _start(url: str, topic: str, record_file: Path, log: Path, *, until_idle: bool) -> subprocess.Popen:
    env = {
        **os.environ,
        "RABBITMQ_URL": url,
        "SCHEMA_REGISTRY_URL": "",
        "EPISTLE_COMMIT_INTERVAL_S": "0.2",
        "EPISTLE_MAX_IN_FLIGHT": str(PREFETCH),
        "RABBITMQ_PREFETCH_COUNT": str(PREFETCH),
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
        "--broker",
        "rabbitmq",
        "--topics",
        topic,
        "--log-level",
        "WARNING",
    ]
    if until_idle:
        command.append("--until-idle")
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _handled(record_file: Path) -> list[str]:
    return [line.split()[0] for line in record_file.read_text().splitlines()] if record_file.exists() else []


def _wait_for(record_file: Path, proc: subprocess.Popen, at_least: int, log: Path) -> None:
    deadline = time.monotonic() + 180  # a bound for "never"
    while len(_handled(record_file)) < at_least:
        if proc.poll() is not None:
            raise AssertionError(f"consumer exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"fewer than {at_least} handled:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _fill(url: str, topic: str, count: int) -> list[str]:
    ids = [f"m{i:05d}" for i in range(count)]
    amqp(url, _publish, topic, [(None, envelope_bytes("orders", 1, VALID_BODY, message_id=i), []) for i in ids])
    return ids


def _drain(url: str, topic: str, record_file: Path, log: Path) -> None:
    proc = _start(url, topic, record_file, log, until_idle=True)
    try:
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_of_epistle_run_mid_stream_loses_nothing_and_duplicates_at_most_the_unacked(
    rabbitmq_url, queue, tmp_path
):
    topic = queue("sigkill")
    ids = _fill(rabbitmq_url, topic, 5000)
    record_file, log = tmp_path / "handled.txt", tmp_path / "consumer.log"
    proc = _start(rabbitmq_url, topic, record_file, log, until_idle=False)
    try:
        _wait_for(record_file, proc, len(ids) // 3, log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first_run = len(_handled(record_file))
    _drain(rabbitmq_url, topic, record_file, log)
    handled = Counter(_handled(record_file))
    assert set(handled) == set(ids)  # nothing lost
    duplicates = sum(count - 1 for count in handled.values())
    assert duplicates <= PREFETCH, (duplicates, first_run)  # only deliveries not acknowledged come back
    assert amqp(rabbitmq_url, _count, topic) == 0


def test_sigterm_of_epistle_run_acknowledges_what_was_handled_and_nothing_else(rabbitmq_url, queue, tmp_path):
    topic = queue("sigterm")
    ids = _fill(rabbitmq_url, topic, 3000)
    record_file, log = tmp_path / "handled.txt", tmp_path / "consumer.log"
    proc = _start(rabbitmq_url, topic, record_file, log, until_idle=False)
    try:
        _wait_for(record_file, proc, len(ids) // 3, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first_run = len(_handled(record_file))
    # Graceful: every handled message was acknowledged, every other one went back to the queue
    assert amqp(rabbitmq_url, _count, topic) == len(ids) - first_run
    _drain(rabbitmq_url, topic, record_file, log)
    handled = Counter(_handled(record_file))
    assert set(handled) == set(ids) and max(handled.values()) == 1  # nothing lost, nothing twice


def test_start_up_problems_of_epistle_run_with_rabbitmq_name_the_setting_and_hide_the_password(rabbitmq_url):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens there once closed
    wrong_password = rabbitmq_url.replace("guest:guest@", "guest:s3cret@")
    for url, expected in (
        (f"amqp://guest:s3cret@127.0.0.1:{closed}/", "no RabbitMQ broker answered at"),
        (wrong_password, "refused the connection"),
    ):
        env = {**os.environ, "RABBITMQ_URL": url, "SCHEMA_REGISTRY_URL": "", "KAFKA_STARTUP_TIMEOUT_S": "2"}
        proc = subprocess.run(
            [sys.executable, "-m", "toolkit.cli", "run", "--app", "examples.shop.app:register", "--broker", "rabbitmq"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and last.startswith("error: ") and expected in last, proc.stderr[-2000:]
        assert "RABBITMQ_URL" in last and "s3cret" not in proc.stderr


def test_a_queue_deleted_without_a_cancel_notification_is_noticed_declared_again_and_consumed(
    rabbitmq_url, queue, group_id, monkeypatch, caplog
):
    # RabbitMQ sends basic.cancel on deletion only to clients that announce consumer_cancel_notify (and has
    # been seen to miss one): the consumer's connection announces it does not, so the deletion comes
    # without a word, as in that case. Before the existence check the consumer stayed attached to nothing.
    import aio_pika

    connect_robust = aio_pika.connect_robust

    async def without_cancel_notifications(url, *args, client_properties=None, **kwargs):
        properties = dict(client_properties or {})
        if "consumer (" in properties.get("connection_name", ""):
            properties["capabilities"] = {
                "authentication_failure_close": True,
                "basic.nack": True,
                "connection.blocked": True,
                "consumer_cancel_notify": False,
                "publisher_confirms": True,
            }
        return await connect_robust(url, *args, client_properties=properties, **kwargs)

    monkeypatch.setattr(aio_pika, "connect_robust", without_cancel_notifications)
    topic = queue("deleted")
    first, second = [f"d{i:03d}" for i in range(20)], [f"e{i:03d}" for i in range(20)]
    amqp(rabbitmq_url, _publish, topic, _orders(first))
    handled: Counter[str] = Counter()
    transport = RabbitTransport(rabbitmq_url, queue_check_interval_s=0.2)
    consumer = KafkaConsumer(
        group_id=group_id,
        registry=LocalFolderRegistry(ROOT / "schemas"),
        transport=transport,
        commit_interval_s=0.1,
    )

    @consumer.handler(topic)
    async def handle(message) -> None:
        handled[message.header.message_id] += 1

    async def exists() -> bool:
        async def declared(connection: Any) -> bool:
            from aiormq.exceptions import ChannelNotFoundEntity

            channel = await connection.channel()
            try:
                await channel.declare_queue(topic, passive=True)
            except ChannelNotFoundEntity:
                return False
            return True

        return await asyncio.to_thread(amqp, rabbitmq_url, declared)

    async def delete_mid_run() -> None:
        task = asyncio.create_task(consumer.start())
        try:

            async def first_handled_and_acknowledged() -> bool:
                return len(handled) == len(first) and await asyncio.to_thread(amqp, rabbitmq_url, _count, topic) == 0

            await _until(first_handled_and_acknowledged, task, "the first records were handled")
            state = transport._queues[(topic, 0)]
            generation = state.generation
            await asyncio.sleep(0.3)  # idle at the queue's end: nothing probes it but the check
            await asyncio.to_thread(amqp, rabbitmq_url, _delete, [topic])

            async def declared_again() -> bool:
                return state.generation > generation and await exists()

            await _until(declared_again, task, "the deleted queue was declared again and consumed", 30)
            await asyncio.to_thread(amqp, rabbitmq_url, _publish, topic, _orders(second))

            async def second_handled() -> bool:
                return len(handled) == len(first) + len(second)

            await _until(second_handled, task, "the records published after the deletion were handled", 30)
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 60)

    with caplog.at_level("WARNING", logger="toolkit.consumer"):
        asyncio.run(delete_mid_run())
    assert set(handled) == set(first) | set(second) and max(handled.values()) == 1
    assert any("no longer exists" in r.getMessage() and topic in r.getMessage() for r in caplog.records)
