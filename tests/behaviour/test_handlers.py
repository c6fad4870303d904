"""The ways to write and register a handler, and where each kind runs (docs/threads.md): ``async`` handlers
on the event loop, plain ``def`` ones in the handler threads."""

from __future__ import annotations

import threading

from generated_models.orders import v1, v2
from tests.behaviour.backends import Backend, order, run
from toolkit.consumer import BaseHandler, Message


def test_decorator_and_both_base_handler_methods_receive_their_messages(backend: Backend) -> None:
    decorated_topic, handle_topic, process_topic = (backend.topic(name) for name in ("deco", "handle", "process"))
    backend.produce(decorated_topic, [order("d0")])
    backend.produce(handle_topic, [order("h0", version=2)])
    backend.produce(process_topic, [order("p0")])
    seen: list[tuple[str, str, type]] = []
    consumer = backend.consumer()

    async def on_order(message: Message[v1.Order]) -> None:
        seen.append(("decorated", message.header.message_id, type(message.body)))

    assert consumer.handler(decorated_topic)(on_order) is on_order  # the decorator returns the function

    class ByHandle(BaseHandler):
        async def handle(self, message: Message[v2.Order]) -> bool:
            seen.append(("handle", message.header.message_id, type(message.body)))
            return True

    class ByProcessMessage(BaseHandler):  # the first releases' method name
        async def _process_message(self, message: Message[v1.Order]) -> bool:
            seen.append(("_process_message", message.header.message_id, type(message.body)))
            return True

    consumer.register_handler(handle_topic, ByHandle())
    consumer.register_handler(process_topic, ByProcessMessage())
    run(consumer)
    assert sorted(seen, key=str) == sorted(
        [("decorated", "d0", v1.Order), ("handle", "h0", v2.Order), ("_process_message", "p0", v1.Order)], key=str
    )
    for topic in (decorated_topic, handle_topic, process_topic):
        assert backend.committed(topic) == {0: 1}
        assert consumer.stats[topic].processed == 1


def test_plain_def_handlers_run_in_the_handler_threads_and_async_ones_on_the_loop(backend: Backend) -> None:
    plain_topic, method_topic, async_topic = (backend.topic(name) for name in ("plain", "method", "async"))
    for topic in (plain_topic, method_topic, async_topic):
        backend.produce(topic, [order(f"{topic}-{i}") for i in range(3)])
    threads: dict[str, set[str]] = {"plain": set(), "method": set(), "async": set()}

    def plain(message) -> None:
        threads["plain"].add(threading.current_thread().name)

    class PlainMethod(BaseHandler):
        def handle(self, message):  # type: ignore[override]  # a plain def handle() runs in the threads too
            threads["method"].add(threading.current_thread().name)
            return True

    async def on_loop(message) -> None:
        threads["async"].add(threading.current_thread().name)

    consumer = backend.consumer(max_workers=2)
    consumer.register_handler(plain_topic, plain)
    consumer.register_handler(method_topic, PlainMethod())
    consumer.register_handler(async_topic, on_loop)
    run(consumer)  # asyncio.run(): the event loop is this thread's
    pool = {"epistle-handler_0", "epistle-handler_1"}
    assert threads["plain"] and threads["plain"] <= pool
    assert threads["method"] and threads["method"] <= pool
    assert threads["async"] == {threading.current_thread().name}
    assert backend.committed(plain_topic) == backend.committed(method_topic) == backend.committed(async_topic) == {0: 3}
