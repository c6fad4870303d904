"""Every error the toolkit raises derives from :class:`EpistleError`.

    EpistleError
    ├── InvalidArgument             a public function got a value it cannot use (also a ValueError)
    │   └── InvalidArgumentType     ... a value of the wrong type (also a TypeError)
    ├── ConfigError                 bad setting, option or config file: names it, the field and the fix
    │   └── BrokerAuthenticationFailed  the broker refused the credentials or the TLS handshake at start-up
    ├── SchemaFileError             a schema file or the schemas/ layout is wrong (file, field, fix)
    │   ├── UnsupportedSchema       a valid schema using a construct the toolkit cannot generate a model for
    │   └── CodegenError            model generation failed for a schema file
    │       └── CodegenFailures     several files failed in one codegen run (``errors`` lists them)
    ├── RegistryError               talking to a schema registry
    │   ├── SchemaNotFound          the registry answers that the subject or version does not exist
    │   │   └── SchemaCannotExist   ... and never can: a subject name the registry cannot hold (no grace)
    │   ├── SchemaNotYetKnown       not found, within the grace period: the partition waits and asks again
    │   ├── RegistryUnavailable     connection refused, timeout, 5xx: transient, retried, never dead-lettered
    │   └── RegistryRejected        the registry refused a schema (incompatible, invalid)
    ├── MessageError                the record itself is at fault: dead-lettered at once with its stage
    ├── RetryableError              raised by a handler: "not now", retried with backoff, then dead-lettered
    │   └── HandlerTimedOut         a handler attempt ran past EPISTLE_HANDLER_TIMEOUT_S: retried the same way
    ├── BrokerUnavailable           the Kafka cluster cannot be reached: pause and retry
    │   └── BrokerUnreachable       no broker answered at start-up within KAFKA_STARTUP_TIMEOUT_S
    ├── BrokerAccessDenied          the principal lacks an ACL it needs (READ on a topic, WRITE on its dead-letter
    │                               topic): found at start-up, nothing consumed or committed
    ├── ConsumerStopped             the consumer stopped on a failure (ErrorPolicy.STOP, fatal client error)
    ├── PublishRefused              (toolkit.producer) a model fails its schema or is not generated: nothing sent
    ├── DeliveryFailed              (toolkit.producer) the broker did not acknowledge a published record
    ├── ReplayRefused               `epistle dlq replay`: a record it must not replay (not a dead letter, or
    │                               one whose destination is a dead-letter topic); nothing after it was sent
    └── ScaffoldError               `epistle new`: invalid answers, the target exists, generating failed

Errors carry their context as attributes (file, subject, version, stage, ...) so callers and logs need
not parse messages. Secrets never appear in any message.

Where a public function used to raise a built-in error on bad input (``ValueError``, ``TypeError``), it now
raises a toolkit error that is also an instance of that built-in (:class:`InvalidArgument` is a
``ValueError``, :class:`InvalidArgumentType` also a ``TypeError``), so existing ``except ValueError``
clauses keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def safe_str(value: Any, convert: Callable[[Any], str] = str) -> str:
    """``str(value)`` (or ``repr`` with ``convert=repr``), whatever the object's ``__str__`` does: when it
    raises, a placeholder naming the class, e.g. ``<StrFails str() failed>``. Used wherever an exception or
    a value from user code is put into text, so a broken ``__str__`` never stops the consumer."""
    try:
        return convert(value)
    except Exception:  # noqa: BLE001 - any failure of user code becomes the placeholder
        try:
            name = type(value).__name__
        except Exception:  # noqa: BLE001
            name = "object"
        return f"<{name} {getattr(convert, '__name__', 'str')}() failed>"


def json_error_text(exc: Any) -> str:
    """Where and why JSON did not parse, from a ``json.JSONDecodeError``: "Unterminated string starting at
    line 1 column 6" (its ``msg`` may end with "at" already, so "at line" is not simply appended)."""
    return f"{exc.msg.removesuffix(' at')} at line {exc.lineno} column {exc.colno}"


def quoted(name: str, limit: int = 80) -> str:
    """``repr(name)`` for a message, a long name (it comes from a record) cut at ``limit`` characters."""
    return repr(name) if len(name) <= limit else f"{name[:limit]!r}... ({len(name)} characters)"


class EpistleError(Exception):
    """Root of the toolkit's exceptions."""


class InvalidArgument(EpistleError, ValueError):
    """A public function got an argument it cannot use; ``argument`` names it and the message says the fix."""

    def __init__(self, message: str, *, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


class InvalidArgumentType(InvalidArgument, TypeError):
    """A public function got an argument of the wrong type (also a ``TypeError``)."""


class ConfigError(EpistleError):
    """A setting, an option or a config file is invalid. The message names the setting (or option, or file
    and field) and the fix."""

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

    def __reduce__(self) -> tuple:
        # Picklable with its attributes (codegen sends errors back from worker processes).
        return _rebuild_schema_error, (type(self), str(self.path), self.problem, self.field, self.fix)


def _rebuild_schema_error(
    cls: type[SchemaFileError], path: str, problem: str, field: str | None, fix: str | None
) -> SchemaFileError:
    return cls(path, problem, field=field, fix=fix)


class UnsupportedSchema(SchemaFileError):
    """A valid schema that uses a construct the toolkit cannot turn into a usable model; ``field`` is the
    JSON path of the construct and ``fix`` says what to write instead. ``epistle check`` reports it."""


class CodegenError(SchemaFileError):
    """Generating a model from a schema file failed."""


class CodegenFailures(CodegenError):
    """Several schema files failed in one codegen run; ``errors`` holds each one (file, field, fix), and the
    message lists them one per line."""

    def __init__(self, schemas_dir: Path | str, errors: list[SchemaFileError]) -> None:
        self.errors = list(errors)
        lines = "".join(f"\n  - {error}" for error in self.errors)
        super().__init__(
            schemas_dir,
            f"{len(self.errors)} schema files cannot be generated:{lines}",
            fix="correct each file as its line says; `epistle check` reports the same problems",
        )

    def __reduce__(self) -> tuple:
        return type(self), (str(self.path), self.errors)


class RegistryError(EpistleError):
    """Base for schema-registry failures."""

    def __init__(self, message: str, *, subject: str | None = None, version: int | str | None = None) -> None:
        super().__init__(message)
        self.subject = subject
        self.version = version


class SchemaNotFound(RegistryError):
    """The subject or the version does not exist in the registry (permanent)."""


class SchemaCannotExist(SchemaNotFound):
    """Not found, and it never can be: the subject's name is not one the registry can hold (the local
    ``schemas/`` folder holds only names of letters, digits, ``.``, ``_`` and ``-``; an HTTP registry refuses
    the name in a lookup it answers otherwise). A record naming it is dead-lettered at stage ``schema`` at
    once: no unknown-schema grace, no re-read of the folder."""


class SchemaNotYetKnown(RegistryError):
    """The registry does not know the subject or version, but the record's grace period is not over: the
    registry may have been restarted empty and be repopulated, a replica may lag, or a producer may use a
    version a moment before it is registered. Transient: the partition waits ``retry_in_s`` and asks again;
    after the grace the record is dead-lettered at stage ``schema``. ``unknown_for_s`` is how long the
    registry has not known it, ``grace_s`` the grace (``EPISTLE_UNKNOWN_SCHEMA_GRACE_S``)."""

    def __init__(
        self, message: str, *, unknown_for_s: float, grace_s: float, retry_in_s: float, **context: Any
    ) -> None:
        super().__init__(message, **context)
        self.unknown_for_s = unknown_for_s
        self.grace_s = grace_s
        self.retry_in_s = retry_in_s


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached, answered with a server error after all retries (transient), or answered
    in a way that says the client is misconfigured. ``status`` is the HTTP status of the last answer, None when
    there was none."""

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


class HandlerTimedOut(RetryableError):
    """A handler attempt ran past ``handler_timeout_s`` (``EPISTLE_HANDLER_TIMEOUT_S``): retried like a
    :class:`RetryableError`, dead-lettered at stage ``retries_exhausted`` after the last attempt.
    ``timeout_s`` is the limit it ran past; ``still_running``: a plain-function handler's thread still runs
    (Python cannot stop a thread; an ``async def`` handler is cancelled)."""

    def __init__(self, timeout_s: float, *, still_running: bool = False) -> None:
        super().__init__(
            f"the handler did not finish within {timeout_s:g} s, its time limit (handler_timeout_s)"
            + ("; it goes on in its thread, its result ignored" if still_running else "; it was cancelled")
        )
        self.timeout_s = timeout_s
        self.still_running = still_running

    def __reduce__(self) -> tuple[Any, ...]:  # (pickled and copied with its arguments, not its message)
        return (_handler_timed_out, (self.timeout_s, self.still_running))


class BrokerUnavailable(EpistleError):
    """The Kafka cluster cannot be reached; processing pauses and retries, nothing is dead-lettered."""


class BrokerUnreachable(BrokerUnavailable):
    """No broker answered within the start-up timeout (``setting`` names it): the consumer did not start.
    ``bootstrap_servers`` and ``timeout_s`` say where it asked and for how long."""

    def __init__(
        self, message: str, *, bootstrap_servers: str, timeout_s: float, setting: str = "KAFKA_STARTUP_TIMEOUT_S"
    ) -> None:
        super().__init__(message)
        self.bootstrap_servers, self.timeout_s, self.setting = bootstrap_servers, timeout_s, setting


class BrokerAuthenticationFailed(ConfigError):
    """The Kafka broker refused the client's credentials (SASL) or the TLS handshake failed: ``setting``
    names what to check (``KAFKA_SASL_PASSWORD``, ``KAFKA_SSL_CA_LOCATION`` ...). The message quotes
    librdkafka's reason; it never holds a secret."""


class BrokerAccessDenied(EpistleError):
    """The client's principal lacks an ACL the consumer needs: ``missing`` lists ``(topic, operation)`` pairs
    (``READ`` on a topic it consumes, ``WRITE`` on that topic's dead-letter topic); ``principal`` is the
    SASL user (None without SASL). Raised by the start-up check: nothing was consumed or committed."""

    def __init__(self, message: str, *, missing: list[tuple[str, str]], principal: str | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.principal = principal


class ConsumerStopped(EpistleError):
    """The consumer stopped on a failure: ErrorPolicy.STOP met a message it would dead-letter, or the
    Kafka client hit a fatal error. ``stage``/``topic``/``partition``/``offset`` say where."""

    def __init__(
        self,
        message: str,
        *,
        stage: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.stage, self.topic, self.partition, self.offset = stage, topic, partition, offset


class ReplayRefused(EpistleError):
    """``epistle dlq replay`` stopped at a record it must not replay: not one of our dead letters (unless
    ``--skip-invalid``), or one whose destination would be a dead-letter topic or does not exist. ``where``
    is the record's ``topic:partition:offset``; what came before it was replayed and recorded."""

    def __init__(self, message: str, *, where: str) -> None:
        super().__init__(message)
        self.where = where


class ScaffoldError(EpistleError):
    """``epistle new``: the answers are invalid, the target exists, or generating failed. ``problems`` holds
    each invalid answer (field, value, problem, fix: ``toolkit.scaffold.rules.Problem``); ``field`` is the
    first one's field. Re-exported as ``toolkit.scaffold.ScaffoldError``."""

    def __init__(self, message: str, *, field: str | None = None, problems: list[Any] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.field = field or (self.problems[0].field if self.problems else None)


def _handler_timed_out(timeout_s: float, still_running: bool) -> HandlerTimedOut:
    return HandlerTimedOut(timeout_s, still_running=still_running)
