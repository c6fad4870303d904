"""One backoff curve (toolkit.backoff) for the consumer's retries and the registry client's requests."""

from __future__ import annotations

import httpx
import pytest

from toolkit.backoff import exponential_delay
from toolkit.consumer.outcomes import RetryPolicy
from toolkit.registry import ConfluentHttpRegistry


def test_the_curve_doubles_from_initial_up_to_the_cap() -> None:
    assert [exponential_delay(n, 0.5, 3.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [exponential_delay(n, 1.0, 100.0, multiplier=3) for n in (1, 2, 3)] == [1.0, 3.0, 9.0]
    assert exponential_delay(0, 0.5, 3.0) == 0.5  # no attempt counted yet: the first delay


@pytest.mark.parametrize("attempt", [1_025, 5_000, 10**9])
def test_any_attempt_number_gives_a_delay_not_an_overflow(attempt: int) -> None:
    # A consumer counts outage waits up for as long as the outage lasts (at 30 s a wait, 1,025 is under 9 h).
    assert exponential_delay(attempt, 0.5, 30.0) == 30.0
    assert exponential_delay(attempt, 0.0, 30.0) == 0.0
    assert RetryPolicy(max_attempts=3, initial_s=0.5, max_s=30.0).delay(attempt) == 30.0


def test_the_consumer_and_the_registry_client_wait_along_the_same_curve() -> None:
    policy = RetryPolicy(max_attempts=5, initial_s=0.2, max_s=1.5)
    registry = ConfluentHttpRegistry(
        "http://registry.test",
        transport=httpx.MockTransport(lambda r: None),
        backoff_initial_s=0.2,
        backoff_max_s=1.5,
        rng=lambda: 1.0,
    )
    try:
        # The registry's full jitter draws in [0, delay]: at its top it is the consumer's delay.
        assert [registry._delay(n) for n in range(1, 7)] == [policy.delay(n) for n in range(1, 7)]
    finally:
        registry.close()
