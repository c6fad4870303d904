"""The replay group's record of what was replayed (toolkit.dlq.ledger): offsets and ranges, the marks an
interrupted run leaves, and what it refuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit.dlq.ledger import MAX_METADATA, Ledger, LedgerFull
from toolkit.errors import ConfigError


def test_a_fresh_ledger_has_replayed_nothing():
    ledger = Ledger.load("orders.dlq", 0, -1001, None, "g")
    assert (ledger.next_offset, ledger.ranges, ledger.pending) == (0, [], {})
    assert not ledger.done(0)


def test_contiguous_replays_move_the_offset_and_gaps_stay_as_ranges():
    ledger = Ledger("orders.dlq", 0)
    for offset in (0, 1, 3, 4, 7):
        ledger.add(offset)
    assert ledger.next_offset == 2
    assert ledger.ranges == [(3, 4), (7, 7)]
    assert [ledger.done(o) for o in range(9)] == [True, True, False, True, True, False, False, True, False]
    ledger.add(2)  # the gap is filled: the offset moves past the range after it
    assert (ledger.next_offset, ledger.ranges) == (5, [(7, 7)])


@given(st.sets(st.integers(min_value=0, max_value=300), max_size=120))
def test_done_is_exactly_what_was_added(offsets):
    ledger = Ledger("t", 0)
    for offset in offsets:
        ledger.add(offset)
    assert {o for o in range(302) if ledger.done(o)} == offsets
    back = Ledger.load("t", 0, ledger.next_offset, ledger.metadata(), "g")
    assert {o for o in range(302) if back.done(o)} == offsets


def test_dead_letters_gone_by_retention_count_as_done():
    ledger = Ledger("t", 0, ranges=[(12, 14), (20, 20)], next_offset=3)
    ledger.forget_below(13)
    assert (ledger.next_offset, ledger.ranges) == (15, [(20, 20)])


def test_the_metadata_round_trips_with_the_marks_of_an_interrupted_run():
    ledger = Ledger("orders.dlq", 1)
    ledger.add(0)
    ledger.add(5)
    ledger.mark("orders", 2, 1000)
    ledger.mark("orders", 2, 1200)  # the first mark stays: records may have gone there since
    text = ledger.metadata()
    assert json.loads(text)["pending"] == {"orders": {"2": 1000}}
    back = Ledger.load("orders.dlq", 1, ledger.next_offset, text, "g")
    assert (back.next_offset, back.ranges, back.pending) == (1, [(5, 5)], {"orders": {2: 1000}})


def test_an_offset_someone_else_committed_is_refused_naming_the_option():
    with pytest.raises(ConfigError, match="--group") as info:
        Ledger.load("orders.dlq", 0, 17, "", "orders-service")
    assert info.value.setting == "--group"


def test_too_many_scattered_ranges_are_refused_before_the_broker_would():
    ledger = Ledger("orders.dlq", 0)
    for offset in range(1, 4000, 2):  # every other one: a range each
        ledger.add(offset)
    with pytest.raises(LedgerFull, match="--group"):
        ledger.metadata()
    ledger.ranges = ledger.ranges[:100]
    assert len(ledger.metadata()) <= MAX_METADATA
