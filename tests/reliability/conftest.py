"""Reliability tests: consumer subprocesses killed (SIGKILL) or stopped (SIGTERM) mid-stream, on the real
broker (the ``kafka_bootstrap`` fixture). Marked ``reliability``: ``pytest -m reliability`` runs them alone,
``pytest -m "not reliability"`` skips them."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(pytest.mark.reliability)
