"""What a replay group has replayed of one dead-letter partition, kept in the group's committed offset and
its metadata (docs/dead-letters.md, "Replaying"). Pure: encoding and decoding only.

The committed offset is the first dead letter not yet replayed; the dead letters replayed after it (a run
with filters leaves gaps) are listed in the metadata as offset ranges. While a batch is being produced the
metadata also holds, per target partition, its end offset before the batch: a run interrupted between the
broker's acknowledgement and the commit leaves that mark, and the next run reads the target partitions from
there for the ``epistle-replayed-from`` headers of what was replayed.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

from toolkit.errors import ConfigError

FORMAT = "epistle-dlq-replay/1"
MAX_METADATA = 3800
"""Characters of commit metadata used at most (brokers refuse more than ``offset.metadata.max.bytes``,
4096 by default)."""


class LedgerFull(ConfigError):
    """The replayed ranges of a partition no longer fit in the commit metadata."""


@dataclass
class Ledger:
    topic: str
    partition: int
    next_offset: int = 0  # every dead letter below it is replayed (or was deleted by retention)
    ranges: list[tuple[int, int]] = field(default_factory=list)  # replayed, inclusive, all above next_offset
    pending: dict[str, dict[int, int]] = field(default_factory=dict)  # target topic -> partition -> end before

    def done(self, offset: int) -> bool:
        if offset < self.next_offset:
            return True
        index = bisect.bisect_right(self.ranges, (offset, float("inf"))) - 1
        return index >= 0 and self.ranges[index][0] <= offset <= self.ranges[index][1]

    def add(self, offset: int) -> None:
        if self.done(offset):
            return
        index = bisect.bisect_left(self.ranges, (offset, offset))
        self.ranges.insert(index, (offset, offset))
        merged: list[tuple[int, int]] = []
        for low, high in self.ranges:
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        while merged and merged[0][0] <= self.next_offset:
            self.next_offset = max(self.next_offset, merged.pop(0)[1] + 1)
        self.ranges = merged

    def forget_below(self, low: int) -> None:
        """Dead letters below ``low`` are gone (retention): nothing there can be replayed any more."""
        if low > self.next_offset:
            self.next_offset = low
            self.ranges = [(max(a, low), b) for a, b in self.ranges if b >= low]
            while self.ranges and self.ranges[0][0] <= self.next_offset:
                self.next_offset = max(self.next_offset, self.ranges.pop(0)[1] + 1)

    def mark(self, topic: str, partition: int, end: int) -> None:
        """Note a target partition's end offset before producing to it (the first one noted stays)."""
        self.pending.setdefault(topic, {}).setdefault(partition, end)

    def metadata(self) -> str:
        body: dict[str, object] = {
            "format": FORMAT,
            "replayed": ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in self.ranges),
        }
        if self.pending:
            body["pending"] = {
                topic: {str(p): end for p, end in marks.items()} for topic, marks in self.pending.items()
            }
        text = json.dumps(body, separators=(",", ":"))
        if len(text) > MAX_METADATA:
            raise LedgerFull(
                f"the replay record of {self.topic} partition {self.partition} is full: {len(self.ranges)} "
                f"separate ranges of replayed dead letters after offset {self.next_offset} (a run with filters "
                "leaves gaps). Replay the dead letters between them (without the filter that left them), or "
                "keep a new record with --group",
                setting="--group",
            )
        return text

    @classmethod
    def load(cls, topic: str, partition: int, offset: int, metadata: str | None, group: str) -> Ledger:
        """From the group's committed ``offset`` (negative: nothing committed) and its ``metadata``.

        Raises:
            ConfigError: the group has offsets committed by something else than a replay.
        """
        ledger = cls(topic, partition, max(offset, 0))
        if offset < 0 and not metadata:
            return ledger
        try:
            body = json.loads(metadata or "")
            if body.get("format") != FORMAT:
                raise ValueError(body.get("format"))
            for part in filter(None, body.get("replayed", "").split(",")):
                low, _, high = part.partition("-")
                ledger.ranges.append((int(low), int(high or low)))
            ledger.pending = {
                topic: {int(p): int(end) for p, end in marks.items()}
                for topic, marks in body.get("pending", {}).items()
            }
        except (ValueError, TypeError, AttributeError):
            raise ConfigError(
                f"consumer group {group!r} has an offset for {topic} partition {partition} that a "
                "replay did not commit (it is someone else's group): give the replay a group of its "
                "own with --group",
                setting="--group",
            ) from None
        ledger.ranges.sort()
        return ledger
