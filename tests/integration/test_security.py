"""SASL_SSL and TLS on real services: a private broker with a SASL_SSL listener (SCRAM-SHA-512, ACLs by the
StandardAuthorizer) and a private Apicurio serving HTTPS only, both started once for the session by
scripts/services.py (EPISTLE_KAFKA_SECURITY=sasl_ssl, EPISTLE_REGISTRY_TLS=1) with the certificates and
passwords it makes in its own services folder.

The consumer, the producer, the dead-letter producer and ``epistle dlq`` work over SASL_SSL; a wrong password,
a missing READ ACL and a missing WRITE on the dead-letter topic fail at start-up with an error naming the
setting or the topic and operation, and nothing is committed; no password appears in any log line or error
message. The registry client works with the CA and the app user's credentials (the registry asks for basic
authentication); it fails, naming SCHEMA_REGISTRY_CA_BUNDLE, without the CA, and naming
SCHEMA_REGISTRY_USERNAME/PASSWORD without credentials or with a wrong password.

EPISTLE_SECURITY_TEST_PORT: the first of three consecutive ports to use (else free ones are picked).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import TopicCollection
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from generated_models.orders.v1 import Order as OrderV1
from toolkit.consumer import KafkaConsumer, RetryPolicy
from toolkit.consumer.testing import committed, envelope_bytes, produce, read_topic
from toolkit.errors import (
    BrokerAccessDenied,
    BrokerAuthenticationFailed,
    ConfigError,
    ConsumerStopped,
    RegistryUnavailable,
)
from toolkit.layout import SchemaFormat
from toolkit.producer import EnvelopeProducer
from toolkit.registry import ConfluentHttpRegistry, LocalFolderRegistry
from toolkit.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
SERVICES = [sys.executable, str(ROOT / "scripts" / "services.py")]
NOTHING_COMMITTED = -1001


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SecureServices:
    """The private services: where they are, the CA and client certificate, and the users' passwords."""

    env: dict[str, str]
    bootstrap: str
    registry_url: str
    security_dir: Path
    started: set[str]

    @property
    def ca(self) -> Path:
        return self.security_dir / "ca.pem"

    @property
    def client_cert(self) -> Path:
        return self.security_dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.security_dir / "client.key"

    @property
    def passwords(self) -> dict[str, str]:
        return json.loads((self.security_dir / "credentials.json").read_text())

    def up(self, name: str) -> None:
        if name in self.started:
            return
        proc = subprocess.run([*SERVICES, "up", name], env=self.env, capture_output=True, text=True, timeout=600)
        self.started.add(name)  # (stopped at the end even if the start failed half-way)
        if proc.returncode != 0:
            pytest.fail(f"services.py up {name} failed:\n{proc.stdout}{proc.stderr}", pytrace=False)
        for secret in self.passwords.values():  # the script prints where the secrets are, never them
            assert secret not in proc.stdout + proc.stderr

    def kafka(self, user: str, password: str | None = None) -> dict[str, str]:
        """librdkafka settings for ``user`` (its own password unless another is given)."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": self.passwords[user] if password is None else password,
            "ssl.ca.location": str(self.ca),
        }

    def settings(self, user: str, password: str | None = None, **overrides: object) -> Settings:
        """The toolkit's settings for ``user``, as KAFKA_* would give them."""
        given: dict[str, object] = {
            "kafka__bootstrap_servers": self.bootstrap,
            "kafka__security_protocol": "SASL_SSL",
            "kafka__sasl_mechanism": "SCRAM-SHA-512",
            "kafka__sasl_username": user,
            "kafka__sasl_password": self.passwords[user] if password is None else password,
            "kafka__ssl_ca_location": str(self.ca),
            "kafka__startup_timeout_s": 60,
        }
        return load_settings(env_file=None, **{**given, **overrides})


@pytest.fixture(scope="session")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServices]:
    base = os.environ.get("EPISTLE_SECURITY_TEST_PORT")
    kafka, controller, registry = (int(base) + i for i in range(3)) if base else (_free_port() for _ in range(3))
    state = tmp_path_factory.mktemp("secure-services")
    env = {
        **os.environ,
        "EPISTLE_SERVICES_DIR": str(state),
        "EPISTLE_KAFKA_PORT": str(kafka),
        "EPISTLE_KAFKA_CONTROLLER_PORT": str(controller),
        "EPISTLE_REGISTRY_PORT": str(registry),
        "EPISTLE_KAFKA_SECURITY": "sasl_ssl",
        "EPISTLE_REGISTRY_TLS": "1",
    }
    services = SecureServices(
        env,
        f"127.0.0.1:{kafka}",
        f"https://127.0.0.1:{registry}/apis/ccompat/v7",
        state / "security",
        set(),
    )
    try:
        yield services
    finally:
        for name in sorted(services.started):
            subprocess.run([*SERVICES, "down", name], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def secure_kafka(secure: SecureServices) -> SecureServices:
    secure.up("kafka")
    return secure


@pytest.fixture(scope="session")
def secure_registry(secure: SecureServices) -> SecureServices:
    secure.up("registry")
    return secure


@pytest.fixture
def admin(secure_kafka: SecureServices) -> AdminClient:
    """The super user's admin client (the conftest's `admin` is for the plaintext broker)."""
    return AdminClient(secure_kafka.kafka("admin"))


@pytest.fixture
def secure_topic(admin: AdminClient, unique_name):
    """Make topics as the super user (deleted after the test)."""
    made: list[str] = []

    def make(name: str) -> str:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result(timeout=30)
        made.append(name)
        return name

    yield make
    if made:
        for future in admin.delete_topics(made, operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - cleanup only
                pass


def _order(index: int = 0) -> dict:
    files = sorted((SCHEMAS / "orders" / "samples" / "1" / "valid").glob("*.json"))
    return json.loads(files[index].read_text())


def _grant_read(admin: AdminClient, user: str, topic: str) -> None:
    binding = AclBinding(
        ResourceType.TOPIC,
        topic,
        ResourcePatternType.LITERAL,
        f"User:{user}",
        "*",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )
    for future in admin.create_acls([binding], request_timeout=30).values():
        future.result()


def _assert_no_secret(secure: SecureServices, *texts: str) -> None:
    for text in texts:
        for name, secret in secure.passwords.items():
            assert secret not in text, f"the {name} password appears in the output"


def _consumer(settings: Settings, topic: str, handler, **kw) -> KafkaConsumer:
    kw.setdefault("stop_when_idle", True)
    consumer = KafkaConsumer.from_settings(
        settings,
        registry=LocalFolderRegistry(SCHEMAS),
        topics=[topic],
        commit_interval_s=0.2,
        retry=RetryPolicy(max_attempts=1, initial_s=0.01, max_s=0.01),
        **kw,
    )
    consumer.register_handler(topic, handler)
    return consumer


def _run(consumer: KafkaConsumer) -> None:
    asyncio.run(asyncio.wait_for(consumer.start(), 120))  # (a bound on a hang, not a timing assertion)


def test_consumer_producer_and_dead_letters_work_over_sasl_ssl(secure_kafka, secure_topic, unique_name, caplog):
    caplog.set_level(logging.DEBUG)
    secure = secure_kafka
    topic = secure_topic(unique_name("orders"))
    # with the client certificate (signed by the services' CA; the broker asks for one, not requires it)
    client = {
        "kafka__ssl_certificate_location": str(secure.client_cert),
        "kafka__ssl_key_location": str(secure.client_key),
    }
    app = secure.settings("app", **client)
    model = OrderV1.model_validate(_order())
    with EnvelopeProducer(settings=app, registry=LocalFolderRegistry(SCHEMAS)) as producer:
        delivery = producer.send(topic, model, key="k1").result(timeout=60)
        # a record that is no envelope: dead-lettered (the dead-letter producer creates <topic>.dlq as app)
        producer.send_record(producer.build(topic, model)).result(timeout=60)
    produce(secure.bootstrap, topic, [b"not an envelope"], config=secure.kafka("app"))
    seen = []
    group = unique_name("group")
    consumer = _consumer(secure.settings("app", kafka__group_id=group, **client), topic, seen.append)
    _run(consumer)
    assert [type(m.body) for m in seen] == [OrderV1, OrderV1] and seen[0].body == model
    assert seen[0].message_id == delivery.message_id
    assert consumer.stats[topic].dead_lettered_total == 1
    assert committed(secure.bootstrap, group, topic, config=secure.kafka("app")) == {0: 3}
    (letter,) = read_topic(secure.bootstrap, f"{topic}.dlq", expected=1, config=secure.kafka("app"))
    assert letter.value is not None
    # epistle dlq over SASL_SSL, the settings from the environment like the rest
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": secure.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "app",
        "KAFKA_SASL_PASSWORD": secure.passwords["app"],
        "KAFKA_SSL_CA_LOCATION": str(secure.ca),
        "KAFKA_STARTUP_TIMEOUT_S": "60",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "dlq", "stats", f"{topic}.dlq", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["by_stage"] == {"decode": 1}
    _assert_no_secret(secure, proc.stdout, proc.stderr, caplog.text)


def test_a_wrong_password_fails_at_start_up_naming_the_setting(secure_kafka, secure_topic, unique_name, caplog):
    caplog.set_level(logging.DEBUG)
    secure = secure_kafka
    topic = secure_topic(unique_name("orders"))
    wrong = "wrong-" + secure.passwords["app"][::-1]
    consumer = _consumer(secure.settings("app", wrong), topic, lambda message: None)
    with pytest.raises(BrokerAuthenticationFailed) as raised:
        _run(consumer)
    assert raised.value.setting == "KAFKA_SASL_PASSWORD" and isinstance(raised.value, ConfigError)
    assert "KAFKA_SASL_PASSWORD" in str(raised.value) and "KAFKA_SASL_USERNAME" in str(raised.value)
    assert "'app'" in str(raised.value)
    for text in (str(raised.value), caplog.text):
        assert wrong not in text
    _assert_no_secret(secure, str(raised.value), caplog.text)


def test_a_wrong_password_stops_epistle_run_naming_the_setting(secure_kafka, secure_topic, unique_name):
    """The same through the command line: stderr is searched for the password too."""
    secure = secure_kafka
    topic = secure_topic(unique_name("orders"))
    wrong = "wrong-" + secure.passwords["app"][::-1]
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": secure.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "app",
        "KAFKA_SASL_PASSWORD": wrong,
        "KAFKA_SSL_CA_LOCATION": str(secure.ca),
        "KAFKA_STARTUP_TIMEOUT_S": "60",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "dlq", "stats", f"{topic}.dlq"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0
    assert "KAFKA_SASL_PASSWORD" in proc.stderr
    assert wrong not in proc.stdout + proc.stderr
    _assert_no_secret(secure, proc.stdout, proc.stderr)


def test_without_the_ca_the_tls_handshake_fails_naming_the_setting(secure_kafka, secure_topic, unique_name):
    secure = secure_kafka
    topic = secure_topic(unique_name("orders"))
    settings = secure.settings("app")
    settings.kafka = settings.kafka.model_copy(update={"ssl_ca_location": None})
    with pytest.raises(BrokerAuthenticationFailed) as raised:
        _run(_consumer(settings, topic, lambda message: None))
    assert raised.value.setting == "KAFKA_SSL_CA_LOCATION" and "KAFKA_SSL_CA_LOCATION" in str(raised.value)
    _assert_no_secret(secure, str(raised.value))


def _produce_one(secure: SecureServices, topic: str) -> None:
    produce(secure.bootstrap, topic, [envelope_bytes("orders", 1, _order())], config=secure.kafka("admin"))


def test_a_principal_without_read_on_the_topic_gets_a_clear_error_and_nothing_is_committed(
    secure_kafka, secure_topic, unique_name, caplog
):
    caplog.set_level(logging.DEBUG)
    secure = secure_kafka
    topic = secure_topic(unique_name("orders"))
    _produce_one(secure, topic)
    group = unique_name("group")
    handled = []
    consumer = _consumer(secure.settings("restricted", kafka__group_id=group), topic, handled.append)
    with pytest.raises(BrokerAccessDenied) as raised:
        _run(consumer)
    # (nor anything on the dead-letter topic: both are named)
    assert raised.value.missing == [(topic, "READ"), (f"{topic}.dlq", "WRITE")]
    assert raised.value.principal == "User:restricted"
    assert f"READ on topic {topic}" in str(raised.value) and "--operation Read" in str(raised.value)
    assert handled == []
    assert committed(secure.bootstrap, group, topic, config=secure.kafka("admin")) == {0: NOTHING_COMMITTED}
    _assert_no_secret(secure, str(raised.value), caplog.text)


def test_a_principal_without_write_on_the_dead_letter_topic_gets_a_clear_error_and_nothing_is_committed(
    secure_kafka, admin, secure_topic, unique_name, caplog
):
    caplog.set_level(logging.DEBUG)
    secure = secure_kafka
    topic = secure_topic(unique_name("orders"))
    secure_topic(f"{topic}.dlq")
    _grant_read(admin, "restricted", topic)
    _produce_one(secure, topic)
    group = unique_name("group")
    handled = []
    consumer = _consumer(secure.settings("restricted", kafka__group_id=group), topic, handled.append)
    with pytest.raises(BrokerAccessDenied) as raised:
        _run(consumer)
    assert raised.value.missing == [(f"{topic}.dlq", "WRITE")]
    assert f"WRITE on dead-letter topic {topic}.dlq" in str(raised.value)
    assert handled == []
    assert committed(secure.bootstrap, group, topic, config=secure.kafka("admin")) == {0: NOTHING_COMMITTED}
    # with READ the topic itself is described; the check asked the broker, it did not guess
    described = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=30)
    assert described.name == topic
    _assert_no_secret(secure, str(raised.value), caplog.text)


def test_a_group_the_principal_may_not_read_stops_the_consumer_naming_the_grant(
    secure_kafka, admin, secure_topic, unique_name
):
    """The group's ACL is not among a topic's authorized operations: librdkafka reports the refusal while
    consuming, and the consumer stops on it instead of retrying forever."""
    secure = secure_kafka
    topic = secure_topic(unique_name("orders"))
    _grant_read(admin, "restricted", topic)
    group = unique_name("group")
    deny = AclBinding(
        ResourceType.GROUP,
        group,
        ResourcePatternType.LITERAL,
        "User:restricted",
        "*",
        AclOperation.READ,
        AclPermissionType.DENY,
    )
    for future in admin.create_acls([deny], request_timeout=30).values():
        future.result()
    _produce_one(secure, topic)
    handled = []
    # ErrorPolicy.STOP: no dead letters, so no WRITE on a dead-letter topic is needed
    settings = secure.settings("restricted", kafka__group_id=group)
    consumer = _consumer(settings, topic, handled.append, error_policy="STOP", stop_when_idle=False)
    with pytest.raises(ConsumerStopped) as raised:
        _run(consumer)
    assert f"READ on group '{group}'" in str(raised.value) and "User:restricted" in str(raised.value)
    assert handled == []
    assert committed(secure.bootstrap, group, topic, config=secure.kafka("admin")) == {0: NOTHING_COMMITTED}
    _assert_no_secret(secure, str(raised.value))


# ------------------------------------------------------------------------------------------------ registry


def test_the_registry_client_with_the_ca_talks_to_apicurio_over_tls(secure_registry, unique_name):
    secure = secure_registry
    settings = load_settings(
        env_file=None,
        registry__url=secure.registry_url,
        registry__ca_bundle=str(secure.ca),
        registry__username="app",
        registry__password=secure.passwords["app"],
    ).registry
    subject = unique_name("orders")
    text = (SCHEMAS / "orders" / "1.json").read_text()
    with ConfluentHttpRegistry.from_settings(settings) as registry:
        assert registry.register(subject, text, SchemaFormat.JSON).version == 1
        assert registry.get(subject, 1).version == 1
        assert subject in registry.subjects()


def test_the_registry_client_without_the_ca_fails_naming_the_setting(secure_registry):
    secure = secure_registry
    registry = ConfluentHttpRegistry(secure.registry_url, max_attempts=3, backoff_initial_s=0.01)
    with registry, pytest.raises(RegistryUnavailable) as raised:
        registry.subjects()
    assert "SCHEMA_REGISTRY_CA_BUNDLE" in str(raised.value) and "certificate" in str(raised.value)
    assert raised.value.attempts == 1  # a certificate the client does not trust is not retried


@pytest.mark.parametrize("credentials", ["none", "wrong password"])
def test_the_registry_refuses_missing_or_wrong_credentials_and_the_error_names_the_settings(
    secure_registry, credentials, caplog
):
    """The HTTPS registry asks for basic authentication (scripts/services.py): without credentials, or with a
    wrong password, the client's error names the settings to fix and never shows the password given."""
    secure = secure_registry
    wrong = "not-the-password-" + secure.passwords["app"][:4]
    given = {} if credentials == "none" else {"registry__username": "app", "registry__password": wrong}
    settings = load_settings(
        env_file=None, registry__url=secure.registry_url, registry__ca_bundle=str(secure.ca), **given
    ).registry
    with ConfluentHttpRegistry.from_settings(settings) as registry, pytest.raises(RegistryUnavailable) as raised:
        registry.subjects()
    message = str(raised.value)
    assert "HTTP 401" in message and "SCHEMA_REGISTRY_USERNAME/PASSWORD" in message
    assert wrong not in message and wrong not in caplog.text
    _assert_no_secret(secure, message, caplog.text)
