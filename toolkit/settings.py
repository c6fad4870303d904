"""Settings from the environment and `.env`, through pydantic-settings.

Built once at the edge (`load_settings()`) and passed down. Every invalid value stops start-up with a
:class:`~toolkit.errors.ConfigError` that names the environment variable and the fix. Credentials are
``SecretStr``: they never appear in reprs, logs or error messages.
"""

from __future__ import annotations

import os
import re
import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from toolkit import _args
from toolkit.envelope import LIMIT_DEPTH, MAX_DEPTH
from toolkit.errors import ConfigError
from toolkit.wire import KeyFormat, ValueFormat, parse_formats, parse_value_formats

ENV_FILE = ".env"


class OrderingMode(StrEnum):
    """How concurrent handlers are ordered: one at a time per partition (default), per key, or not at all."""

    PARTITION = "PARTITION"
    KEY = "KEY"
    UNORDERED = "UNORDERED"

    _missing_ = classmethod(_args.not_a_member)  # InvalidArgument (a ValueError) listing the members


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix,
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,  # a cross-field error would otherwise print every value, secrets included
    )


_INSTANCE_ID_CHARS = re.compile(r"[A-Za-z0-9._-]+")


def group_instance_id(value: str | None) -> str | None:
    """A static-membership id (KAFKA_GROUP_INSTANCE_ID, or the consumer's ``group_instance_id=``) as used:
    stripped, ``{hostname}`` replaced by the host name; None when empty.

    Raises:
        ValueError: not in Kafka's character set for the id (letters, digits, ``.``, ``_``, ``-``) or over
            249 characters once the host name is in.
    """
    if value is None or not value.strip():
        return None
    raw = value.strip()
    value = raw.replace("{hostname}", socket.gethostname())
    if not _INSTANCE_ID_CHARS.fullmatch(value) or len(value) > 249:
        raise ValueError(
            f"{raw!r}"[:80] + " (" + f"{value!r}"[:80] + "): use at most 249 letters, digits, '.', "
            "'_' or '-', with {hostname} for the host name, e.g. orders-{hostname} or orders-1; "
            "give each process of the group its own id"
        )
    return value


class KafkaSettings(BaseSettings):
    """``KAFKA_*``: where the cluster is and how the consumer group reads it."""

    model_config = _config("KAFKA_")

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "epistle-consumer"
    auto_offset_reset: Literal["earliest", "latest", "error"] = "earliest"
    enable_auto_commit: bool = False
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # TLS (SSL, SASL_SSL): the CA that signed the brokers' certificates (else the system's), and a client
    # certificate and its key (PEM) for brokers that ask for one; the key's password if it is encrypted.
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    # How long start() waits for a broker to answer before it fails (BrokerUnreachable).
    startup_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Static group membership: a restarted process takes its predecessor's place and partitions at once.
    # One id per process of the group; "{hostname}" is replaced by the host name (a pod's stable name).
    group_instance_id: str | None = None

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper_name(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("ssl_ca_location", "ssl_certificate_location", "ssl_key_location")
    @classmethod
    def _pem_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None or value.is_file():
            return value
        if info.field_name == "ssl_ca_location" and (value.is_dir() or str(value) == "probe"):
            return value  # librdkafka also takes a folder of CA certificates, or "probe" (the system's)
        raise ValueError(f"file {value} does not exist; give the path of a PEM file")

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaSettings:
        """Settings librdkafka would ignore or fail on later (with a less clear message) are refused here;
        each message starts with the variable to set."""
        protocol = self.security_protocol
        sasl, tls = protocol.startswith("SASL_"), protocol.endswith("SSL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(
                f"KAFKA_SASL_MECHANISM: KAFKA_SECURITY_PROTOCOL={protocol} needs a mechanism; set it to "
                "SCRAM-SHA-512, SCRAM-SHA-256, PLAIN, OAUTHBEARER or GSSAPI (as the cluster's listener expects)"
            )
        if sasl and self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            for name, value in (("USERNAME", self.sasl_username), ("PASSWORD", self.sasl_password)):
                if not value or (isinstance(value, SecretStr) and not value.get_secret_value()):
                    raise ValueError(
                        f"KAFKA_SASL_{name}: KAFKA_SECURITY_PROTOCOL={protocol} with KAFKA_SASL_MECHANISM="
                        f"{self.sasl_mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD; set both "
                        "(the password in the environment or .env, never on a command line)"
                    )
        if not sasl:
            given = [
                f"KAFKA_SASL_{name.upper()}"
                for name in ("mechanism", "username", "password")
                if getattr(self, f"sasl_{name}") is not None
            ]
            if given:
                raise ValueError(
                    f"{given[0]}: KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL, so "
                    f"{', '.join(given)} would be ignored; set KAFKA_SECURITY_PROTOCOL=SASL_SSL "
                    "(or SASL_PLAINTEXT), or unset them"
                )
        if not tls:
            given = [
                f"KAFKA_{name.upper()}"
                for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location", "ssl_key_password")
                if getattr(self, name) is not None
            ]
            if given:
                raise ValueError(
                    f"{given[0]}: KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS, so {', '.join(given)} "
                    "would be ignored; set KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SSL), or unset them"
                )
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            missing = "KAFKA_SSL_KEY_LOCATION" if self.ssl_key_location is None else "KAFKA_SSL_CERTIFICATE_LOCATION"
            raise ValueError(
                f"{missing}: a client certificate needs its key; set both KAFKA_SSL_CERTIFICATE_LOCATION "
                "and KAFKA_SSL_KEY_LOCATION (PEM files), or neither"
            )
        if self.ssl_key_password is not None and self.ssl_key_location is None:
            raise ValueError(
                "KAFKA_SSL_KEY_PASSWORD: set only with KAFKA_SSL_KEY_LOCATION (an encrypted key); unset it"
            )
        return self

    @field_validator("group_instance_id")
    @classmethod
    def _instance_id(cls, value: str | None) -> str | None:
        return group_instance_id(value)

    @field_validator("enable_auto_commit")
    @classmethod
    def _auto_commit_off(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "must be false: the toolkit stores offsets only after each message is done "
                "(at-least-once); auto-commit would commit unprocessed messages"
            )
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        for server in (part.strip() for part in value.split(",")):
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port; use e.g. 127.0.0.1:9092 (comma-separated)")
        return value

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by the consumer, producers and admin clients."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = str(self.ssl_ca_location)
        if self.ssl_certificate_location:
            config["ssl.certificate.location"] = str(self.ssl_certificate_location)
        if self.ssl_key_location:
            config["ssl.key.location"] = str(self.ssl_key_location)
        if self.ssl_key_password:
            config["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return config


class RabbitSettings(BaseSettings):
    """``RABBITMQ_*``: the RabbitMQ broker, for ``EPISTLE_BROKER=rabbitmq`` (``epistle run --broker rabbitmq``)
    or :meth:`toolkit.consumer.amqp.RabbitTransport.from_settings`."""

    model_config = _config("RABBITMQ_")

    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")  # the password is in it
    # Unacknowledged deliveries per queue (basic.qos); 0 = the consumer's max_in_flight (at most 65535)
    prefetch_count: Annotated[int, Field(ge=0, le=65535)] = 0
    declare_queues: bool = True  # false: the queues must exist (declared by whoever owns them)
    queue_type: Literal["classic", "quorum"] = "classic"
    single_active_consumer: bool = False
    # topic=count pairs: "orders=4" consumes the queues orders.0 .. orders.3 as the partitions of "orders"
    partitions: Annotated[dict[str, int], NoDecode] = {}
    reconnect_interval_s: Annotated[float, Field(gt=0, le=600)] = 2.0
    # How often each consumed queue is checked to still exist (a queue deleted without a cancel notification)
    queue_check_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().strip()
        if not text.startswith(("amqp://", "amqps://")) or len(text.split("://", 1)[1]) == 0:
            raise ValueError("not an AMQP URL; use e.g. amqp://guest:guest@127.0.0.1:5672/ (amqps:// for TLS)")
        return SecretStr(text)

    @field_validator("partitions", mode="before")
    @classmethod
    def _partitions(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        counts: dict[str, int] = {}
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            topic, sep, count = item.partition("=")
            if not sep or not topic.strip() or not count.strip().isdigit() or not 1 <= int(count) <= 1000:
                raise ValueError(
                    f"{item!r}: use topic=count pairs, comma-separated, e.g. orders=4,payments=2 (count from 1 to 1000)"
                )
            counts[topic.strip()] = int(count)
        return counts


class RegistrySettings(BaseSettings):
    """``SCHEMA_REGISTRY_*``: an empty URL means the local ``schemas/`` folder is the registry."""

    model_config = _config("SCHEMA_REGISTRY_")

    url: str = ""
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 5.0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    backoff_initial_s: Annotated[float, Field(ge=0)] = 0.2
    backoff_max_s: Annotated[float, Field(gt=0)] = 5.0
    latest_ttl_s: Annotated[float, Field(ge=0)] = 30.0
    not_found_ttl_s: Annotated[float, Field(ge=0)] = 5.0
    subject_strategy: Literal["schema_name", "topic_value"] = "schema_name"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if value and not (value.startswith(("http://", "https://")) and len(value.split("://", 1)[1]) > 0):
            raise ValueError(
                f"{value!r} is not an http(s) URL; use e.g. http://127.0.0.1:8081/apis/ccompat/v7 "
                "or leave it empty to use the local schemas/ folder"
            )
        return value.rstrip("/")

    @field_validator("ca_bundle", "client_cert", "client_key")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist; give the path of a PEM file")
        return value

    @property
    def is_local(self) -> bool:
        return not self.url


class ConsumerSettings(BaseSettings):
    """``EPISTLE_*``: the runtime's own knobs (the original API's names: max_workers, max_poll_records)."""

    model_config = _config("EPISTLE_")

    schemas_dir: Path = Path("schemas")
    # Which broker `epistle run` consumes (--broker): kafka (KAFKA_*) or rabbitmq (RABBITMQ_*)
    broker: Literal["kafka", "rabbitmq"] = "kafka"
    # How a Kafka consumer consumes (--mode): "group" (a consumer group: partitions split between the
    # consumers, offsets committed, order kept) or "share" (a share group, KIP-932: every consumer reads every
    # partition, each record acknowledged on its own, no order; Kafka 4.2+). README "Two consumption modes".
    consumer_mode: Literal["group", "share"] = "group"
    # not empty: the dead letters of `orders` would go back into `orders`
    dlq_suffix: Annotated[str, Field(min_length=1)] = ".dlq"
    dlq_max_message_bytes: Annotated[int, Field(ge=1000, le=1_000_000_000)] = 10 * 1024 * 1024
    max_workers: Annotated[int, Field(ge=1, le=1024)] = 1
    # `epistle run --workers`: consumer processes of the group under one supervisor (each with its own
    # max_workers handlers); 1 = the consumer runs in the `epistle run` process itself.
    worker_processes: Annotated[int, Field(ge=1, le=64)] = 1
    # How long a worker process may take to finish, commit and exit after SIGTERM before it is killed.
    worker_stop_grace_s: Annotated[float, Field(gt=0, le=3600)] = 45.0
    max_poll_records: Annotated[int, Field(ge=1, le=100_000)] = 500
    max_in_flight: Annotated[int, Field(ge=1)] = 10_000
    ordering: OrderingMode = OrderingMode.PARTITION
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    retry_backoff_initial_s: Annotated[float, Field(ge=0)] = 0.5
    retry_backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    commit_interval_s: Annotated[float, Field(gt=0)] = 1.0
    error_policy: Literal["DEAD_LETTER", "STOP"] = "DEAD_LETTER"
    # JSON nesting levels of the whole envelope (envelope object = 1, body object = 2, ...); an Avro
    # recursive record nests two per node. Deeper records are dead-lettered at stage "decode".
    max_nesting_depth: Annotated[int, Field(ge=8, le=LIMIT_DEPTH)] = MAX_DEPTH
    # Seconds a record whose schema the registry does not know waits (its partition holding, the
    # registry asked again with backoff) before it is dead-lettered at stage "schema"; 0 = at once.
    unknown_schema_grace_s: Annotated[float, Field(allow_inf_nan=False)] = 30.0
    # Seconds one handler attempt may run; past it the attempt fails with HandlerTimedOut (retried, then
    # dead-lettered at stage retries_exhausted). Unset: no limit.
    handler_timeout_s: Annotated[float | None, Field(gt=0, le=86_400, allow_inf_nan=False, description="no limit")] = (
        None
    )
    # Seconds a Kafka consumer may have no partition before the broker is asked whether it is stuck out of its
    # group (then it is recreated: docs/group-membership.md); unset: three session timeouts, at least 30 s;
    # 0: never asked.
    rejoin_timeout_s: Annotated[
        float | None, Field(ge=0, le=86_400, allow_inf_nan=False, description="three session timeouts, at least 30 s")
    ] = None
    # How each topic's record values are read: topic=format pairs (envelope, confluent, auto; * for every
    # other topic), e.g. "payments=confluent,orders=auto". Unlisted topics are envelopes.
    value_formats: Annotated[dict[str, ValueFormat], NoDecode] = {}

    # How each topic's record keys are read: topic=format pairs (raw, confluent, auto; * for every other
    # topic), e.g. "payments=confluent". Unlisted topics keep their keys as raw bytes.
    key_formats: Annotated[dict[str, KeyFormat], NoDecode] = {}

    @field_validator("value_formats", mode="before")
    @classmethod
    def _value_formats(cls, value: Any) -> Any:
        return parse_value_formats(value)

    @field_validator("key_formats", mode="before")
    @classmethod
    def _key_formats(cls, value: Any) -> Any:
        return parse_formats(value, KeyFormat)

    # `epistle run`'s log lines: "text" (one line, the record context in brackets) or "json" (one object a line).
    log_format: Literal["text", "json"] = "text"
    # `epistle run` traces every record with OpenTelemetry (the `tracing` extra); exporters from OTEL_*.
    tracing: bool = False

    # epistle run serves /metrics, /healthz and /readyz on this port (docs/operations.md); unset: no server.
    metrics_port: Annotated[int | None, Field(ge=1, le=65535)] = None
    metrics_address: str = "0.0.0.0"
    # /healthz fails when the event loop or the poll thread has not gone round for this long.
    health_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0

    @field_validator("worker_processes", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
            raise ValueError("use a whole number of processes from 1 to 64, e.g. 2 (1: no worker processes)")
        return value

    @field_validator("unknown_schema_grace_s")
    @classmethod
    def _grace(cls, value: float) -> float:
        if value < 0:
            raise ValueError(
                "must be seconds >= 0, e.g. 30 (wait up to 30 s for the registry to know a "
                "schema) or 0 (dead-letter an unknown schema at once)"
            )
        return value

    @field_validator("ordering", "error_policy", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", "consumer_mode", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class ProducerSettings(BaseSettings):
    """``EPISTLE_PRODUCER_*``: the producer's own knobs (:class:`toolkit.producer.EnvelopeProducer`)."""

    model_config = _config("EPISTLE_PRODUCER_")

    name: Annotated[str, Field(min_length=1)] = "epistle-producer"
    # How each topic's values are written: topic=format pairs (envelope, confluent; * for every other topic),
    # as EPISTLE_VALUE_FORMATS reads them. Unlisted topics get envelopes.
    value_formats: Annotated[dict[str, ValueFormat], NoDecode] = {}
    # How model keys are written: topic=format pairs (raw, confluent; * for every other topic).
    key_formats: Annotated[dict[str, KeyFormat], NoDecode] = {}
    # Topics written in Confluent's wire format, comma-separated: the same as topic=confluent in value_formats.
    confluent_topics: Annotated[list[str], NoDecode] = []
    flush_timeout_s: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("value_formats", mode="before")
    @classmethod
    def _value_formats(cls, value: Any) -> Any:
        return parse_formats(value, ValueFormat, (ValueFormat.ENVELOPE, ValueFormat.CONFLUENT))

    @field_validator("key_formats", mode="before")
    @classmethod
    def _key_formats(cls, value: Any) -> Any:
        return parse_formats(value, KeyFormat, (KeyFormat.RAW, KeyFormat.CONFLUENT))

    @field_validator("confluent_topics", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [topic.strip() for topic in value.split(",") if topic.strip()]
        return value


class Settings:
    """All settings, grouped: ``kafka``, ``registry``, ``consumer``, ``rabbitmq``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        registry: RegistrySettings,
        consumer: ConsumerSettings,
        rabbitmq: RabbitSettings | None = None,
    ) -> None:
        self.kafka = kafka
        self.registry = registry
        self.consumer = consumer
        self.rabbitmq = rabbitmq if rabbitmq is not None else RabbitSettings.model_construct()

    def __repr__(self) -> str:
        return (
            f"Settings(kafka={self.kafka!r}, registry={self.registry!r}, consumer={self.consumer!r}, "
            f"rabbitmq={self.rabbitmq!r})"
        )


_PREFIXES = {
    KafkaSettings: "KAFKA_",
    RegistrySettings: "SCHEMA_REGISTRY_",
    ConsumerSettings: "EPISTLE_",
    ProducerSettings: "EPISTLE_PRODUCER_",
    RabbitSettings: "RABBITMQ_",
}


def _build(cls: type[BaseSettings], env_file: str | Path | None, overrides: dict[str, Any]) -> Any:
    try:
        return cls(_env_file=env_file, **overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = _PREFIXES[cls] + "_".join(str(part) for part in error["loc"]).upper()
            message = error["msg"].removeprefix("Value error, ")
            if not error["loc"]:  # a check across fields: its message starts with the variable to set
                problems.append(message)
                continue
            if error["type"] in _RANGE_ERRORS and error["loc"] and error["loc"][0] in cls.model_fields:
                field = cls.model_fields[error["loc"][0]]  # (a default computed later is described instead)
                default = field.description if field.default is None and field.description else field.default
                message += f"; fix: set {name} in that range, or unset it for the default ({default})"
            # The offending value is shown unless the setting is a secret.
            shown = "" if _is_secret(name) else f" (got {error.get('input')!r})"
            problems.append(f"{name}{shown}: {message}")
        source = f" (read from the environment and {env_file})" if env_file else ""
        raise ConfigError(
            "invalid settings" + source + ":\n  " + "\n  ".join(problems),
            setting=problems[0].split(" ", 1)[0].rstrip(":") if problems else None,
        ) from None


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}


def _is_secret(name: str) -> bool:
    return any(word in name for word in ("PASSWORD", "TOKEN", "SECRET")) or name == "RABBITMQ_URL"  # has one


def load_settings(env_file: str | Path | None = ENV_FILE, **overrides: Any) -> Settings:
    """Read the settings from the environment and ``env_file``.

    ``overrides`` take precedence, keyed ``kafka__group_id``, ``registry__url``, ``consumer__max_workers``,
    ``rabbitmq__url``.

    Raises:
        ConfigError: a value is invalid; the message names each offending variable and the fix.
    """
    if env_file is not None and not _args.path("env_file", env_file).exists():
        env_file = None
    grouped: dict[str, dict[str, Any]] = {"kafka": {}, "registry": {}, "consumer": {}, "rabbitmq": {}}
    for key, value in overrides.items():
        group, _, field = key.partition("__")
        if group not in grouped or not field:
            raise ConfigError(
                f"unknown override {key!r}; use kafka__<field>, registry__<field>, consumer__<field> "
                "or rabbitmq__<field>",
                setting=key,
            )
        grouped[group][field] = value
    return Settings(
        kafka=_build(KafkaSettings, env_file, grouped["kafka"]),
        registry=_build(RegistrySettings, env_file, grouped["registry"]),
        consumer=_build(ConsumerSettings, env_file, grouped["consumer"]),
        rabbitmq=_build(RabbitSettings, env_file, grouped["rabbitmq"]),
    )


def load_producer_settings(env_file: str | Path | None = ENV_FILE, **overrides: Any) -> ProducerSettings:
    """Read ``EPISTLE_PRODUCER_*`` from the environment and ``env_file``; ``overrides`` by field name.

    Raises:
        ConfigError: a value is invalid; the message names each offending variable and the fix.
    """
    if env_file is not None and not Path(env_file).exists():
        env_file = None
    return _build(ProducerSettings, env_file, overrides)


def external_services() -> dict[str, str]:
    """The services the user pointed us at (tests and the demo start nothing for these)."""
    return {
        name: os.environ[name]
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "RABBITMQ_URL")
        if os.environ.get(name)
    }
