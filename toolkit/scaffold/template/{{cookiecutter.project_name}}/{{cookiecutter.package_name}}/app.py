"""The entry point: build the dependencies once, give them to the handlers, register a handler per topic.

``python -m {{ cookiecutter.package_name }}`` (``make run``) runs :func:`build_consumer` until SIGTERM/SIGINT;
``epistle run --app {{ cookiecutter.package_name }}.app:register`` does the same through the toolkit's runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolkit import Settings, load_settings
from toolkit.consumer import KafkaConsumer

from {{ cookiecutter.package_name }}.handlers import {% for t in cookiecutter.topics | topic_plans %}{{ t.handler_class }}{% if not loop.last %}, {% endif %}{% endfor %}
from {{ cookiecutter.package_name }}.services import EventStore, InMemoryStore

TOPICS = ({% for t in cookiecutter.topics | topic_plans %}"{{ t.topic }}"{% if not loop.last %}, {% elif loop.length == 1 %},{% endif %}{% endfor %})


@dataclass
class Dependencies:
    """What lives as long as the app; the handlers get them through their constructors."""

    store: EventStore = field(default_factory=InMemoryStore)


def build_dependencies(settings: Settings) -> Dependencies:
    """Create the app's dependencies (connect your database here, from ``settings`` or your own)."""
    return Dependencies()


def register(consumer: KafkaConsumer, settings: Settings, dependencies: Dependencies | None = None) -> None:
    """Register one handler per topic, each given its dependencies through its constructor.

    ``epistle run --app {{ cookiecutter.package_name }}.app:register`` calls this with a consumer built from the settings.
    """
    deps = dependencies or build_dependencies(settings)
{%- for t in cookiecutter.topics | topic_plans %}
    consumer.register_handler("{{ t.topic }}", {{ t.handler_class }}(deps.store))
{%- endfor %}


def build_consumer(settings: Settings | None = None, dependencies: Dependencies | None = None,
                   **consumer_options: Any) -> KafkaConsumer:
    """The consumer with every handler registered.

    ``settings`` default to :func:`toolkit.load_settings` (the environment and ``.env``); tests pass their
    own ``dependencies`` (fakes) and ``consumer_options`` (e.g. ``stop_when_idle=True``).

    Raises:
        toolkit.ConfigError: a setting is invalid (the message names the variable and the fix).
    """
    settings = settings or load_settings()
    consumer = KafkaConsumer.from_settings(settings, **consumer_options)
    register(consumer, settings, dependencies)
    return consumer
