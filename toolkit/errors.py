"""Every error the toolkit raises derives from :class:`EpistleError`.

    EpistleError
    ├── ConfigError                 bad setting or config file: names the setting/file, the field and the fix
    ├── SchemaFileError             a schema file or the schemas/ layout is wrong (file, field, fix)
    │   └── CodegenError            model generation failed for a schema file
    ├── RegistryError               talking to a schema registry
    │   ├── SchemaNotFound          subject or version does not exist: permanent, the message is at fault
    │   ├── RegistryUnavailable     connection refused, timeout, 5xx: transient, retried, never dead-lettered
    │   └── RegistryRejected        the registry refused a schema (incompatible, invalid)
    ├── MessageError                the record itself is at fault: dead-lettered at once with its stage
    ├── RetryableError              raised by a handler: "not now", retried with backoff, then dead-lettered
    ├── BrokerUnavailable           the Kafka cluster cannot be reached: pause and retry
    │   └── BrokerUnreachable       no broker answered at start-up within KAFKA_STARTUP_TIMEOUT_S
    └── ConsumerStopped             the consumer stopped on a failure (ErrorPolicy.STOP, fatal client error)

Errors carry their context as attributes (file, subject, version, stage, ...) so callers and logs need
not parse messages. Secrets never appear in any message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class EpistleError(Exception):
    """Root of the toolkit's exceptions."""


class ConfigError(EpistleError):
    """A setting or a config file is invalid. The message names the setting (or file and field) and the fix."""

    def __init__(self, message: str, *, setting: str | None = None, path: Path | None = None) -> None:
        super().__init__(message)
        self.setting = setting
        self.path = path


class SchemaFileError(EpistleError):
    """A schema file, a subject config or the folder layout is invalid."""

    def __init__(self, path: Path | str, problem: str, *, field: str | None = None, fix: str | None = None):
        self.path = Path(path)
        self.problem = problem
        self.field = field
        self.fix = fix
        where = f"{self.path}" + (f" [{field}]" if field else "")
        super().__init__(f"{where}: {problem}" + (f" -- fix: {fix}" if fix else ""))


class CodegenError(SchemaFileError):
    """Generating a model from a schema file failed."""


class RegistryError(EpistleError):
    """Base for schema-registry failures."""

    def __init__(self, message: str, *, subject: str | None = None, version: int | str | None = None) -> None:
        super().__init__(message)
        self.subject = subject
        self.version = version


class SchemaNotFound(RegistryError):
    """The subject or the version does not exist in the registry (permanent)."""


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached or answered with a server error after all retries (transient).
    ``status`` is the HTTP status of the last answer (a 5xx or 429), None when there was no answer."""

    def __init__(self, message: str, *, attempts: int = 1, status: int | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.attempts = attempts
        self.status = status


class RegistryRejected(RegistryError):
    """The registry refused a schema; ``reasons`` holds the registry's own messages."""

    def __init__(self, message: str, *, reasons: list[str] | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.reasons = reasons or []


class MessageError(EpistleError):
    """The record is at fault. ``stage`` is the pipeline stage that rejected it (a stable reason code)."""

    def __init__(self, stage: str, reason: str, *, details: Any = None) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.details = details


class RetryableError(EpistleError):
    """Raise from a handler to ask for a retry with backoff (dead-lettered after the last attempt)."""


class BrokerUnavailable(EpistleError):
    """The Kafka cluster cannot be reached; processing pauses and retries, nothing is dead-lettered."""


class BrokerUnreachable(BrokerUnavailable):
    """No broker answered within the start-up timeout (``setting`` names it): the consumer did not start.
    ``bootstrap_servers`` and ``timeout_s`` say where it asked and for how long."""

    def __init__(self, message: str, *, bootstrap_servers: str, timeout_s: float,
                 setting: str = "KAFKA_STARTUP_TIMEOUT_S") -> None:
        super().__init__(message)
        self.bootstrap_servers, self.timeout_s, self.setting = bootstrap_servers, timeout_s, setting


class ConsumerStopped(EpistleError):
    """The consumer stopped on a failure: ErrorPolicy.STOP met a message it would dead-letter, or the
    Kafka client hit a fatal error. ``stage``/``topic``/``partition``/``offset`` say where."""

    def __init__(self, message: str, *, stage: str | None = None, topic: str | None = None,
                 partition: int | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.stage, self.topic, self.partition, self.offset = stage, topic, partition, offset
