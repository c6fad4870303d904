"""What happens to a message after an attempt: the outcomes table of docs/contracts.md as one pure function.

| what happened                                   | outcome                                             |
|-------------------------------------------------|-----------------------------------------------------|
| handler returned True or None                   | :class:`Done`                                       |
| handler returned False / raised RetryableError  | :class:`RetryAfter` with exponential backoff (or    |
| (or :class:`~toolkit.consumer.handlers.Retry`)  | the delay ``Retry`` gives); after ``max_attempts``: |
|                                                 | :class:`ToDeadLetter` (``"retries_exhausted"``)     |
| handler raised :class:`~toolkit.consumer.       | :class:`ToDeadLetter` at once, stage ``"handler"``, |
| handlers.DeadLetter`                            | its reason; no retry                                |
| handler raised any other exception              | :class:`ToDeadLetter` (stage ``"handler"``)         |
| MessageError (decode ... routing)               | :class:`ToDeadLetter` at once with the error's stage|
| RegistryUnavailable / BrokerUnavailable         | :class:`Pause`: retry after a backoff, forever;     |
|                                                 | never dead-lettered, never committed past           |
| SchemaNotYetKnown (unknown, within the grace)   | :class:`Pause`, the wait capped at the error's      |
|                                                 | ``retry_in_s``; after the grace the pipeline raises |
|                                                 | MessageError("schema"): dead letter                 |

With :attr:`ErrorPolicy.STOP` every would-be dead letter becomes :class:`Stop` instead.

The outcome classes are what middleware sees (:mod:`toolkit.consumer.middleware`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from toolkit import _args
from toolkit.backoff import exponential_delay
from toolkit.consumer.handlers import DeadLetter, Retry
from toolkit.errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidArgument,
    MessageError,
    RegistryUnavailable,
    RetryableError,
    SchemaNotYetKnown,
    safe_str,
)

RETRIES_EXHAUSTED = "retries_exhausted"
HANDLER = "handler"


class ErrorPolicy(StrEnum):
    """What a message that cannot be processed does to the consumer."""

    DEAD_LETTER = "DEAD_LETTER"
    """Send it to the dead-letter topic and continue (the default; also spelled ``CONTINUE``)."""
    STOP = "STOP"
    """Stop the consumer at the first such message, committing nothing past it (strict pipelines)."""

    CONTINUE = DEAD_LETTER  # the name the first releases' README used for the default

    _missing_ = classmethod(_args.not_a_member)  # InvalidArgument (a ValueError) listing the members


def _refused(check: Any, *args: Any, **kwargs: Any) -> bool:
    """True when the public-argument check ``check`` (from :mod:`toolkit._args`) refuses the value."""
    try:
        check(*args, **kwargs)
    except InvalidArgument:
        return True
    return False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and exponential backoff: ``initial_s * 2**(attempt-1)``, capped at ``max_s``."""

    max_attempts: int = 3
    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        problems = {
            "max_attempts": _refused(_args.integer, "max_attempts", self.max_attempts, low=1),
            "initial_s": _refused(_args.number, "initial_s", self.initial_s, low=0),
            "max_s": _refused(_args.number, "max_s", self.max_s, positive=True),
            "multiplier": _refused(_args.number, "multiplier", self.multiplier, low=1),
        }
        fixes = {
            "max_attempts": "an integer of at least 1",
            "initial_s": "seconds, at least 0",
            "max_s": "seconds, above 0",
            "multiplier": "a number of at least 1",
        }
        for name, bad in problems.items():
            if bad:
                raise ConfigError(
                    f"RetryPolicy {name}={getattr(self, name)!r}"[:120] + f": use {fixes[name]}",
                    setting=f"retry.{name}",
                )

    def delay(self, attempt: int) -> float:
        """Backoff after failed attempt number ``attempt`` (1-based): :func:`toolkit.backoff.exponential_delay`."""
        return exponential_delay(attempt, self.initial_s, self.max_s, self.multiplier)


@dataclass(frozen=True, slots=True)
class Done:
    """Handled: the offset may be committed."""


DONE = Done()


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Run the handler again after ``delay_s``; only the record's lane waits."""

    delay_s: float
    reason: str
    error: BaseException | None = field(default=None, compare=False)  # what the handler raised, if it did


@dataclass(frozen=True, slots=True)
class Pause:
    """A transient outage (registry, broker) or a schema not known yet: wait and try the same step again;
    never dead-letter. The runtime backs off per outage of the record (``RetryPolicy.delay`` of their count:
    outages are not attempts), never waiting longer than ``max_delay_s``."""

    reason: str
    max_delay_s: float = math.inf


@dataclass(frozen=True, slots=True)
class ToDeadLetter:
    """Send the record to the dead-letter topic; done once the broker acknowledged it."""

    stage: str
    reason: str
    error: BaseException | None = None
    details: Any = None


@dataclass(frozen=True, slots=True)
class Stop:
    """ErrorPolicy.STOP: the would-be dead letter stops the consumer; its offset is never committed."""

    dead_letter: ToDeadLetter = field()


Outcome = Done | RetryAfter | Pause | ToDeadLetter | Stop


def decide(
    result: Any, attempt: int, retry: RetryPolicy, error_policy: ErrorPolicy = ErrorPolicy.DEAD_LETTER
) -> Outcome:
    """Map one attempt's result (a handler's return value, or the exception it or the pipeline raised) to
    the next step. ``attempt`` is 1 for the first attempt; transient outages do not count as attempts."""
    outcome = _decide(result, attempt, retry)
    if isinstance(outcome, ToDeadLetter) and error_policy is ErrorPolicy.STOP:
        return Stop(outcome)
    return outcome


def _decide(result: Any, attempt: int, retry: RetryPolicy) -> Outcome:
    if isinstance(result, SchemaNotYetKnown):
        return Pause(f"{type(result).__name__}: {safe_str(result)}", result.retry_in_s)
    if isinstance(result, (RegistryUnavailable, BrokerUnavailable)):
        return Pause(f"{type(result).__name__}: {safe_str(result)}")
    if isinstance(result, MessageError):
        return ToDeadLetter(result.stage, result.reason, result, result.details)
    if isinstance(result, DeadLetter):
        return ToDeadLetter(HANDLER, safe_str(result) or "the handler raised DeadLetter", result, result.details)
    if isinstance(result, RetryableError) or result is False:
        why = (
            f"{type(result).__name__}: {safe_str(result)}"
            if isinstance(result, BaseException)
            else "handler returned False"
        )
        if attempt >= retry.max_attempts:
            return ToDeadLetter(
                RETRIES_EXHAUSTED,
                f"{why} (attempt {attempt} of {retry.max_attempts})",
                result if isinstance(result, BaseException) else None,
            )
        explicit = result.delay_s if isinstance(result, Retry) else None
        delay = explicit if explicit is not None else retry.delay(attempt)
        return RetryAfter(delay, why, result if isinstance(result, BaseException) else None)
    if isinstance(result, BaseException):
        return ToDeadLetter(HANDLER, f"{type(result).__name__}: {safe_str(result)}", result)
    if result is True or result is None:
        return DONE
    return ToDeadLetter(
        HANDLER, f"handler returned {type(result).__name__} {safe_str(result, repr)}; expected True, False or None"
    )
