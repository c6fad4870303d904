"""The consumer's start-up broker check, its options and fatal client errors, without a broker."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from toolkit.consumer import KafkaConsumer, kafka_io
from toolkit.errors import BrokerUnavailable, BrokerUnreachable, ConfigError
from toolkit.registry import LocalFolderRegistry

ROOT = Path(__file__).resolve().parents[2]


def _consumer(bootstrap: str = "127.0.0.1:1", **kw) -> KafkaConsumer:
    consumer = KafkaConsumer(bootstrap, "group", registry=LocalFolderRegistry(ROOT / "schemas"), **kw)
    consumer.register_handler("orders", lambda message: True)
    return consumer


@pytest.fixture
def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Error:
    """A message error as confluent-kafka builds it for a fatal consumer error: code _FATAL, fatal() False."""

    def __init__(self, code: int, text: str, fatal: bool = False) -> None:
        self._code, self._text, self._fatal = code, text, fatal

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return self._text

    def fatal(self) -> bool:
        return self._fatal


class _Message:
    def __init__(self, err: _Error | None = None, offset: int = 0) -> None:
        self._err, self._offset = err, offset

    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def error(self) -> _Error | None:
        return self._err


class _Events:
    def __init__(self) -> None:
        self.fatal: list[str] = []
        self.batches: list[tuple[list, list]] = []

    def on_fatal(self, reason: str) -> None:
        self.fatal.append(reason)

    def on_batch(self, records: list, ends: list) -> None:
        self.batches.append((records, ends))

    def in_flight(self) -> int:
        return 0


def _sorted(batch: list[_Message], config: dict | None = None) -> tuple[list, list, list[str]]:
    """What the poll thread makes of a fetched batch: (records, partition ends, fatal reasons)."""

    async def sort() -> tuple[list, list, list[str]]:
        events = _Events()
        poller = kafka_io.PollThread(
            config or {}, ["orders"], asyncio.get_running_loop(), events, max_poll_records=10, max_in_flight=10
        )
        records, ends = poller._sort(batch)
        await asyncio.sleep(0)  # the fatal report is handed to the loop
        return records, ends, events.fatal

    return asyncio.run(sort())


def test_a_fenced_consumer_stops_with_the_hint() -> None:
    # the error librdkafka 2.x gives the older of two consumers sharing an id (code -150, fatal() False)
    err = _Error(
        KafkaError._FATAL,
        "Fatal error: Broker: Static consumer fenced by other consumer with same "
        "group.instance.id: Fatal consumer error: Broker: Static consumer fenced by "
        "other consumer with same group.instance.id",
    )
    records, _, fatal = _sorted([_Message(err)], {"group.instance.id": "orders-1"})
    assert records == [] and len(fatal) == 1
    assert "'orders-1'" in fatal[0] and "KAFKA_GROUP_INSTANCE_ID" in fatal[0]


def test_another_fatal_error_stops_without_the_hint() -> None:
    _, _, fatal = _sorted([_Message(_Error(KafkaError._FATAL, "Fatal error: something else"))])
    assert len(fatal) == 1 and "KAFKA_GROUP_INSTANCE_ID" not in fatal[0]


def test_a_missing_acl_seen_while_consuming_stops_naming_the_grant() -> None:
    config = {"group.id": "orders-service", "sasl.username": "svc", "sasl.password": "sasl-very-secret"}
    group = _Error(KafkaError.GROUP_AUTHORIZATION_FAILED, "Broker: Group authorization failed")
    topic = _Error(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Broker: Topic authorization failed")
    _, _, fatal = _sorted([_Message(group), _Message(topic)], config)
    assert len(fatal) == 2 and all("User:svc" in reason and "very-secret" not in reason for reason in fatal)
    assert "READ on group 'orders-service'" in fatal[0] and "READ on topic 'orders'" in fatal[1]


def test_a_transient_fetch_error_does_not_stop() -> None:
    ok = _Message(offset=3)
    records, ends, fatal = _sorted([_Message(_Error(KafkaError._TRANSPORT, "Broker: transport failure")), ok])
    assert records == [ok] and ends == [] and fatal == []


def test_a_partition_end_counts_only_after_the_last_record_of_its_partition() -> None:
    eof = _Error(KafkaError._PARTITION_EOF, "end")
    first, second = _Message(offset=1), _Message(offset=2)
    assert _sorted([first, _Message(eof), second])[:2] == ([first, second], [])
    # (with the offset after the end: librdkafka's position, past transaction markers)
    assert _sorted([first, second, _Message(eof, offset=5)])[:2] == ([first, second], [("orders", 0, 5)])


@pytest.mark.parametrize("value", [3601, 0, float("inf"), "30", True])
def test_the_startup_timeout_option_has_the_settings_bounds(value) -> None:
    with pytest.raises(ConfigError) as err:
        KafkaConsumer("127.0.0.1:1", "group", startup_timeout_s=value)
    assert err.value.setting == "startup_timeout_s" and "KAFKA_STARTUP_TIMEOUT_S" in str(err.value)
    assert KafkaConsumer("127.0.0.1:1", "group", startup_timeout_s=3600).options.startup_timeout_s == 3600


def test_the_group_instance_id_option_takes_the_host_name() -> None:
    consumer = KafkaConsumer("127.0.0.1:1", "group", group_instance_id=" orders-{hostname} ")
    assert consumer.options.group_instance_id == f"orders-{socket.gethostname()}"


@pytest.mark.parametrize("value", ["orders-{pid}", "orders 1", "orders/1", "x" * 250, "orders-é"])
def test_an_unusable_group_instance_id_option_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        KafkaConsumer("127.0.0.1:1", "group", group_instance_id=value)
    assert err.value.setting == "group_instance_id" and "249" in str(err.value)


def test_the_broker_check_uses_kafka_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict] = []

    def check(config: dict, timeout_s: float) -> None:
        seen.append(config)
        raise BrokerUnavailable("no")

    monkeypatch.setattr(kafka_io, "connect_admin", check)
    consumer = _consumer(kafka_config={"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"})
    with pytest.raises(BrokerUnreachable):
        asyncio.run(consumer.start())
    assert seen[0]["security.protocol"] == "SASL_SSL" and seen[0]["sasl.mechanism"] == "PLAIN"
    assert seen[0]["bootstrap.servers"] == "127.0.0.1:1"


def test_a_start_cancelled_during_the_broker_check_can_be_started_again(closed_port: int) -> None:
    consumer = _consumer(f"127.0.0.1:{closed_port}", startup_timeout_s=1.0)
    left_installed: list[bool] = []

    async def cancel_during_check() -> None:
        task = asyncio.create_task(consumer.start(handle_signals=True))
        await asyncio.sleep(0.3)  # start() is waiting for the closed port
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        loop = asyncio.get_running_loop()
        left_installed.append(loop.remove_signal_handler(signal.SIGTERM))

    asyncio.run(cancel_during_check())
    assert left_installed == [False]
    with pytest.raises(BrokerUnreachable):  # not "already running"
        asyncio.run(consumer.start())
    assert not [t.name for t in threading.enumerate() if t.name.startswith("epistle-")]


class _Metadata:
    def __init__(self, *topics: str) -> None:
        self.topics = {topic: object() for topic in topics}


def test_a_missing_topic_with_stop_when_idle_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[dict] = []
    monkeypatch.setattr(
        kafka_io, "connect_admin", lambda config, timeout_s: checks.append(config) or (None, _Metadata("other"))
    )
    monkeypatch.setattr(kafka_io, "check_access", lambda *args: None)
    consumer = _consumer(stop_when_idle=True)
    for _ in range(2):  # the second attempt fails the same way, not with "already running"
        with pytest.raises(ConfigError, match="orders do not exist.*--until-idle") as err:
            asyncio.run(consumer.start())
        assert err.value.setting == "topics"
    assert len(checks) == 2  # one metadata request per start: the same answer checks broker and topics


def test_security_settings_given_in_kafka_config_reach_every_client_not_the_consumer_only() -> None:
    consumer = KafkaConsumer(
        "127.0.0.1:1",
        "group",
        kafka_config={
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "u",
            "sasl.password": "p",
            "ssl.ca.location": "/ca.pem",
            "session.timeout.ms": 6000,
        },
    )
    shared = consumer.options.client_config  # the dead-letter producer's and the admin client's connection
    assert {k: shared[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "ssl.ca.location")} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u",
        "ssl.ca.location": "/ca.pem",
    }
    assert "session.timeout.ms" not in shared
    assert consumer.options.consumer_config()["session.timeout.ms"] == 6000


class _Refusing:
    """An admin client whose login the broker refuses: requests time out, the error callback tells why."""

    def __init__(self, config: dict) -> None:
        self.error_cb = config["error_cb"]
        self.polls = 0

    def list_topics(self, timeout: float) -> None:
        from confluent_kafka import KafkaException

        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        self.error_cb(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: invalid credentials"))
        return 1


def test_a_refused_login_ends_the_wait_at_once_naming_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from toolkit.errors import BrokerAuthenticationFailed

    made: list[_Refusing] = []
    monkeypatch.setattr(kafka_io, "AdminClient", lambda config: made.append(_Refusing(config)) or made[-1])
    config = {"bootstrap.servers": "b:9093", "sasl.username": "app", "sasl.password": "sasl-very-secret"}
    with pytest.raises(BrokerAuthenticationFailed) as err:
        kafka_io.wait_for_broker({**config, "sasl.mechanism": "SCRAM-SHA-512"}, timeout_s=3600)
    assert made[0].polls == 1  # the first failed request; not the hour
    assert err.value.setting == "KAFKA_SASL_PASSWORD" and "KAFKA_SASL_USERNAME" in str(err.value)
    assert "'app'" in str(err.value) and "very-secret" not in str(err.value)


def test_a_failed_tls_handshake_names_the_ca_setting() -> None:
    err = kafka_io.access_refused(
        KafkaError(KafkaError._SSL, "SSL handshake failed: certificate verify failed"),
        {"bootstrap.servers": "b:9093", "ssl.certificate.location": "/c.pem"},
    )
    assert err.setting == "KAFKA_SSL_CA_LOCATION" and "KAFKA_SSL_CERTIFICATE_LOCATION" in str(err)


class _Described:
    def __init__(self, operations) -> None:
        self.authorized_operations = operations


class _Future:
    def __init__(self, value) -> None:
        self.value = value

    def result(self):
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


class _Authorizing:
    """describe_topics as a broker with an authorizer answers it: the operations allowed, or an error."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.asked: list = []

    def describe_topics(self, topics, request_timeout: float, include_authorized_operations: bool):
        assert include_authorized_operations
        self.asked = list(topics.topic_names)
        return {name: _Future(self.answers[name]) for name in self.asked}


def test_the_access_check_names_each_missing_operation() -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AclOperation as Op

    from toolkit.errors import BrokerAccessDenied

    denied = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    unknown = KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    admin = _Authorizing(
        {
            "a": _Described([Op.DESCRIBE]),
            "a.dlq": _Described([Op.READ, Op.DESCRIBE]),
            "b": _Described([Op.READ]),
            "b.dlq": denied,
            "c": _Described([Op.ALL]),
            "c.dlq": unknown,  # created later: not checked now
        }
    )
    with pytest.raises(BrokerAccessDenied) as err:
        kafka_io.check_access(admin, {"sasl.username": "svc"}, ["a", "b", "c"], ".dlq", 5.0)
    assert err.value.missing == [("a", "READ"), ("a.dlq", "WRITE"), ("b.dlq", "WRITE")]
    assert err.value.principal == "User:svc"
    assert "READ on topic a" in str(err.value) and "WRITE on dead-letter topic b.dlq" in str(err.value)
    # without dead letters (ErrorPolicy.STOP) the dead-letter topics are not asked about
    kafka_io.check_access(_Authorizing({"c": _Described(None)}), {}, ["c"], None, 5.0)


def test_a_batch_librdkafka_skipped_keeps_the_partition_end_from_moving_the_commit(caplog) -> None:
    """librdkafka moves past a batch it cannot read (CRC mismatch): the partition's end after it carries no
    offset (the commit must not jump over the skipped records on its own), until a record of it comes."""

    async def scenario() -> list:
        events = _Events()
        poller = kafka_io.PollThread(
            {}, ["orders"], asyncio.get_running_loop(), events, max_poll_records=10, max_in_flight=10
        )
        eof = _Error(KafkaError._PARTITION_EOF, "end")
        bad = _Error(KafkaError._BAD_MSG, "Local: Bad message format (CRC mismatch)")
        seen = [poller._sort([_Message(offset=1), _Message(bad, offset=2), _Message(eof, offset=9)])[1]]
        seen.append(poller._sort([_Message(eof, offset=9)])[1])  # a later end: still no offset
        seen.append(poller._sort([_Message(offset=9), _Message(eof, offset=10)])[1])  # a record came: it has one
        compression = _Error(KafkaError._BAD_COMPRESSION, "Local: Invalid compressed data")
        seen.append(poller._sort([_Message(compression, offset=11), _Message(eof, offset=14)])[1])
        await asyncio.sleep(0)
        assert events.fatal == []
        return seen

    assert asyncio.run(scenario()) == [[("orders", 0)], [("orders", 0)], [("orders", 0, 10)], [("orders", 0)]]
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "skipped a record batch" in r.getMessage()]
    assert [r.getMessage().split(" (")[0] for r in errors] == [
        "orders[0]: librdkafka skipped a record batch it cannot read at offset 2",
        "orders[0]: librdkafka skipped a record batch it cannot read at offset 11",
    ]


def test_a_record_in_an_error_free_batch_clears_the_skip_mark() -> None:
    async def scenario() -> list:
        events = _Events()
        poller = kafka_io.PollThread(
            {}, ["orders"], asyncio.get_running_loop(), events, max_poll_records=10, max_in_flight=10
        )
        eof = _Error(KafkaError._PARTITION_EOF, "end")
        poller._sort([_Message(_Error(KafkaError._BAD_MSG, "CRC"), offset=2)])
        record = _Message(offset=7)
        assert poller._sort([record]) == ([record], [])  # the fast path (no error in the batch)
        return poller._sort([_Message(eof, offset=8)])[1]

    assert asyncio.run(scenario()) == [("orders", 0, 8)]


def test_a_callback_given_in_kafka_config_never_raises_into_consume(caplog) -> None:
    def error_cb(err) -> None:
        raise RuntimeError(f"alerting on {err}")

    logged = kafka_io._never_raising(error_cb, "error_cb")
    logged("_TRANSPORT")  # (what a broker outage sends every few seconds)
    assert any("the error_cb given in kafka_config failed" in r.getMessage() for r in caplog.records)


def test_a_failed_consume_stops_fetching_and_the_consumer() -> None:
    """confluent-kafka drops the records a failing consume() had collected: fetching on would commit past
    them, so the poll thread stops fetching and reports a fatal error."""
    from confluent_kafka import KafkaException

    class Failing:
        def consume(self, num_messages: int, timeout: float) -> list:
            raise KafkaException(_Error(KafkaError._FAIL, "a callback raised"))

        def close(self) -> None:
            pass

    async def scenario() -> tuple[list[str], bool]:
        events = _Events()
        loop = asyncio.get_running_loop()
        poller = kafka_io.PollThread({}, ["orders"], loop, events, max_poll_records=10, max_in_flight=10)
        poller.consumer = Failing()  # type: ignore[assignment]
        events.in_flight = lambda: 0  # type: ignore[attr-defined]
        thread = threading.Thread(target=poller._fetch_loop, daemon=True)
        thread.start()
        while not events.fatal:
            await asyncio.sleep(0.01)
        fetching = poller._fetching.is_set()
        await asyncio.wrap_future(poller.close())
        thread.join(5)
        return events.fatal, fetching

    fatal, fetching = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert not fetching and len(fatal) == 1 and "no record is skipped" in fatal[0]
