"""A caching layer over any :class:`~toolkit.registry.base.SchemaRegistry`, holding compiled validators.

- ``(subject, version)`` entries never expire: a registered version is immutable. Each holds the
  :class:`RegisteredSchema` and what ``compile`` made of it (by default
  :func:`toolkit.validation.compile_schema`, imported on first use). A hit is one dict read: no I/O, no
  parsing, no lock.
- ``latest`` maps to a version number for ``latest_ttl_s`` seconds.
- *not found* is remembered for ``not_found_ttl_s`` seconds, so a stream of messages naming an unknown
  version does not hammer the registry. *unavailable* is never cached: the next call asks again.
- ``resolve(..., fresh=True)`` (a record waiting out its unknown-schema grace, asking again) does not take a
  remembered miss for an answer: it asks the registry, unless another lookup of the same key got *not
  found* from the registry after this call began (concurrent retries of one key make one request). A miss
  therefore never delays a waiting record's retry, and never stretches its grace.
- Schema ids (:meth:`CachedRegistry.resolve_id`, for Confluent's wire format) are cached like versions: the
  schema and its compiled artefact for good (an id's content never changes), a *not found* for
  ``not_found_ttl_s`` (one miss per unknown id, shared by the records naming it). ``fresh=True`` also asks
  again for the subjects and versions an id is registered as, which can grow: the same schema registered
  later under another subject keeps its id. The compiled artefact is kept when the text is the same.
- Thread-safe: concurrent misses for the same key make one registry request and one compile
  (a per-key lock); misses for different keys do not wait for each other.
- Observers (:meth:`CachedRegistry.add_observer`, for metrics) are told how each lookup went:
  ``observer(result, seconds)`` with result ``hit`` (no I/O; seconds None), ``cached_not_found`` (a
  remembered miss; None), or, after a request to the registry, ``fetched``, ``not_found``, ``unavailable``
  or ``error`` (the registry's answer could not be used, or the schema not compiled) with its duration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, Generic, Literal, TypeVar

from toolkit import _args
from toolkit.errors import ConfigError, RegistryError, RegistryUnavailable, SchemaCannotExist, SchemaNotFound
from toolkit.layout import SchemaFormat
from toolkit.registry.base import CompatibilityResult, RegisteredSchema, SchemaById, SchemaRegistry

T = TypeVar("T")
LATEST: Final = "latest"
MAX_REMEMBERED_MISSES = 10_000
Version = int | Literal["latest"]
_ID = "\0schema-id"  # the subject part of a schema id's key among the remembered misses: no subject is this

LookupObserver = Callable[[str, "float | None"], None]

log = logging.getLogger("toolkit.registry")


def compile_with_validation(schema: RegisteredSchema) -> Any:
    """The default ``compile``: :func:`toolkit.validation.compile_schema`, imported lazily."""
    from toolkit.validation import compile_schema

    return compile_schema(schema)


class CachedRegistry(Generic[T]):
    """Wraps ``registry``; itself a :class:`SchemaRegistry`, plus :meth:`resolve` for the compiled artefact.

    ``clock`` (monotonic seconds) is injectable so TTLs are testable without sleeping.
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        compile: Callable[[RegisteredSchema], T] | None = None,
        *,
        latest_ttl_s: float = 30.0,
        not_found_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _args.cached_registry_options(registry, compile, latest_ttl_s, not_found_ttl_s)
        self.registry = registry
        self._compile: Callable[[RegisteredSchema], T] = compile or compile_with_validation
        self._latest_ttl_s = latest_ttl_s
        self._not_found_ttl_s = not_found_ttl_s
        self._clock = clock
        self._entries: dict[tuple[str, int], tuple[RegisteredSchema, T]] = {}
        self._ids: dict[int, tuple[SchemaById, T]] = {}
        self._latest: dict[str, tuple[float, int]] = {}  # subject -> (expires at, version)
        # -> (expires, message, seq, the exception's class)
        self._missing: dict[tuple[str, Version], tuple[float, str, int, type[SchemaNotFound]]] = {}
        self._misses = 0  # misses remembered so far: a fresh lookup ignores those from before it began
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, Version], threading.Lock] = {}
        self._observers: tuple[LookupObserver, ...] = ()  # replaced whole: read without the lock

    @classmethod
    def from_settings(
        cls, registry: SchemaRegistry, settings: Any, compile: Callable[[RegisteredSchema], T] | None = None
    ) -> CachedRegistry[T]:
        """TTLs from :class:`~toolkit.settings.RegistrySettings`."""
        return cls(registry, compile, latest_ttl_s=settings.latest_ttl_s, not_found_ttl_s=settings.not_found_ttl_s)

    def __repr__(self) -> str:
        return f"CachedRegistry({self.registry!r}, cached={len(self._entries)})"

    def resolve(self, subject: str, version: Version, *, fresh: bool = False) -> tuple[RegisteredSchema, T]:
        """The schema and its compiled artefact; ``version`` is a positive int or ``"latest"``.

        ``fresh``: a remembered *not found* is not an answer; the registry is asked (see the module doc).

        Raises:
            SchemaNotFound: the subject or version does not exist (possibly remembered from a recent miss).
            RegistryUnavailable: the registry cannot answer (after the backend's retries); not cached.
            Exception: whatever ``compile`` raises for a schema it cannot compile; not cached.
        """
        _args.subject_version(subject, version)
        asked_after = self._misses if fresh else None
        if version == LATEST:
            version = self._latest_version(subject, asked_after)
        entry = self._entries.get((subject, version))
        if entry is not None:
            if self._observers:
                self._observe("hit", None)
            return entry
        return self._fill(subject, version, lambda: self.registry.get(subject, version), asked_after)

    @property
    def supports_schema_ids(self) -> bool:
        """Whether the backend can look schemas up by id (:meth:`resolve_id`); no I/O."""
        from toolkit.registry.base import supports_schema_ids

        return supports_schema_ids(self.registry)

    def resolve_id(self, schema_id: int, *, fresh: bool = False) -> tuple[SchemaById, T]:
        """The schema with this id (and the subjects and versions it is registered as) with its compiled
        artefact.

        ``fresh``: ask the registry even when the id is cached or remembered missing (the subjects and
        versions of a known id are asked again; concurrent fresh lookups of one id may each ask).

        Raises:
            SchemaNotFound: no schema has this id (possibly remembered from a recent miss).
            RegistryUnavailable: the registry cannot answer; not cached.
            ConfigError: the backend has no schema ids (the local folder).
            Exception: whatever ``compile`` raises for a schema it cannot compile; not cached.
        """
        _args.integer("schema_id", schema_id, low=0)
        if not fresh and (entry := self._ids.get(schema_id)) is not None:
            return entry
        get_by_id = getattr(self.registry, "get_by_id", None)
        if not callable(get_by_id):
            from toolkit.registry.local import no_schema_ids

            raise ConfigError(no_schema_ids(self.registry), setting="SCHEMA_REGISTRY_URL")
        asked_after = self._misses if fresh else None
        key = (_ID, schema_id)
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with lock:
                if not fresh and (entry := self._ids.get(schema_id)) is not None:
                    return entry  # another thread filled it while we waited
                self._raise_if_missing(key, asked_after)
                try:
                    found = get_by_id(schema_id)
                except SchemaNotFound as exc:
                    if self._not_found_ttl_s > 0:
                        self._remember_missing(key, exc)
                    raise
                known = self._ids.get(schema_id)
                if known is not None and (known[0].format, known[0].text) == (found.format, found.text):
                    entry = (found, known[1])
                else:
                    entry = (found, self._compile_by_id(found))
                self._ids[schema_id] = entry
                return entry
        finally:
            with self._lock:
                if self._key_locks.get(key) is lock and not lock.locked():
                    del self._key_locks[key]

    def _compile_by_id(self, found: SchemaById) -> T:
        return self._compile(self.with_referenced(found.registered()))

    def with_referenced(self, schema: RegisteredSchema, chain: tuple[tuple[str, int], ...] = ()) -> RegisteredSchema:
        """``schema`` with :attr:`~RegisteredSchema.referenced` filled: every schema its ``references`` name,
        transitively, dependencies first, read from the registry (the schema itself when it has none).

        Raises:
            RegistryError: a reference is malformed, names a version the registry does not have, or the
                references form a cycle (the message names the schema, the reference and the fix).
            RegistryUnavailable: the registry cannot answer.
        """
        if not schema.references or schema.referenced:
            return schema
        from toolkit.references import SchemaReference

        here = (schema.subject, schema.version)
        found: list[tuple[str, RegisteredSchema]] = []
        for raw in schema.references:
            ref = SchemaReference.from_registry(raw)
            if ref is None:
                raise RegistryError(
                    f"subject {schema.subject!r} version {schema.version}: reference {raw!r} is not "
                    '{"name", "subject", "version"}; re-register the schema with well-formed references',
                    subject=schema.subject,
                    version=schema.version,
                )
            if (ref.subject, ref.version) in (*chain, here):
                raise RegistryError(
                    f"subject {schema.subject!r} version {schema.version}: its references form a cycle through "
                    f"{ref.subject} version {ref.version}; move the shared types into a subject that references "
                    "none of the others",
                    subject=schema.subject,
                    version=schema.version,
                )
            try:
                held = self.registry.get(ref.subject, ref.version)
            except SchemaNotFound as exc:
                raise RegistryError(
                    f"subject {schema.subject!r} version {schema.version}: its reference {ref.name!r} names "
                    f"{ref.subject} version {ref.version}, which the registry does not have ({exc}); register "
                    "the referenced schema first",
                    subject=schema.subject,
                    version=schema.version,
                ) from None
            held = self.with_referenced(held, (*chain, here))
            for item in (*held.referenced, (ref.name, held)):
                same = next((other for name, other in found if name == item[0]), None)
                if same is None:
                    found.append(item)
                elif (same.subject, same.version) != (item[1].subject, item[1].version):
                    # one name, two schemas: compiling against either would silently be wrong for the other
                    raise RegistryError(
                        f"subject {schema.subject!r} version {schema.version}: its references name {item[0]!r} "
                        f"twice, as {same.subject} version {same.version} and as {item[1].subject} version "
                        f"{item[1].version} (directly or through what they reference); re-register the schemas "
                        "so that one name means one version of one subject",
                        subject=schema.subject,
                        version=schema.version,
                    )
        return replace(schema, referenced=tuple(found))

    # ------------------------------------------------------------------ the protocol

    def get(self, subject: str, version: int) -> RegisteredSchema:
        return self.resolve(subject, version)[0]

    def latest(self, subject: str) -> RegisteredSchema:
        return self.resolve(subject, LATEST)[0]

    def subjects(self) -> list[str]:
        return self.registry.subjects()

    def versions(self, subject: str) -> list[int]:
        return self.registry.versions(subject)

    def register(
        self, subject: str, text: str, schema_format: SchemaFormat, *, references: Sequence[Mapping[str, Any]] = ()
    ) -> RegisteredSchema:
        """Registers through the backend, then forgets ``subject``'s latest and remembered misses (and the
        remembered unknown schema ids: the registration may have made one)."""
        extra = {"references": references} if references else {}
        try:
            return self.registry.register(subject, text, schema_format, **extra)
        finally:
            self.invalidate(subject)

    def check_compatibility(
        self,
        subject: str,
        text: str,
        schema_format: SchemaFormat,
        version: int | str = "latest",
        *,
        references: Sequence[Mapping[str, Any]] = (),
    ) -> CompatibilityResult:
        extra = {"references": references} if references else {}
        return self.registry.check_compatibility(subject, text, schema_format, version, **extra)

    def close(self) -> None:
        self.registry.close()

    def add_observer(self, observer: LookupObserver) -> None:
        """Call ``observer(result, seconds)`` after each lookup (see the module's documentation); it runs on
        the looking-up thread and must be quick."""
        with self._lock:
            self._observers = (*self._observers, observer)

    def remove_observer(self, observer: LookupObserver) -> None:
        with self._lock:
            self._observers = tuple(o for o in self._observers if o is not observer)

    def _observe(self, result: str, seconds: float | None) -> None:
        for observer in self._observers:
            try:
                observer(result, seconds)
            except Exception:  # noqa: BLE001 - metrics must not fail a lookup
                log.exception("registry lookup observer failed")

    def invalidate(self, subject: str | None = None) -> None:
        """Forget ``latest`` and remembered misses (of ``subject`` and of schema ids, or all); versions and
        ids found stay (immutable)."""
        with self._lock:
            if subject is None:
                self._latest.clear()
                self._missing.clear()
                return
            self._latest.pop(subject, None)
            for key in [key for key in self._missing if key[0] in (subject, _ID)]:
                del self._missing[key]

    # ------------------------------------------------------------------ internals

    def _latest_version(self, subject: str, asked_after: int | None = None) -> int:
        cached = self._latest.get(subject)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        schema, _ = self._fill(subject, LATEST, lambda: self.registry.latest(subject), asked_after)
        return schema.version

    def _fill(
        self, subject: str, version: Version, fetch: Callable[[], RegisteredSchema], asked_after: int | None = None
    ) -> tuple[RegisteredSchema, T]:
        key = (subject, version)
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with lock:
                return self._fill_locked(subject, version, key, fetch, asked_after)
        finally:
            # Dropped so unknown keys do not pile up; a thread still holding the old lock at worst makes
            # one redundant request.
            with self._lock:
                if self._key_locks.get(key) is lock and not lock.locked():
                    del self._key_locks[key]

    def _fill_locked(
        self,
        subject: str,
        version: Version,
        key: tuple[str, Version],
        fetch: Callable[[], RegisteredSchema],
        asked_after: int | None,
    ) -> tuple[RegisteredSchema, T]:
        observed = bool(self._observers)
        if version != LATEST and (entry := self._entries.get(key)) is not None:  # type: ignore[arg-type]
            if observed:
                self._observe("hit", None)
            return entry  # another thread filled it while we waited
        if version == LATEST and (cached := self._latest.get(subject)) and cached[0] > self._clock():
            if observed:
                self._observe("hit", None)
            return self._entries[(subject, cached[1])]
        try:
            self._raise_if_missing(key, asked_after)
        except SchemaNotFound:
            if observed:
                self._observe("cached_not_found", None)
            raise
        started = time.monotonic()
        result = "error"
        try:
            try:
                schema = fetch()
            except SchemaNotFound as exc:
                result = "not_found"
                if self._not_found_ttl_s > 0:
                    self._remember_missing(key, exc)
                raise
            except RegistryUnavailable:
                result = "unavailable"
                raise
            entry = self._entries.get((subject, schema.version))
            if entry is None:
                schema = self.with_referenced(schema)
                entry = (schema, self._compile(schema))
                self._entries[(subject, schema.version)] = entry
            result = "fetched"
        finally:
            if observed:
                self._observe(result, time.monotonic() - started)
        if version == LATEST:
            with self._lock:
                self._latest[subject] = (self._clock() + self._latest_ttl_s, schema.version)
        return entry

    def _remember_missing(self, key: tuple[str, Version], exc: SchemaNotFound) -> None:
        # Its class too: a name that cannot exist stays one (no unknown-schema grace for it from the cache).
        cls = SchemaCannotExist if isinstance(exc, SchemaCannotExist) else SchemaNotFound
        now = self._clock()
        with self._lock:
            if len(self._missing) >= MAX_REMEMBERED_MISSES:  # many distinct unknown keys: drop the expired
                for stale in [k for k, missing in self._missing.items() if missing[0] <= now]:
                    del self._missing[stale]
            self._misses += 1
            self._missing[key] = (now + self._not_found_ttl_s, str(exc), self._misses, cls)

    def _raise_if_missing(self, key: tuple[str, Version], asked_after: int | None = None) -> None:
        missing = self._missing.get(key)
        if missing is None:
            return
        expires_at, message, seq, cls = missing
        if asked_after is not None and seq <= asked_after:
            return  # a fresh lookup: an answer from before this call began does not count
        if expires_at > self._clock():
            # A fresh exception each time: one instance raised in many threads would share a traceback.
            raise cls(message, subject=key[0], version=key[1])
        with self._lock:
            self._missing.pop(key, None)
