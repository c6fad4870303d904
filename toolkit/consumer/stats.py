"""Per-topic counters the runtime keeps: what the demo's summary table and health checks read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TopicStats:
    """Counters of one source topic."""

    processed: int = 0
    """Messages whose handler finished (True or None)."""
    retried: int = 0
    """Retry attempts scheduled (a message retried twice counts 2)."""
    dead_lettered: Counter[str] = field(default_factory=Counter)
    """Dead letters acknowledged by the broker, by stage (decode, envelope, schema, validation, model,
    routing, handler, retries_exhausted)."""
    paused: int = 0
    """Waits for a registry or broker outage (a message is never dead-lettered for those)."""
    dead_letter_send_failures: int = 0
    """Failed attempts to produce a dead letter (retried; the source offset is not committed meanwhile)."""

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "retried": self.retried,
            "dead_lettered": dict(sorted(self.dead_lettered.items())),
            "dead_lettered_total": self.dead_lettered_total,
            "paused": self.paused,
            "dead_letter_send_failures": self.dead_letter_send_failures,
        }


class ConsumerStats:
    """``consumer.stats``: a :class:`TopicStats` per topic, created on first use."""

    def __init__(self) -> None:
        self.topics: dict[str, TopicStats] = {}

    def __getitem__(self, topic: str) -> TopicStats:
        stats = self.topics.get(topic)
        if stats is None:
            stats = self.topics[topic] = TopicStats()
        return stats

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {topic: stats.as_dict() for topic, stats in sorted(self.topics.items())}

    def table(self) -> str:
        """A plain-text summary table: one row per topic, dead letters broken down by stage."""
        rows = [("topic", "processed", "retried", "dead-lettered", "by stage")]
        for topic, s in sorted(self.topics.items()):
            stages = ", ".join(f"{stage}={n}" for stage, n in sorted(s.dead_lettered.items())) or "-"
            rows.append((topic, str(s.processed), str(s.retried), str(s.dead_lettered_total), stages))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)
