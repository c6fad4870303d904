import asyncio
import functools

import pytest

from toolkit.consumer.handlers import BaseHandler, HandlerRegistry, as_route
from toolkit.errors import ConfigError, MessageError


class OrderHandler(BaseHandler):
    def __init__(self, service):
        self.service = service

    async def _process_message(self, message):
        return self.service(message)


class V2Only(OrderHandler):
    accepts = {"orders": {2}}


def test_base_handler_is_async_and_injected():
    route = as_route(OrderHandler(lambda m: m == "x"))
    assert route.is_async and asyncio.run(route.call("x")) is True


def test_base_handler_requires_process_message():
    class Incomplete(BaseHandler):
        pass

    with pytest.raises(TypeError):
        Incomplete()


def test_plain_and_async_callables():
    async def coro(m):
        return True

    class CallableObject:
        async def __call__(self, m):
            return True

    assert not as_route(lambda m: True).is_async
    assert as_route(coro).is_async
    assert as_route(functools.partial(coro)).is_async
    assert as_route(CallableObject()).is_async
    with pytest.raises(ConfigError):
        as_route(42)


def test_message_type_route_with_topic_fallback():
    registry = HandlerRegistry()
    general, special = OrderHandler(None), OrderHandler(None)
    registry.register("orders", general)
    registry.register("orders", special, message_type="OrderCancelled")
    assert registry.route("orders", "OrderCancelled", "orders", 1).handler is special
    assert registry.route("orders", "OrderCreated", "orders", 1).handler is general
    assert registry.topics == ["orders"]
    with pytest.raises(MessageError) as info:
        registry.route("shipments", "X", "shipments", 1)
    assert info.value.stage == "routing"


def test_duplicate_registration_rejected():
    registry = HandlerRegistry()
    registry.register("orders", lambda m: True)
    with pytest.raises(ConfigError):
        registry.register("orders", lambda m: True)


def test_accepts_declaration():
    registry = HandlerRegistry()
    registry.register("orders", V2Only(None))
    registry.route("orders", "T", "orders", 2)
    for name, version in (("orders", 1), ("shipments", 2)):
        with pytest.raises(MessageError) as info:
            registry.route("orders", "T", name, version)
        assert info.value.stage == "routing"


def test_accepts_any_version_and_override_at_registration():
    registry = HandlerRegistry()
    registry.register("a", lambda m: True, accepts={"orders": None})
    registry.route("a", "T", "orders", 9)
    with pytest.raises(MessageError):
        registry.route("a", "T", "shipments", 1)


def test_a_first_release_handler_with_a_helper_named_handle_is_still_called_through_process_message() -> None:
    import asyncio

    from toolkit.consumer.handlers import BaseHandler, as_route

    class Legacy(BaseHandler):
        def handle(self, order):  # a helper of its own, not the message entry point
            return ("helper", order)

        async def _process_message(self, message) -> bool:
            return self.handle(message) == ("helper", message)

    route = as_route(Legacy())
    assert route.is_async and asyncio.run(route.call("m")) is True
