"""Handlers and the router that finds the handler of a message.

A handler is a :class:`BaseHandler` subclass (``async def _process_message(self, message) -> bool``, its
dependencies injected in its constructor), or any plain ``def`` / ``async def`` callable taking the message.
Registering is separate from running: :class:`HandlerRegistry` collects handlers by topic and, optionally,
by (topic, messageType); the runtime only asks it for the handler of a message.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from toolkit import _args
from toolkit.errors import ConfigError, MessageError

if TYPE_CHECKING:
    from toolkit.consumer.pipeline import Message


class BaseHandler(ABC):
    """Base of class-based handlers.

    Return True (or None) when the message is done, False for "not now" (retried with backoff, then
    dead-lettered); raise :class:`~toolkit.errors.RetryableError` for the same with a reason; any other
    exception dead-letters the message.

    ``accepts`` optionally declares the schemas the handler understands, e.g. ``{"orders": {1, 2}}``
    (an empty set or None means every version of that schema); other schemas are dead-lettered with
    stage ``"routing"`` before the handler sees them.
    """

    accepts: ClassVar[Mapping[str, set[int] | frozenset[int] | None] | None] = None

    @abstractmethod
    async def _process_message(self, message: Message) -> bool | None:
        """Handle one message."""

    async def __call__(self, message: Message) -> bool | None:
        return await self._process_message(message)


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
            raise MessageError("routing", f"handler {self.name} does not accept {schema_name} v{version}",
                               details=[{"path": "/header/schemaName", "message": f"accepted: {accepted}"}])


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
        normalised = {str(name): frozenset(int(v) for v in (versions or ()))
                      for name, versions in declared.items()}
    target = handler._process_message if isinstance(handler, BaseHandler) else handler
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

    def register(self, topic: str, handler: HandlerLike, message_type: str | None = None,
                 accepts: Mapping[str, Any] | None = None) -> None:
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
                raise ConfigError(f"a handler is already registered for topic {topic!r}, "
                                  f"messageType {message_type!r}")
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
            raise MessageError("routing", f"no handler for topic {topic!r}, messageType {message_type!r}",
                               details=[{"path": "/header/messageType",
                                         "message": f"no handler for {message_type!r} on {topic!r}"}])
        route.check_accepts(schema_name, version)
        return route
