"""CachedRegistry over an in-memory registry: hits cost nothing, TTLs hold, threads share one miss."""

from __future__ import annotations

import threading
import time

import pytest

from toolkit.errors import RegistryUnavailable, SchemaNotFound
from toolkit.layout import SchemaFormat
from toolkit.registry import CachedRegistry, RegisteredSchema, SchemaRegistry
from toolkit.registry import cache as cache_module
from toolkit.testing import InMemoryRegistry

V1 = '{"type": "object", "properties": {"a": {"type": "string"}}}'
V2 = '{"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingCompile:
    def __init__(self) -> None:
        self.compiled: list[tuple[str, int]] = []

    def __call__(self, schema: RegisteredSchema) -> tuple[str, int]:
        self.compiled.append((schema.subject, schema.version))
        return ("compiled", schema.version)


@pytest.fixture
def backend() -> InMemoryRegistry:
    registry = InMemoryRegistry()
    registry.register("orders", V1, SchemaFormat.JSON)
    registry.register("orders", V2, SchemaFormat.JSON)
    registry.calls.clear()
    return registry


def make_cache(backend, clock=None, compile=None, **ttls) -> CachedRegistry:
    return CachedRegistry(backend, compile or CountingCompile(), clock=clock or Clock(), **ttls)


def test_the_cache_is_a_registry(backend):
    assert isinstance(make_cache(backend), SchemaRegistry)


def test_a_hit_makes_no_registry_call_and_no_compile(backend):
    compile = CountingCompile()
    cache = make_cache(backend, compile=compile)
    schema, compiled = cache.resolve("orders", 1)
    assert (schema.version, compiled) == (1, ("compiled", 1))
    for _ in range(100):
        assert cache.resolve("orders", 1) == (schema, compiled)
    assert backend.calls == {"get": 1}
    assert compile.compiled == [("orders", 1)]


def test_latest_is_cached_for_its_ttl_then_asked_again(backend):
    clock, compile = Clock(), CountingCompile()
    cache = make_cache(backend, clock, compile, latest_ttl_s=30)
    assert cache.resolve("orders", "latest")[0].version == 2
    assert cache.resolve("orders", 2)[1] == ("compiled", 2)  # latest filled the version entry too
    clock.now += 29
    backend.register("orders", '{"type": "object"}', SchemaFormat.JSON)  # version 3, behind the cache's back
    assert cache.latest("orders").version == 2
    assert backend.calls["latest"] == 1 and backend.calls["get"] == 0
    clock.now += 2
    assert cache.latest("orders").version == 3
    assert backend.calls["latest"] == 2
    assert compile.compiled == [("orders", 2), ("orders", 3)]


def test_latest_ttl_zero_always_asks(backend):
    cache = make_cache(backend, latest_ttl_s=0)
    cache.latest("orders")
    cache.latest("orders")
    assert backend.calls["latest"] == 2


def test_not_found_is_remembered_for_its_ttl(backend):
    clock = Clock()
    cache = make_cache(backend, clock, not_found_ttl_s=5)
    for _ in range(3):
        with pytest.raises(SchemaNotFound) as raised:
            cache.resolve("orders", 7)
        assert raised.value.subject == "orders" and raised.value.version == 7
    assert backend.calls["get"] == 1
    backend.register("orders", '{"type": "object"}', SchemaFormat.JSON)
    backend.register("orders", '{"type": "array"}', SchemaFormat.JSON)
    backend.register("orders", '{"type": "string"}', SchemaFormat.JSON)
    backend.register("orders", '{"type": "number"}', SchemaFormat.JSON)
    backend.register("orders", '{"type": "boolean"}', SchemaFormat.JSON)  # version 7 exists now
    clock.now += 4.9
    with pytest.raises(SchemaNotFound):
        cache.resolve("orders", 7)
    clock.now += 0.2
    assert cache.resolve("orders", 7)[0].version == 7
    assert backend.calls["get"] == 2


def test_an_unknown_subject_is_remembered_too(backend):
    cache = make_cache(backend, not_found_ttl_s=5)
    for version in (1, 1, "latest", "latest"):
        with pytest.raises(SchemaNotFound):
            cache.resolve("nope", version)
    assert backend.calls == {"get": 1, "latest": 1}


def test_unavailable_is_never_cached(backend):
    cache = make_cache(backend)
    backend.down = True
    for _ in range(2):
        with pytest.raises(RegistryUnavailable):
            cache.resolve("orders", 1)
    backend.down = False
    assert cache.resolve("orders", 1)[0].version == 1
    assert backend.calls["get"] == 3


def test_a_compile_failure_is_not_cached(backend):
    failures = iter([ValueError("bad schema")])

    def flaky_compile(schema: RegisteredSchema) -> str:
        error = next(failures, None)
        if error:
            raise error
        return "ok"

    cache = make_cache(backend, compile=flaky_compile)
    with pytest.raises(ValueError):
        cache.resolve("orders", 1)
    assert cache.resolve("orders", 1)[1] == "ok"


def test_register_through_the_cache_forgets_latest_and_misses(backend):
    cache = make_cache(backend, latest_ttl_s=300, not_found_ttl_s=300)
    assert cache.latest("orders").version == 2
    with pytest.raises(SchemaNotFound):
        cache.get("orders", 3)
    assert cache.register("orders", '{"type": "object"}', SchemaFormat.JSON).version == 3
    assert cache.latest("orders").version == 3
    assert cache.get("orders", 3).version == 3


def test_concurrent_misses_make_one_request_and_one_compile():

    class SlowRegistry(InMemoryRegistry):
        def get(self, subject: str, version: int) -> RegisteredSchema:
            time.sleep(0.05)  # every other thread arrives while this one is fetching
            return super().get(subject, version)

    backend = SlowRegistry()
    backend.register("orders", V1, SchemaFormat.JSON)
    compile = CountingCompile()
    cache = make_cache(backend, compile=compile)
    results: list[object] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        results.append(cache.resolve("orders", 1))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 16 and all(result is results[0] for result in results)
    assert backend.calls["get"] == 1
    assert compile.compiled == [("orders", 1)]


def test_from_settings_takes_the_ttls(backend):
    from toolkit.settings import RegistrySettings

    settings = RegistrySettings(_env_file=None, latest_ttl_s=0, not_found_ttl_s=0)
    cache = CachedRegistry.from_settings(backend, settings, compile=CountingCompile())
    for _ in range(2):
        cache.latest("orders")
        with pytest.raises(SchemaNotFound):
            cache.get("orders", 9)
    assert backend.calls["latest"] == 2 and backend.calls["get"] == 2


def test_the_default_compile_is_toolkit_validation(backend):
    from toolkit.validation import compile_schema  # the default exists in this tree

    cache = CachedRegistry(backend)
    schema, compiled = cache.resolve("orders", 1)
    assert type(compiled) is type(compile_schema(schema))


def test_many_distinct_misses_drop_the_expired_ones_and_keep_answering_not_found(backend, monkeypatch):
    monkeypatch.setattr(cache_module, "MAX_REMEMBERED_MISSES", 3)
    clock = Clock()
    cache = make_cache(backend, clock, not_found_ttl_s=5)
    for round_ in range(4):  # one-off unknown names, far more than the bound, the older ones expired
        for n in range(3):
            with pytest.raises(SchemaNotFound):
                cache.resolve(f"made-up-{round_}-{n}", 1)
        clock.now += 6
    assert len(cache._missing) <= 3
