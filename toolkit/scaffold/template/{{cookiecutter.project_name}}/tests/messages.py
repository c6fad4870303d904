"""Build what the toolkit hands a handler, for unit tests."""

from __future__ import annotations

from typing import Any

from toolkit.consumer import Message
from toolkit.envelope import Header, header_fields


def make_header(schema_name: str, version: int = 1, message_id: str | None = None) -> Header:
    fields = header_fields(schema_name, version, message_type=schema_name, message_id=message_id,
                           producer="{{ cookiecutter.project_name }}-tests")
    return Header.model_validate(fields)


def make_message(topic: str, schema_name: str, body: Any, version: int = 1, offset: int = 0) -> Message:
    """A message as the consumer delivers it: ``body`` is the generated model instance."""
    return Message(header=make_header(schema_name, version), body=body, topic=topic, partition=0,
                   offset=offset, key=None)

