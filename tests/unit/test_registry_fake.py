"""An in-memory registry implementing the :class:`SchemaRegistry` protocol (not a subclass of a real client).

It behaves like Confluent's registry where the toolkit depends on it: versions numbered max + 1, a schema
identical to an existing version registers nothing and answers that version, and an incompatible schema is
refused with reasons. ``incompatible`` decides what is incompatible; ``calls`` counts every call. Each
registration gets its own schema id (Confluent shares one id between identical schemas of several subjects:
``share_id`` registers a schema under another subject with an existing id, for those tests).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from toolkit.errors import RegistryRejected, RegistryUnavailable, SchemaNotFound
from toolkit.layout import SchemaFormat
from toolkit.registry import CompatibilityResult, RegisteredSchema, SchemaRegistry, same_schema
from toolkit.registry.base import SchemaById


class InMemoryRegistry:
    def __init__(self, incompatible: Callable[[str, str], str | None] = lambda old, new: None) -> None:
        self.store: dict[str, list[RegisteredSchema]] = {}
        self.incompatible = incompatible  # (old text, new text) -> a reason, or None when compatible
        self.calls: Counter[str] = Counter()
        self.down = False
        self._next_id = 1

    def _count(self, name: str) -> None:
        self.calls[name] += 1
        if self.down:
            raise RegistryUnavailable("in-memory registry is down", attempts=1)

    def _versions_of(self, subject: str) -> list[RegisteredSchema]:
        if subject not in self.store:
            raise SchemaNotFound(f"subject {subject!r} not found", subject=subject)
        return self.store[subject]

    def get(self, subject: str, version: int) -> RegisteredSchema:
        self._count("get")
        for schema in self._versions_of(subject):
            if schema.version == version:
                return schema
        raise SchemaNotFound(f"subject {subject!r} has no version {version}",
                             subject=subject, version=version)

    def latest(self, subject: str) -> RegisteredSchema:
        self._count("latest")
        return self._versions_of(subject)[-1]

    supports_schema_ids = True

    def get_by_id(self, schema_id: int) -> SchemaById:
        self._count("get_by_id")
        found = [schema for versions in self.store.values() for schema in versions if schema.schema_id == schema_id]
        if not found:
            raise SchemaNotFound(f"schema id {schema_id} not found")
        return SchemaById(schema_id, found[0].format, found[0].text,
                          tuple((schema.subject, schema.version) for schema in found))

    def share_id(self, subject: str, schema_id: int) -> RegisteredSchema:
        """Register the schema of ``schema_id`` under ``subject`` too, keeping its id (as Confluent does)."""
        original = self.get_by_id(schema_id)
        existing = self.store.setdefault(subject, [])
        schema = RegisteredSchema(subject, len(existing) + 1, original.format, original.text, schema_id=schema_id)
        existing.append(schema)
        return schema

    def subjects(self) -> list[str]:
        self._count("subjects")
        return list(self.store)

    def versions(self, subject: str) -> list[int]:
        self._count("versions")
        return [schema.version for schema in self._versions_of(subject)]

    def register(self, subject: str, text: str, schema_format: SchemaFormat) -> RegisteredSchema:
        self._count("register")
        existing = self.store.setdefault(subject, [])
        for schema in existing:
            if same_schema(schema.text, text):
                return schema
        if existing and (reason := self.incompatible(existing[-1].text, text)):
            raise RegistryRejected(f"incompatible: {reason}", reasons=[reason], subject=subject)
        schema = RegisteredSchema(subject, len(existing) + 1, schema_format, text, schema_id=self._next_id)
        self._next_id += 1
        existing.append(schema)
        return schema

    def check_compatibility(self, subject: str, text: str, schema_format: SchemaFormat,
                            version: int | str = "latest") -> CompatibilityResult:
        self._count("check_compatibility")
        if not self.store.get(subject):
            return CompatibilityResult(True)
        against = self.latest(subject) if version == "latest" else self.get(subject, int(version))
        reason = self.incompatible(against.text, text)
        return CompatibilityResult(reason is None, (reason,) if reason else ())

    def close(self) -> None:
        pass


def test_the_fake_implements_the_protocol():
    assert isinstance(InMemoryRegistry(), SchemaRegistry)


def test_the_fake_numbers_versions_and_deduplicates_like_confluent():
    registry = InMemoryRegistry()
    first = registry.register("s", '{"type": "string"}', SchemaFormat.AVRO)
    second = registry.register("s", '{"type": "long"}', SchemaFormat.AVRO)
    again = registry.register("s", '{"type":"string"}', SchemaFormat.AVRO)
    assert (first.version, second.version, again.version) == (1, 2, 1)
    assert registry.versions("s") == [1, 2]
    with pytest.raises(SchemaNotFound):
        registry.get("s", 3)
