import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.consumer.offsets import OffsetTracker


def test_in_order():
    t = OffsetTracker()
    assert t.watermark is None
    for o in range(3):
        t.add(o)
    t.done(0)
    assert t.watermark == 1
    t.done(1)
    t.done(2)
    assert t.watermark == 3 and t.in_flight == 0


def test_out_of_order_never_passes_unfinished():
    t = OffsetTracker()
    for o in (10, 11, 12, 15, 16):  # gaps: compaction or transaction markers
        t.add(o)
    t.done(12)
    t.done(16)
    assert t.watermark is None and t.lowest_unfinished == 10
    t.done(10)
    assert t.watermark == 11
    t.done(11)
    assert t.watermark == 13  # 15 is not done
    t.done(15)
    assert t.watermark == 17


def test_to_commit_only_when_moved():
    t = OffsetTracker()
    t.add(0)
    assert t.to_commit() is None
    t.done(0)
    assert t.to_commit() == 1
    assert t.to_commit() is None


@pytest.mark.parametrize("bad", [lambda t: t.done(5), lambda t: t.add(0)])
def test_misuse_raises(bad):
    t = OffsetTracker()
    t.add(0)
    t.add(1)
    with pytest.raises(ValueError):
        bad(t)


def test_double_done_raises():
    t = OffsetTracker()
    for o in range(3):
        t.add(o)
    t.done(1)
    with pytest.raises(ValueError):
        t.done(1)


@given(st.data(), st.lists(st.integers(1, 3), min_size=1, max_size=60))
def test_watermark_is_contiguous_done_prefix(data, gaps):
    offsets = []
    current = 0
    for gap in gaps:
        current += gap
        offsets.append(current)
    t = OffsetTracker()
    for o in offsets:
        t.add(o)
    order = data.draw(st.permutations(offsets))
    finished = set()
    for o in order:
        t.done(o)
        finished.add(o)
        prefix = 0
        while prefix < len(offsets) and offsets[prefix] in finished:
            prefix += 1
        expected = None if prefix == 0 else offsets[prefix - 1] + 1
        assert t.watermark == expected
        # never past an unfinished offset
        unfinished = [x for x in offsets if x not in finished]
        if unfinished and t.watermark is not None:
            assert t.watermark <= min(unfinished)
    assert t.watermark == offsets[-1] + 1 and t.in_flight == 0


def test_the_end_past_transaction_markers_is_committed_once_every_record_is_done():
    t = OffsetTracker()
    for o in (0, 1, 2):  # then a commit marker at 3, an aborted transaction 4-6 and its marker at 7
        t.add(o)
    t.end_at(8)
    t.done(1)
    t.done(0)
    assert t.watermark == 2  # record 2 is not done: the end waits
    t.done(2)
    assert t.watermark == 8
    assert t.to_commit() == 8


def test_an_end_with_nothing_pending_moves_the_watermark_at_once():
    t = OffsetTracker()
    t.end_at(5)  # a partition holding only markers and aborted records from where the group stood
    assert t.watermark == 5
    t.add(5)
    t.done(5)
    t.end_at(9)
    assert t.watermark == 9
    t.end_at(7)  # an older end (never behind the watermark)
    assert t.watermark == 9


def test_an_end_is_forgotten_when_a_record_follows_it_or_the_records_are_discarded():
    t = OffsetTracker()
    t.add(0)
    t.end_at(3)
    t.add(3)  # a record after the end: the end is no longer the partition's
    t.done(0)
    assert t.watermark == 1
    t.done(3)
    assert t.watermark == 4
    t.add(4)
    t.end_at(6)
    t.discard_pending()  # revoked: nothing of it may move the watermark
    assert t.watermark == 4
    t.end_at(4)  # an end at or before the last pending record says nothing
    t.add(10)
    t.end_at(10)
    t.done(10)
    assert t.watermark == 11
