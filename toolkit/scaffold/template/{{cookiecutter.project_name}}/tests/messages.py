"""Build what the toolkit hands a handler, for unit tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from toolkit.consumer import Message
from toolkit.envelope import Header


def make_header(schema_name: str, version: int = 1, message_id: str | None = None) -> Header:
    return Header(message_type=schema_name, schema_name=schema_name, schema_version=str(version),
                  correlation_id=str(uuid.uuid4()), message_id=message_id or str(uuid.uuid4()),
                  timestamp=datetime.now(UTC).isoformat(), producer="{{ cookiecutter.project_name }}-tests")


def make_message(topic: str, schema_name: str, body: Any, version: int = 1, offset: int = 0) -> Message:
    """A message as the consumer delivers it: ``body`` is the generated model instance."""
    return Message(header=make_header(schema_name, version), body=body, topic=topic, partition=0,
                   offset=offset, key=None)

