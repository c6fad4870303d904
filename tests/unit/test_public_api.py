"""`toolkit.__all__` is exactly the public API users import (BaseHandler, ErrorPolicy ... among them)."""

from __future__ import annotations

import subprocess
import sys

import toolkit


def test_all_names_resolve_and_nothing_else_is_public() -> None:
    for name in toolkit.__all__:
        assert getattr(toolkit, name) is not None, name
    public = {name for name in dir(toolkit) if not name.startswith("_")} - {"errors", "settings"}
    # Submodules appear as attributes once imported; they are reached as toolkit.<module>, not re-exported.
    public -= {
        "consumer",
        "registry",
        "layout",
        "validation",
        "codegen",
        "envelope",
        "compat",
        "cli",
        "scaffold",
        "formats",
        "producer",
        "producer_amqp",
        "testing",
        "wire",
        "references",
        "backoff",
        "observability",
        "dlq",
        "import_module",
        "Any",
    }
    assert public == set(toolkit.__all__)
    assert toolkit.__all__ == sorted(toolkit.__all__)


def test_the_seed_api_is_importable_from_the_package_root() -> None:
    import toolkit.consumer
    from toolkit import BaseHandler, ErrorPolicy, KafkaConsumer, Message

    assert KafkaConsumer is toolkit.consumer.KafkaConsumer
    assert BaseHandler is toolkit.consumer.BaseHandler
    assert ErrorPolicy is toolkit.consumer.ErrorPolicy
    assert Message is toolkit.consumer.Message


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        toolkit.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_does_not_load_the_kafka_client() -> None:
    code = "import sys, toolkit; print('confluent_kafka' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
