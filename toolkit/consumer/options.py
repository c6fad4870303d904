"""A consumer's options (:class:`ConsumerOptions`) and the checks of :class:`~toolkit.consumer.KafkaConsumer`'s
constructor arguments.

Every option given explicitly (not None) is checked before anything uses it, with the same bounds as its
``EPISTLE_*`` setting (read from :class:`~toolkit.settings.ConsumerSettings`, so the two cannot drift).
An unusable value raises :class:`~toolkit.errors.ConfigError` naming the option and the fix; nothing is
silently replaced (``max_workers=0`` used to become the default, 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from toolkit import _args
from toolkit.errors import ConfigError, InvalidArgument

if TYPE_CHECKING:
    from toolkit.consumer.outcomes import ErrorPolicy, RetryPolicy
    from toolkit.settings import OrderingMode, Settings

MODES = ("group", "share")
"""The consumption modes: a consumer group, or a share group (KIP-932)."""

# option -> the ConsumerSettings field holding its bounds (same name unless listed)
_BOUNDED = (
    "max_workers",
    "max_poll_records",
    "max_in_flight",
    "max_nesting_depth",
    "commit_interval_s",
    "dlq_max_message_bytes",
    "startup_timeout_s",
    "rejoin_timeout_s",
    "handler_timeout_s",
)
_KAFKA = ("startup_timeout_s",)  # options whose bounds are KafkaSettings' (KAFKA_*), not ConsumerSettings'
_WHAT = {
    "max_workers": "handlers running at once",
    "max_poll_records": "records per fetch",
    "max_in_flight": "records held before fetching pauses",
    "max_nesting_depth": "JSON nesting levels accepted in a record",
    "commit_interval_s": "seconds between offset commits",
    "shutdown_timeout_s": "seconds stop() waits for handlers in flight",
    "dlq_max_message_bytes": "largest dead letter sent whole",
    "unknown_schema_grace_s": "seconds a record waits for a schema the registry does not know, 0 "
    "dead-letters it at once",
    "startup_timeout_s": "seconds start() waits for a broker to answer",
    "handler_timeout_s": "seconds one handler attempt may run before it fails with HandlerTimedOut",
    "rejoin_timeout_s": "seconds without partitions before the broker is asked whether the consumer is stuck out "
    "of its group, 0 never",
}


def _bounds(name: str) -> tuple[float | None, float | None, bool]:
    """(lowest allowed, highest allowed, lowest excluded) of the ConsumerSettings (or KafkaSettings)
    field ``name``."""
    from toolkit.settings import ConsumerSettings, KafkaSettings

    low = high = None
    exclusive = False
    for rule in (KafkaSettings if name in _KAFKA else ConsumerSettings).model_fields[name].metadata:
        if getattr(rule, "ge", None) is not None:
            low = rule.ge
        if getattr(rule, "gt", None) is not None:
            low, exclusive = rule.gt, True
        if getattr(rule, "le", None) is not None:
            high = rule.le
    return low, high, exclusive


def _fail(name: str, value: Any, fix: str) -> ConfigError:
    # Scalars are shown; containers and objects only by type (kafka_config may hold a password).
    shown = f"{name}={value!r}"[:120] if isinstance(value, int | float | str) else f"{name} (a {type(value).__name__})"
    return ConfigError(f"{shown}: {fix}", setting=name)


def _number(name: str, value: Any, integer: bool) -> None:
    low, high, exclusive = _bounds(name) if name in _BOUNDED else (0, None, False)
    kind = "an integer" if integer else "a number"
    if exclusive:
        span = f"above {low}" + (f" and at most {high}" if high is not None else "")
    elif high is not None:
        span = f"from {low} to {high}"
    else:
        span = f"of at least {low}"
    variable = f"KAFKA_{name.upper()}" if name in _KAFKA else f"EPISTLE_{name.upper()}"
    fix = f"use {kind} {span} ({_WHAT[name]}; {variable} sets the default)"
    try:  # type, finiteness and the inclusive bounds: the public functions' own checks
        if integer:
            _args.integer(name, value, low=None if exclusive else low, high=high)
        else:
            _args.number(name, value, low=None if exclusive else low)
    except InvalidArgument:
        raise _fail(name, value, fix) from None
    if (exclusive and value <= low) or (high is not None and value > high):
        raise _fail(name, value, fix)


def check_consumer_options(arguments: Mapping[str, Any]) -> list[str] | None:
    """Check the constructor's arguments (its ``locals()``); options left as None are not checked.

    Returns ``topics`` as a list (None when not given): an iterator is read once, here, so the constructor
    uses the list that was checked.

    Raises:
        ConfigError: an option is of the wrong type or out of range; ``setting`` is the option's name.
    """
    from toolkit.consumer.outcomes import ErrorPolicy, RetryPolicy
    from toolkit.settings import OrderingMode, Settings

    given = {name: value for name, value in arguments.items() if value is not None and name != "self"}
    for name in ("bootstrap_servers", "group_id", "dlq_suffix", "group_instance_id"):
        if name in given and (not isinstance(given[name], str) or not given[name].strip()):
            raise _fail(
                name,
                given[name],
                "use a non-empty string"
                + (" such as host:9092 (comma-separated)" if name == "bootstrap_servers" else ""),
            )
    for name in ("max_workers", "max_poll_records", "max_in_flight", "max_nesting_depth", "dlq_max_message_bytes"):
        if name in given:
            _number(name, given[name], integer=True)
    for name in (
        "commit_interval_s",
        "shutdown_timeout_s",
        "unknown_schema_grace_s",
        "startup_timeout_s",
        "rejoin_timeout_s",
        "handler_timeout_s",
    ):
        if name in given:
            _number(name, given[name], integer=False)
    if "mode" in given and given["mode"] not in MODES:
        raise _fail(
            "mode",
            given["mode"],
            "use group (a consumer group) or share (a Kafka share group); EPISTLE_CONSUMER_MODE sets the default",
        )
    for name, enum in (("ordering", OrderingMode), ("error_policy", ErrorPolicy)):
        if name in given:
            try:
                enum(given[name])  # exactly as the constructor converts it
            except (ValueError, TypeError):
                raise _fail(name, given[name], "use one of " + ", ".join(member.value for member in enum)) from None
    topics = None
    if "topics" in given:
        topics = given["topics"]
        if isinstance(topics, str | bytes) or not isinstance(topics, Iterable):
            raise _fail("topics", topics, 'use a list of topic names, e.g. ["orders"]')
        topics = list(topics)  # once: a generator is empty the second time
        if not all(isinstance(topic, str) and topic.strip() for topic in topics):
            raise _fail("topics", topics, 'use a list of non-empty topic names, e.g. ["orders"]')
    checks = {
        "retry": (lambda v: isinstance(v, RetryPolicy), "use a RetryPolicy(max_attempts, initial_s, max_s)"),
        "settings": (lambda v: isinstance(v, Settings), "use toolkit.load_settings()"),
        "stop_when_idle": (lambda v: isinstance(v, bool), "use True or False"),
        "kafka_config": (
            lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v),
            'use a dict of librdkafka properties, e.g. {"session.timeout.ms": 10000}',
        ),
        "dead_letter_producer_config": (
            lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v),
            'use a dict of librdkafka producer properties, e.g. {"compression.type": "zstd"}',
        ),
        "subject_strategy": (
            callable,
            "use a function SubjectContext -> subject name, e.g. toolkit.registry.topic_value_strategy",
        ),
        "serializer": (
            lambda v: callable(getattr(v, "loads", v)),
            "use an object with loads(bytes), or a function of the record bytes",
        ),
        "registry": (
            lambda v: callable(getattr(v, "resolve", None)) or callable(getattr(v, "get", None)),
            "use a SchemaRegistry (e.g. toolkit.registry.LocalFolderRegistry) or a CachedRegistry",
        ),
        "middleware": (lambda v: isinstance(v, list | tuple), "use a list of toolkit.consumer.Middleware"),
        "transport": (
            lambda v: all(
                callable(getattr(v, m, None))
                for m in (
                    "connect",
                    "start",
                    "commit",
                    "take_commit_failure",
                    "pause",
                    "resume",
                    "stop_fetching",
                    "close",
                )
            ),
            "use a toolkit.consumer.transport.Transport, e.g. toolkit.testing.InMemoryBroker()"
            ".transport(); None is Kafka",
        ),
        "models": (
            lambda v: callable(getattr(v, "get", None)),
            "use a model index with get(schema_name, version), e.g. toolkit.codegen.load_model_index()",
        ),
    }
    for name, (ok, fix) in checks.items():
        if name in given and not ok(given[name]):
            raise _fail(name, given[name], fix)
    if "value_formats" in given:
        check_value_formats(given["value_formats"])
    if "key_formats" in given:
        check_key_formats(given["key_formats"])
    return topics


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """Every option of a consumer, resolved: the constructor's arguments over ``Settings`` (the
    environment and ``.env``) over the defaults. Built by :meth:`resolve`; the engine reads only this."""

    bootstrap_servers: str
    group_id: str
    topics: list[str] | None
    max_workers: int
    max_poll_records: int
    max_in_flight: int
    ordering: OrderingMode
    error_policy: ErrorPolicy
    retry: RetryPolicy
    dlq_suffix: str
    commit_interval_s: float
    stop_when_idle: bool
    shutdown_timeout_s: float
    max_nesting_depth: int
    dlq_max_message_bytes: int
    unknown_schema_grace_s: float
    startup_timeout_s: float
    group_instance_id: str | None
    auto_offset_reset: str
    mode: str
    """``group`` (a consumer group) or ``share`` (a share group: UNORDERED only)."""
    client_config: dict[str, Any] = field(repr=False)
    """Connection settings of every Kafka client (the consumer, the dead-letter producer, the admin client):
    KAFKA_* security settings, then those given in ``kafka_config`` (:func:`connection_settings`)."""
    kafka_config: dict[str, Any] = field(repr=False)
    dead_letter_producer_config: dict[str, Any] = field(repr=False)
    value_formats: dict[str, Any] = field(default_factory=dict)
    """Topic -> ``envelope``, ``confluent`` or ``auto`` (``*``: every other topic); envelope by default."""
    key_formats: dict[str, Any] = field(default_factory=dict)
    """Topic -> ``raw``, ``confluent`` or ``auto`` (``*``: every other topic); raw by default."""
    handler_timeout_s: float | None = None
    """Seconds one handler attempt may run before it fails with :class:`~toolkit.errors.HandlerTimedOut`;
    None: no limit."""
    rejoin_timeout_s: float | None = None
    """Seconds without partitions before the broker is asked whether the consumer is stuck out of its group;
    None: three session timeouts (at least 30 s); 0: never."""

    @classmethod
    def resolve(cls, settings: Settings | None, arguments: Mapping[str, Any]) -> ConsumerOptions:
        """The options from the constructor's ``arguments`` (its ``locals()``: None means "from settings").

        Raises:
            ConfigError: an option is of the wrong type or out of range; ``setting`` names it.
        """
        from toolkit.consumer.outcomes import ErrorPolicy, RetryPolicy
        from toolkit.settings import ConsumerSettings, KafkaSettings, OrderingMode
        from toolkit.settings import group_instance_id as instance_id

        topics = check_consumer_options(arguments)  # ConfigError naming the option: nothing silently replaced
        a = arguments
        kafka = settings.kafka if settings else KafkaSettings.model_construct()
        cfg = settings.consumer if settings else ConsumerSettings.model_construct()
        try:  # the same rules (and {hostname}) as KAFKA_GROUP_INSTANCE_ID
            group_instance = (
                kafka.group_instance_id if a.get("group_instance_id") is None else instance_id(a["group_instance_id"])
            )
        except ValueError as exc:
            raise ConfigError(f"group_instance_id: {exc}", setting="group_instance_id") from None
        bootstrap = a.get("bootstrap_servers") or kafka.bootstrap_servers

        def given(name: str, default: Any) -> Any:
            return default if a.get(name) is None else a[name]

        mode = given("mode", cfg.consumer_mode)
        ordering = OrderingMode(given("ordering", cfg.ordering))
        if mode == "share":  # no order to keep: UNORDERED unless another was asked for (refused)
            from toolkit.consumer.share import check_share_ordering

            explicit = a.get("ordering") is not None or "ordering" in cfg.model_fields_set
            check_share_ordering(ordering, explicit)
            ordering = OrderingMode.UNORDERED

        return cls(
            bootstrap_servers=bootstrap,
            group_id=a.get("group_id") or kafka.group_id,
            topics=topics,
            max_workers=given("max_workers", cfg.max_workers),
            max_poll_records=given("max_poll_records", cfg.max_poll_records),
            max_in_flight=given("max_in_flight", cfg.max_in_flight),
            ordering=ordering,
            error_policy=ErrorPolicy(given("error_policy", cfg.error_policy)),
            retry=given("retry", None)
            or RetryPolicy(cfg.max_attempts, cfg.retry_backoff_initial_s, cfg.retry_backoff_max_s),
            dlq_suffix=given("dlq_suffix", cfg.dlq_suffix),
            commit_interval_s=float(given("commit_interval_s", cfg.commit_interval_s)),
            stop_when_idle=bool(given("stop_when_idle", False)),
            shutdown_timeout_s=float(given("shutdown_timeout_s", 30.0)),
            max_nesting_depth=given("max_nesting_depth", cfg.max_nesting_depth),
            dlq_max_message_bytes=given("dlq_max_message_bytes", cfg.dlq_max_message_bytes),
            unknown_schema_grace_s=float(given("unknown_schema_grace_s", cfg.unknown_schema_grace_s)),
            startup_timeout_s=float(given("startup_timeout_s", kafka.startup_timeout_s)),
            group_instance_id=group_instance,
            auto_offset_reset=kafka.auto_offset_reset,
            mode=mode,
            client_config={
                **kafka.client_config(),
                "bootstrap.servers": bootstrap,
                **connection_settings(a.get("kafka_config") or {}),
            },
            kafka_config=dict(a.get("kafka_config") or {}),
            dead_letter_producer_config=dict(a.get("dead_letter_producer_config") or {}),
            value_formats=(
                check_value_formats(a["value_formats"])
                if a.get("value_formats") is not None
                else dict(cfg.value_formats)
            ),
            key_formats=(
                check_key_formats(a["key_formats"]) if a.get("key_formats") is not None else dict(cfg.key_formats)
            ),
            handler_timeout_s=(
                float(a["handler_timeout_s"]) if a.get("handler_timeout_s") is not None else cfg.handler_timeout_s
            ),
            rejoin_timeout_s=(
                float(a["rejoin_timeout_s"]) if a.get("rejoin_timeout_s") is not None else cfg.rejoin_timeout_s
            ),
        )

    def share_consumer_config(self) -> dict[str, Any]:
        """The librdkafka share consumer's settings: the connection, the group, then ``kafka_config``."""
        from toolkit.consumer.kafka_log import kafka_logger

        return {**self.client_config, "group.id": self.group_id, "logger": kafka_logger(), **self.kafka_config}

    def consumer_config(self) -> dict[str, Any]:
        """The librdkafka consumer's settings: ours, then ``kafka_config`` over them."""
        from toolkit.consumer.kafka_log import kafka_logger

        return {
            **self.client_config,
            "group.id": self.group_id,
            "auto.offset.reset": self.auto_offset_reset,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "partition.assignment.strategy": "cooperative-sticky",
            # librdkafka's prefetch queue (default 64 MB) is memory beside our in-flight window.
            "queued.max.messages.kbytes": 32768,
            "logger": kafka_logger(),  # librdkafka's lines via Python logging, repeats held back
            **({"group.instance.id": self.group_instance_id} if self.group_instance_id else {}),
            **self.kafka_config,
        }


def check_value_formats(value: Any) -> dict:
    """``value_formats=`` as a ``{topic: format}`` dict (the setting's rules: :data:`toolkit.wire.SETTING`).

    Raises:
        ConfigError: not a mapping, or an entry that is not a topic and one of envelope, confluent, auto.
    """
    from toolkit.wire import SETTING, parse_value_formats

    if not isinstance(value, Mapping):
        raise _fail(
            "value_formats",
            value,
            'use a dict of topic -> "envelope", "confluent" or "auto", e.g. '
            f'{{"payments": "confluent"}} ({SETTING} sets the default)',
        )
    try:
        return parse_value_formats(value)
    except ValueError as exc:
        raise ConfigError(f"value_formats: {exc} ({SETTING} sets the default)", setting="value_formats") from None


def check_key_formats(value: Any) -> dict:
    """``key_formats=`` as a ``{topic: format}`` dict (the setting's rules: :data:`toolkit.wire.KEY_SETTING`).

    Raises:
        ConfigError: not a mapping, or an entry that is not a topic and one of raw, confluent, auto.
    """
    from toolkit.wire import KEY_SETTING, KeyFormat, parse_formats

    if not isinstance(value, Mapping):
        raise _fail(
            "key_formats",
            value,
            f'use a dict of topic -> "raw", "confluent" or "auto", e.g. {{"payments": "confluent"}} '
            f"({KEY_SETTING} sets the default)",
        )
    try:
        return parse_formats(value, KeyFormat)
    except ValueError as exc:
        raise ConfigError(f"key_formats: {exc} ({KEY_SETTING} sets the default)", setting="key_formats") from None


# librdkafka properties that say how to reach and authenticate to the cluster, as opposed to how to consume:
# given in kafka_config, they apply to the dead-letter producer and the admin client too.
_CONNECTION_PREFIXES = (
    "security.protocol",
    "sasl.",
    "ssl.",
    "ssl_",
    "enable.ssl.",
    "socket.",
    "client.dns.lookup",
    "broker.address.",
    "resolve_canonical_bootstrap_servers_only",
)


def connection_settings(kafka_config: Mapping[str, Any]) -> dict[str, Any]:
    """The connection and security properties of ``kafka_config`` (``security.protocol``, ``sasl.*``,
    ``ssl.*``, ``socket.*`` ...): a consumer given SASL credentials there produces its dead letters with them."""
    return {
        key: value
        for key, value in kafka_config.items()
        if isinstance(key, str) and key.startswith(_CONNECTION_PREFIXES)
    }
