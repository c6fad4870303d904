"""Handlers and the router that finds the handler of a message.

A handler is a :class:`BaseHandler` subclass (``async def handle(self, message)``, or the first releases'
``_process_message``; its dependencies injected in its constructor), or any plain ``def`` / ``async def``
callable taking the message. Registering is separate from running: :class:`HandlerRegistry` collects
handlers by topic and, optionally, by (topic, messageType); the engine only asks it for the handler of a
message.

What a handler's result means (docs/contracts.md, "Outcomes"): True or None, done; False or
:class:`Retry`, try again after a backoff (dead-lettered once the attempts are spent); :class:`DeadLetter`,
dead-letter it now with that reason; any other exception, dead-lettered at once (stage ``handler``).

Threads (docs/threads.md): ``async def`` handlers run on the event loop; plain ``def`` handlers run in the
consumer's handler thread pool (``max_workers`` threads named ``epistle-handler_N``), so one may block
without stopping the others, and must be thread-safe when ``max_workers`` > 1.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from toolkit import _args
from toolkit.errors import ConfigError, EpistleError, MessageError, RetryableError

if TYPE_CHECKING:
    from toolkit.consumer.pipeline import Message


class Retry(RetryableError):
    """Raise it in a handler to try the message again: after ``delay_s`` when given, else after the
    consumer's backoff. It counts as an attempt: once ``max_attempts`` are spent the message is
    dead-lettered (stage ``retries_exhausted``) with ``reason``."""

    def __init__(self, reason: str = "the handler asked for a retry", *, delay_s: float | None = None) -> None:
        if delay_s is not None:
            _args.number("delay_s", delay_s, low=0)
        super().__init__(reason)
        self.delay_s = delay_s


class DeadLetter(EpistleError):
    """Raise it in a handler to dead-letter the message now, without retries, with ``reason`` (and
    optional ``details``, a JSON-compatible value kept in the dead letter) at stage ``handler``."""

    def __init__(self, reason: str, *, details: Any = None) -> None:
        super().__init__(reason)
        self.details = details


class BaseHandler:
    """Base of class-based handlers: override :meth:`handle` (or, as in the first releases,
    :meth:`_process_message`; a class that overrides both is called through ``_process_message``, so a
    handler of the first releases with a helper method named ``handle`` keeps working).

    Return True (or None) when the message is done, False for "not now" (retried with backoff, then
    dead-lettered); raise :class:`Retry` (or :class:`~toolkit.errors.RetryableError`) for the same with a
    reason, :class:`DeadLetter` to dead-letter it at once; any other exception dead-letters the message.

    ``accepts`` optionally declares the schemas the handler understands, e.g. ``{"orders": {1, 2}}``
    (an empty set or None means every version of that schema); other schemas are dead-lettered with
    stage ``"routing"`` before the handler sees them.
    """

    accepts: ClassVar[Mapping[str, set[int] | frozenset[int] | None] | None] = None

    def __new__(cls, *args: Any, **kwargs: Any) -> BaseHandler:
        # As for an abstract method, but either of the two will do: refused when made, not at the first
        # message.
        if cls.handle is BaseHandler.handle and cls._process_message is BaseHandler._process_message:
            raise TypeError(
                f"Can't instantiate {cls.__qualname__}: it overrides neither handle() nor _process_message()"
            )
        return super().__new__(cls)

    async def handle(self, message: Message) -> bool | None:
        """Handle one message (the default calls :meth:`_process_message`)."""
        return await self._process_message(message)

    async def _process_message(self, message: Message) -> bool | None:
        """Handle one message: the first releases' name for :meth:`handle`."""
        raise NotImplementedError(f"{type(self).__qualname__} overrides neither handle() nor _process_message()")

    async def __call__(self, message: Message) -> bool | None:
        return await self.handle(message)


HandlerLike = BaseHandler | Callable[["Message"], Any] | Callable[["Message"], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Route:
    """A registered handler, normalised: ``is_async`` tells the runtime whether to await it or run it in
    the worker thread pool."""

    handler: Any
    call: Callable[[Any], Any]
    is_async: bool
    accepts: Mapping[str, frozenset[int]] | None
    name: str

    def check_accepts(self, schema_name: str, version: int) -> None:
        """Raises MessageError(stage="routing") when the handler did not declare this schema version."""
        if self.accepts is None:
            return
        versions = self.accepts.get(schema_name)
        if schema_name not in self.accepts or (versions and version not in versions):
            accepted = ", ".join(f"{name} {sorted(v) if v else 'any'}" for name, v in self.accepts.items())
            raise MessageError(
                "routing",
                f"handler {self.name} does not accept {schema_name} v{version}",
                details=[{"path": "/header/schemaName", "message": f"accepted: {accepted}"}],
            )


def as_route(handler: HandlerLike, accepts: Mapping[str, Any] | None = None) -> Route:
    """Normalise a handler object or callable into a :class:`Route`.

    Raises:
        ConfigError: ``handler`` is not callable.
    """
    if not callable(handler):
        raise ConfigError(f"handler {handler!r} is neither a BaseHandler nor a callable")
    declared = accepts if accepts is not None else getattr(handler, "accepts", None)
    normalised = None
    if declared is not None:
        normalised = {str(name): frozenset(int(v) for v in (versions or ())) for name, versions in declared.items()}
    target: Any = handler
    if isinstance(handler, BaseHandler):  # the method itself: no extra coroutine per message
        # _process_message first: a handler of the first releases may have a helper of its own named handle.
        legacy = type(handler)._process_message is not BaseHandler._process_message
        target = handler._process_message if legacy else handler.handle
    is_async = _is_async(target)
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return Route(handler, target, is_async, normalised, name)


def _is_async(target: Any) -> bool:
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target) or asyncio.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - a callable object's own __call__
    return call is not None and inspect.iscoroutinefunction(call)


class HandlerRegistry:
    """Handlers by topic, and by (topic, messageType) with the topic's handler as fallback."""

    def __init__(self) -> None:
        self._by_topic: dict[str, Route] = {}
        self._by_type: dict[tuple[str, str], Route] = {}

    def register(
        self,
        topic: str,
        handler: HandlerLike,
        message_type: str | None = None,
        accepts: Mapping[str, Any] | None = None,
    ) -> None:
        """Register ``handler`` for ``topic`` (or only for ``message_type`` on it).

        Raises:
            ConfigError: a handler is already registered for the same topic (and message type).
        """
        _args.text("topic", topic, empty=False)
        if message_type is not None:
            _args.text("message_type", message_type, empty=False)
        route = as_route(handler, accepts)
        if message_type is None:
            if topic in self._by_topic:
                raise ConfigError(f"a handler is already registered for topic {topic!r}")
            self._by_topic[topic] = route
        else:
            if (topic, message_type) in self._by_type:
                raise ConfigError(f"a handler is already registered for topic {topic!r}, messageType {message_type!r}")
            self._by_type[(topic, message_type)] = route

    @property
    def topics(self) -> list[str]:
        """Every topic with at least one handler, sorted."""
        return sorted(set(self._by_topic) | {topic for topic, _ in self._by_type})

    def route(self, topic: str, message_type: str, schema_name: str, version: int) -> Route:
        """The handler for a message.

        Raises:
            MessageError: stage ``"routing"``: no handler for the topic / message type, or the handler
                does not accept the schema version.
        """
        route = self._by_type.get((topic, message_type)) or self._by_topic.get(topic)
        if route is None:
            raise MessageError(
                "routing",
                f"no handler for topic {topic!r}, messageType {message_type!r}",
                details=[{"path": "/header/messageType", "message": f"no handler for {message_type!r} on {topic!r}"}],
            )
        route.check_accepts(schema_name, version)
        return route
