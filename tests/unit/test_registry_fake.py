"""toolkit.testing.InMemoryRegistry, the in-memory registry implementing the :class:`SchemaRegistry` protocol
(not a subclass of a real client): it behaves like Confluent's registry where the toolkit depends on it."""

from __future__ import annotations

import pytest

from toolkit.errors import SchemaNotFound
from toolkit.layout import SchemaFormat
from toolkit.registry import SchemaRegistry
from toolkit.testing import InMemoryRegistry


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
