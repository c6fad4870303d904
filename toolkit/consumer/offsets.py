"""Which offset of a partition may be committed: the contiguous-done watermark.

Records are handed out in offset order and may finish in any order (concurrent handlers, retries,
dead letters). The watermark is the offset after the longest finished prefix, so a commit never passes a
record that is not done. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    """The records of one partition that were handed out and not yet committed."""

    __slots__ = ("_pending", "_done", "_watermark", "_committed", "_end")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()  # handed out, in offset order
        self._done: set[int] = set()  # finished, but behind an unfinished one
        self._watermark: int | None = None  # next offset to commit
        self._committed: int | None = None  # last watermark handed to a commit
        self._end: int | None = None  # the partition's end, past the last pending record (see end_at)

    def add(self, offset: int) -> None:
        """A record was handed out. Offsets must increase (gaps are fine: compaction, transactions)."""
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} handed out after {self._pending[-1]}")
        if self._watermark is not None and offset < self._watermark:
            raise ValueError(f"offset {offset} is behind the watermark {self._watermark}")
        self._pending.append(offset)
        self._end = None  # (an end before this record is passed)

    def end_at(self, offset: int) -> None:
        """The partition's end was reached at ``offset``: no record below it will be handed out any more.
        Offsets between the last record and it hold no records (transaction markers, aborted transactions'
        records: the broker's log end is past them), so the watermark moves up to it once every handed-out
        record is done; otherwise a drained transactional topic would show a lag of one marker forever."""
        if self._pending:
            if offset > self._pending[-1]:
                self._end = offset
        elif self._watermark is None or offset > self._watermark:
            self._watermark = offset

    def done(self, offset: int) -> None:
        """The record at ``offset`` is finished (handled or its dead letter acknowledged)."""
        pending = self._pending
        if pending and offset == pending[0]:
            pending.popleft()
            last = offset
            done = self._done
            if done:  # (records finished behind this one: usually none)
                while pending and pending[0] in done:
                    last = pending.popleft()
                    done.discard(last)
            self._watermark = last + 1
            if self._end is not None and not pending:
                self._watermark, self._end = max(self._end, last + 1), None
        elif offset in self._done or not pending or offset < pending[0] or offset > pending[-1]:
            raise ValueError(f"offset {offset} was not handed out or is already done")
        else:
            self._done.add(offset)

    def discard_pending(self) -> None:
        """Forget unfinished records (partition revoked or consumer stopping); they will be redelivered."""
        self._pending.clear()
        self._done.clear()
        self._end = None

    @property
    def watermark(self) -> int | None:
        """The next offset to commit (every earlier handed-out record is done), or None if none is done."""
        return self._watermark

    @property
    def in_flight(self) -> int:
        """Records handed out and not finished, or finished behind an unfinished one."""
        return len(self._pending)

    @property
    def lowest_unfinished(self) -> int | None:
        for offset in self._pending:
            if offset not in self._done:
                return offset
        return None

    def to_commit(self) -> int | None:
        """The watermark if it moved since the last call, else None (for batched commits)."""
        if self._watermark is not None and self._watermark != self._committed:
            self._committed = self._watermark
            return self._watermark
        return None

    def __repr__(self) -> str:
        return f"OffsetTracker(watermark={self._watermark}, in_flight={self.in_flight})"
