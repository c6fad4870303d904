"""One subject strategy: the consumer's and producer's strategies (toolkit.registry.base) also name the subjects
``epistle register``/``verify`` write and the ones the local folder answers to."""

from __future__ import annotations

import typing

import pytest

from tests.unit.test_registry_local import write_schemas
from toolkit.errors import ConfigError, InvalidArgument
from toolkit.layout import load_schemas
from toolkit.registry import LocalFolderRegistry, SubjectContext
from toolkit.registry.base import SUBJECT_STRATEGIES, registry_subjects, subject_strategy_named
from toolkit.registry.factory import subject_strategy_from_settings
from toolkit.settings import RegistrySettings


@pytest.fixture
def schemas(tmp_path):
    root = write_schemas(tmp_path / "schemas")
    (root / "orders" / "subject.toml").write_text('topics = ["orders", "orders-eu"]\n')
    return root


@pytest.mark.parametrize("name", list(SUBJECT_STRATEGIES))
def test_register_writes_the_subjects_the_consumer_asks_for(schemas, name: str) -> None:
    orders = load_schemas(schemas)["orders"]
    strategy = subject_strategy_named(name)
    asked = {strategy(SubjectContext(topic, "orders", "OrderPlaced")) for topic in ("orders", "orders-eu")}
    assert set(registry_subjects(orders, name)) == asked
    local = LocalFolderRegistry(schemas)
    for subject in asked:  # the local folder answers to each, with the folder's versions
        assert local.versions(subject) == [1, 2]


def test_a_topic_strategy_needs_topics_and_an_unknown_name_is_refused(schemas) -> None:
    shipments = load_schemas(schemas)["shipments"]  # lists no topics
    assert registry_subjects(shipments, "schema_name") == ["shipments"]
    with pytest.raises(ConfigError, match="topics"):
        registry_subjects(shipments, "topic_value")
    with pytest.raises(InvalidArgument, match="schema_name, topic_value") as raised:
        registry_subjects(shipments, "topic")  # was taken for topic_value
    assert raised.value.argument == "strategy"


def test_the_setting_offers_exactly_the_built_in_strategies() -> None:
    names = typing.get_args(RegistrySettings.model_fields["subject_strategy"].annotation)
    assert set(names) == set(SUBJECT_STRATEGIES)
    for name in names:
        assert subject_strategy_from_settings(RegistrySettings(subject_strategy=name)) is SUBJECT_STRATEGIES[name]
