"""A schema the registry does not know is not final at once.

In memory: the pipeline over the real :class:`CachedRegistry` and an in-memory registry (our protocol),
with an injected clock. Within ``unknown_schema_grace_s`` an unknown (subject, version) raises
``SchemaNotYetKnown`` (the runtime pauses the partition and asks again), every retry really asks the
registry (past the negative cache), and a version registered meanwhile is found; after the grace the record
is dead-lettered at stage ``schema`` with how long it waited. The local-folder registry re-reads the folder
on a miss, so a new version file is found too.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from toolkit.consumer import KafkaConsumer
from toolkit.consumer.handlers import HandlerRegistry
from toolkit.consumer.outcomes import ErrorPolicy, Pause, RetryPolicy, ToDeadLetter, decide
from toolkit.consumer.pipeline import UNKNOWN_RETRY_MAX_S, Pipeline
from toolkit.errors import ConfigError, MessageError, SchemaCannotExist, SchemaNotFound, SchemaNotYetKnown
from toolkit.layout import SchemaFormat
from toolkit.registry import CachedRegistry, LocalFolderRegistry, RegisteredSchema
from toolkit.settings import load_settings
from toolkit.testing import InMemoryRegistry

V1 = '{"type": "object", "properties": {"n": {"type": "integer"}}}'
V2 = '{"type": "object", "properties": {"n": {"type": "integer"}, "m": {"type": "string"}}}'
KEY = ("things", 2)


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def _compile(schema: RegisteredSchema) -> object:
    return ("compiled", schema.subject, schema.version)


def make(grace: float, *, not_found_ttl_s: float = 5.0) -> tuple[Pipeline, InMemoryRegistry, Clock]:
    clock = Clock()
    backend = InMemoryRegistry()
    backend.register("things", V1, SchemaFormat.JSON)
    backend.calls.clear()
    cache = CachedRegistry(backend, _compile, not_found_ttl_s=not_found_ttl_s, clock=clock)
    return Pipeline(cache, HandlerRegistry(), None, unknown_schema_grace_s=grace, clock=clock), backend, clock


def test_within_the_grace_an_unknown_version_is_not_yet_known_and_each_retry_asks_the_registry() -> None:
    pipeline, backend, clock = make(30)
    for waited in (0.0, 0.5, 1.5, 3.5, 7.5):  # the runtime's backoff: 0.5, 1, 2, 4 s
        clock.now = 500.0 + waited
        with pytest.raises(SchemaNotYetKnown) as raised:
            pipeline.resolve(KEY)
        assert raised.value.unknown_for_s == pytest.approx(waited)
        assert raised.value.grace_s == 30
        assert 0 < raised.value.retry_in_s <= UNKNOWN_RETRY_MAX_S
        assert "EPISTLE_UNKNOWN_SCHEMA_GRACE_S=30" in str(raised.value)
    # Each retry asked the registry, though a miss is remembered for 5 s (not_found_ttl_s).
    assert backend.calls["get"] == 5

    backend.register("things", V2, SchemaFormat.JSON)  # registered (again) while the record waits
    clock.now += 1
    assert pipeline.resolve(KEY) == ("compiled", "things", 2)
    assert backend.calls["get"] == 6


def test_after_the_grace_it_is_dead_lettered_with_how_long_it_waited() -> None:
    pipeline, backend, clock = make(30)
    with pytest.raises(SchemaNotYetKnown):
        pipeline.resolve(KEY)
    clock.now += 29.9
    with pytest.raises(SchemaNotYetKnown) as raised:
        pipeline.resolve(KEY)
    assert raised.value.retry_in_s == pytest.approx(0.1)  # the last wait ends with the grace
    clock.now += 0.2
    with pytest.raises(MessageError) as final:
        pipeline.resolve(KEY)
    error = final.value
    assert error.stage == "schema"
    assert "still unknown after 30.1s of asking again (EPISTLE_UNKNOWN_SCHEMA_GRACE_S=30)" in error.reason
    assert error.details[0]["path"] == "/header/schemaVersion"
    assert error.details[0]["unknown_for_s"] == pytest.approx(30.1)
    assert error.details[0]["grace_s"] == 30
    asked = backend.calls["get"]

    # The next record of that version: the schema has been unknown for the grace already, so it does not
    # wait again, and the negative cache answers (no request within not_found_ttl_s).
    clock.now += 1
    with pytest.raises(MessageError, match="still unknown after 31.1s"):
        pipeline.resolve(KEY)
    assert backend.calls["get"] == asked


def test_a_version_not_asked_about_for_a_grace_starts_a_new_wait() -> None:
    pipeline, _, clock = make(10)
    with pytest.raises(SchemaNotYetKnown):
        pipeline.resolve(KEY)
    clock.now += 10.5
    with pytest.raises(MessageError):
        pipeline.resolve(KEY)
    clock.now += 60  # a new episode (say the registry lost it again after a restart): a new grace
    with pytest.raises(SchemaNotYetKnown) as raised:
        pipeline.resolve(KEY)
    assert raised.value.unknown_for_s == 0


def test_found_then_lost_again_waits_again() -> None:
    pipeline, backend, clock = make(30)
    with pytest.raises(SchemaNotYetKnown):
        pipeline.resolve(KEY)
    backend.register("things", V2, SchemaFormat.JSON)
    clock.now += 40  # found after the grace would have run out: the clock was for the earlier episode
    assert pipeline.resolve(KEY)
    assert ("things", 2) not in pipeline._unknown


def test_grace_zero_dead_letters_at_once_and_says_so() -> None:
    pipeline, backend, _ = make(0)
    with pytest.raises(MessageError) as raised:
        pipeline.resolve(KEY)
    assert raised.value.stage == "schema"
    assert "not waited for (EPISTLE_UNKNOWN_SCHEMA_GRACE_S=0)" in raised.value.reason
    assert raised.value.details[0]["unknown_for_s"] == 0
    assert backend.calls["get"] == 1


def test_an_unknown_subject_waits_too() -> None:
    pipeline, _, _ = make(5)
    with pytest.raises(SchemaNotYetKnown) as raised:
        pipeline.resolve(("invoices", 1))
    assert raised.value.subject == "invoices" and raised.value.version == 1


def test_a_resolver_without_fresh_lookups_still_waits_and_resolves() -> None:
    class Plain:  # a SchemaResolver of its own (no ``fresh`` keyword): asked as it is
        def __init__(self) -> None:
            self.known = False
            self.calls = 0

        def resolve(self, subject: str, version: int):
            self.calls += 1
            if not self.known:
                raise SchemaNotFound(f"{subject} v{version} not found", subject=subject, version=version)
            return RegisteredSchema(subject, version, SchemaFormat.JSON, V2), "compiled"

    clock, plain = Clock(), Plain()
    pipeline = Pipeline(plain, HandlerRegistry(), None, unknown_schema_grace_s=3, clock=clock)
    with pytest.raises(SchemaNotYetKnown):
        pipeline.resolve(KEY)
    plain.known = True
    clock.now += 1
    assert pipeline.resolve(KEY) == "compiled" and plain.calls == 2


def test_not_yet_known_is_a_pause_capped_at_its_retry_time_even_under_stop() -> None:
    exc = SchemaNotYetKnown("not yet", unknown_for_s=1, grace_s=30, retry_in_s=0.3)
    for policy in ErrorPolicy:
        outcome = decide(exc, 1, RetryPolicy(3, 0.5, 30), policy)
        assert isinstance(outcome, Pause) and outcome.max_delay_s == 0.3
    final = MessageError("schema", "unknown schema ...; still unknown after 30.0s")
    assert isinstance(decide(final, 1, RetryPolicy()), ToDeadLetter)


# --- the negative cache and fresh lookups ----------------------------------------------------------------


def test_a_fresh_lookup_asks_past_a_remembered_miss() -> None:
    clock, backend = Clock(), InMemoryRegistry()
    cache = CachedRegistry(backend, _compile, not_found_ttl_s=60, clock=clock)
    with pytest.raises(SchemaNotFound):
        cache.resolve("things", 1)
    with pytest.raises(SchemaNotFound):
        cache.resolve("things", 1)  # remembered: no request
    assert backend.calls["get"] == 1
    backend.register("things", V1, SchemaFormat.JSON)
    with pytest.raises(SchemaNotFound):
        cache.resolve("things", 1)  # an ordinary lookup still takes the remembered miss
    assert cache.resolve("things", 1, fresh=True)[0].version == 1
    assert backend.calls["get"] == 2


def test_concurrent_fresh_lookups_of_one_key_make_one_request() -> None:
    clock = Clock()
    entered, release = threading.Event(), threading.Event()

    class Slow(InMemoryRegistry):
        def get(self, subject: str, version: int) -> RegisteredSchema:
            entered.set()
            release.wait(5)
            return super().get(subject, version)

    backend = Slow()
    cache = CachedRegistry(backend, _compile, clock=clock)
    errors: list[BaseException] = []

    def look() -> None:
        try:
            cache.resolve("things", 1, fresh=True)
        except SchemaNotFound as exc:
            errors.append(exc)

    first = threading.Thread(target=look)
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=look)  # began after the first: waits on the key's lock
    second.start()
    release.set()
    first.join(5)
    second.join(5)
    assert len(errors) == 2 and backend.calls["get"] == 1


# --- the local folder: a version file added while running ------------------------------------------------


def _folder(root: Path) -> Path:
    (root / "things").mkdir(parents=True)
    (root / "things" / "1.json").write_text(V1)
    (root / "things" / "subject.toml").write_text('topics = ["things"]\n')
    return root


def test_the_local_folder_rereads_on_a_miss_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = Clock()
    registry = LocalFolderRegistry(_folder(tmp_path / "schemas"), rescan_interval_s=1.0, clock=clock)
    assert registry.get("things", 1).version == 1
    (tmp_path / "schemas" / "things" / "2.json").write_text(V2)
    with pytest.raises(SchemaNotFound):
        registry.get("things", 2)  # read less than a second ago: not re-read
    clock.now += 1.5
    assert registry.get("things", 2).version == 2
    assert registry.latest("things").version == 2


def test_a_half_written_file_keeps_the_previous_view_until_it_is_complete(tmp_path: Path) -> None:
    clock = Clock()
    registry = LocalFolderRegistry(_folder(tmp_path / "schemas"), rescan_interval_s=1.0, clock=clock)
    assert registry.get("things", 1).version == 1
    (tmp_path / "schemas" / "things" / "2.json").write_text(V2[:20])
    clock.now += 2
    with pytest.raises(SchemaNotFound):
        registry.get("things", 2)
    assert registry.get("things", 1).version == 1  # the previous view is kept
    (tmp_path / "schemas" / "things" / "2.json").write_text(V2)
    clock.now += 2
    assert registry.get("things", 2).version == 2


def test_the_pipeline_over_the_local_folder_finds_a_new_version_file_within_the_grace(tmp_path: Path) -> None:
    clock = Clock()
    folder = LocalFolderRegistry(_folder(tmp_path / "schemas"), rescan_interval_s=1.0, clock=clock)
    pipeline = Pipeline(
        CachedRegistry(folder, clock=clock), HandlerRegistry(), None, unknown_schema_grace_s=30, clock=clock
    )
    assert pipeline.resolve(("things", 1))
    clock.now += 2
    with pytest.raises(SchemaNotYetKnown):
        pipeline.resolve(KEY)
    (tmp_path / "schemas" / "things" / "2.json").write_text(V2)
    clock.now += 1.5
    assert pipeline.resolve(KEY).version == 2


# --- configuration ---------------------------------------------------------------------------------------


def test_the_setting_and_the_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EPISTLE_UNKNOWN_SCHEMA_GRACE_S", raising=False)
    assert load_settings(env_file=None).consumer.unknown_schema_grace_s == 30
    monkeypatch.setenv("EPISTLE_UNKNOWN_SCHEMA_GRACE_S", "2.5")
    settings = load_settings(env_file=None)
    assert KafkaConsumer(settings=settings).options.unknown_schema_grace_s == 2.5
    assert KafkaConsumer(settings=settings, unknown_schema_grace_s=0).options.unknown_schema_grace_s == 0
    assert KafkaConsumer().options.unknown_schema_grace_s == 30
    monkeypatch.setenv("EPISTLE_UNKNOWN_SCHEMA_GRACE_S", "-1")
    with pytest.raises(ConfigError) as raised:
        load_settings(env_file=None)
    assert "EPISTLE_UNKNOWN_SCHEMA_GRACE_S" in str(raised.value) and "0 (dead-letter" in str(raised.value)
    for wrong in (-1, float("nan"), float("inf"), True, "5"):  # checked with the other constructor options
        with pytest.raises(ConfigError, match="unknown_schema_grace_s.*EPISTLE_UNKNOWN_SCHEMA_GRACE_S") as raised:
            KafkaConsumer(unknown_schema_grace_s=wrong)
        assert raised.value.setting == "unknown_schema_grace_s"


# --- a name the folder can never hold ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../things", "things/../../etc", "things\x00", "things value", "ü", "t" * 256, "things\n", ".", ".."],
    ids=["parent", "traversal", "nul", "space", "non-ascii", "too-long", "newline", "dot", "dot-dot"],
)
def test_a_name_the_folder_can_never_hold_is_final_at_once_without_rereading(tmp_path: Path, name: str) -> None:
    clock = Clock()
    registry = LocalFolderRegistry(_folder(tmp_path / "schemas"), rescan_interval_s=1.0, clock=clock)
    assert registry.get("things", 1).version == 1
    reads: list[int] = []
    reload = registry.reload
    registry.reload = lambda: (reads.append(1), reload())[1]  # type: ignore[method-assign]
    clock.now += 5  # a plain miss now would re-read the folder
    with pytest.raises(SchemaCannotExist) as raised:
        registry.get(name, 1)
    assert reads == []
    assert "can never be in" in str(raised.value) and "letters, digits, '.', '_' and '-'" in str(raised.value)
    assert len(str(raised.value)) < 400  # a long name is cut
    with pytest.raises(SchemaNotFound):  # a plain miss still re-reads (a folder may be added)
        registry.get("invoices", 1)
    assert reads == [1]


def test_names_the_folder_may_hold_are_still_waited_for(tmp_path: Path) -> None:
    clock = Clock()
    folder = LocalFolderRegistry(_folder(tmp_path / "schemas"), rescan_interval_s=1.0, clock=clock)
    pipeline = Pipeline(
        CachedRegistry(folder, clock=clock), HandlerRegistry(), None, unknown_schema_grace_s=30, clock=clock
    )
    for name in ("invoices", "1orders-value", "com.acme.Invoice", "a" * 255, "-x_y.z"):
        with pytest.raises(SchemaNotYetKnown):
            pipeline.resolve((name, 1))


def test_the_pipeline_dead_letters_a_name_that_can_never_exist_at_once(tmp_path: Path) -> None:
    clock = Clock()
    folder = LocalFolderRegistry(_folder(tmp_path / "schemas"), rescan_interval_s=1.0, clock=clock)
    cache = CachedRegistry(folder, clock=clock)
    pipeline = Pipeline(cache, HandlerRegistry(), None, unknown_schema_grace_s=30, clock=clock)
    for _ in range(2):  # the second answer comes from the cache's remembered miss: final too, not a wait
        with pytest.raises(MessageError) as raised:
            pipeline.resolve(("../things", 1))
        error = raised.value
        assert error.stage == "schema"
        assert "'../things'" in error.reason and "can never be in" in error.reason
        assert error.details[0]["path"] == "/header/schemaName" and error.details[0]["grace_s"] == 0.0
    assert pipeline.resolve(("things", 1))  # the subject itself is unaffected


def test_the_consumer_dead_letters_such_records_without_waiting_and_goes_on() -> None:
    """On the in-memory broker with the default grace (30 s), the repository's schemas and models: a record
    per hostile name, then a valid one; every hostile one is in the dead-letter topic (its original bytes,
    stage schema) and the valid one is handled, in one drain (stop_when_idle: nothing waited a grace)."""
    import asyncio
    import json

    from tests.malformed_corpus import _envelope
    from toolkit.consumer.deadletter import original_record
    from toolkit.testing import InMemoryBroker

    names = ["../orders", "orders/../../etc", "orders\x00", "o" * 10_000]
    hostile = [_envelope(schemaName=name) for name in names]
    broker = InMemoryBroker(partitions=1)
    broker.create_topic("orders", 1)
    for value in [*hostile, _envelope(messageId="ok")]:
        broker.produce("orders", value)
    handled: list[str] = []

    async def handle(message: object) -> None:
        handled.append(message.header.message_id)  # type: ignore[attr-defined]

    consumer = KafkaConsumer(
        group_id="g", transport=broker.transport("g"), stop_when_idle=True, unknown_schema_grace_s=30
    )
    consumer.register_handler("orders", handle)
    asyncio.run(consumer.start())
    assert handled == ["ok"]
    letters = broker.records("orders.dlq")
    assert [original_record(d.value(), d.key(), d.headers()).value for d in letters] == hostile
    for letter in letters:
        error = json.loads(letter.value())["error"]
        assert error["stage"] == "schema" and "can never be in" in error["reason"], error
