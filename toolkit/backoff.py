"""Exponential backoff: how long to wait after a failed attempt, for every retry loop of the toolkit.

The consumer's handler retries, outages and dead-letter resends (:class:`~toolkit.consumer.outcomes.RetryPolicy`)
and the registry client's requests (:class:`~toolkit.registry.http.ConfluentHttpRegistry`, with full jitter on
top) wait along this one curve.
"""

from __future__ import annotations

import math


def exponential_delay(attempt: int, initial_s: float, max_s: float, multiplier: float = 2.0) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): ``initial_s * multiplier**(attempt-1)``,
    capped at ``max_s``.

    Any ``attempt`` gives a delay: a consumer waiting out a long outage counts its attempts up for hours, and
    a power that no float can hold is simply past the cap (not an OverflowError).
    """
    try:
        delay = initial_s * float(multiplier) ** max(0, attempt - 1)
    except OverflowError:
        delay = math.inf if initial_s > 0 else 0.0
    return min(max_s, delay)
