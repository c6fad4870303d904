"""Fixtures shared by the unit tests."""

from __future__ import annotations

import asyncio
import threading

import pytest


@pytest.fixture
def loop():
    """An event loop running on a thread of its own (the loop a poll thread hands its events to)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
