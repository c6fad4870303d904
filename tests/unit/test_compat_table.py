"""Our verdict for every case of tests/compat_cases.py in every mode, and the reason for each break."""

from __future__ import annotations

import pytest

from tests.compat_cases import AVRO_CASES, CASES, JSON_CASES, Case
from toolkit.compat import Severity, check_pair, is_compatible, reader_writer_pairs
from toolkit.layout import Compatibility


def test_the_table_is_big_enough() -> None:
    assert len(AVRO_CASES) >= 30 and len(JSON_CASES) >= 30
    assert sum(c.chain for c in AVRO_CASES) >= 2 and sum(c.chain for c in JSON_CASES) >= 2
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_verdict_in_every_mode(case: Case) -> None:
    got = {mode: is_compatible(case.format, mode, list(case.versions)) for mode in case.expected}
    assert got == case.expected


@pytest.mark.parametrize("case", [c for c in CASES if not all(c.expected.values())], ids=lambda c: c.id)
def test_a_break_names_its_rule_path_and_consequence(case: Case) -> None:
    issues = []
    for mode, ok in case.expected.items():
        if ok:
            continue
        for reader, writer in reader_writer_pairs(mode, len(case.versions)):
            issues += check_pair(case.format, case.versions[reader - 1], case.versions[writer - 1])
    errors = [i for i in issues if i.severity is Severity.ERROR]
    assert errors, "a failing mode must come with at least one error"
    for rule in case.rules:
        assert rule in {i.rule for i in errors}, f"expected {rule} among {[i.rule for i in errors]}"
    for issue in errors:
        assert issue.path.startswith("$") and issue.what and issue.what[0].islower()


@pytest.mark.parametrize(
    "mode,new,expected",
    [
        (Compatibility.BACKWARD, 3, [(3, 2)]),
        (Compatibility.FORWARD, 3, [(2, 3)]),
        (Compatibility.FULL, 3, [(3, 2), (2, 3)]),
        (Compatibility.BACKWARD_TRANSITIVE, 3, [(3, 2), (3, 1)]),
        (Compatibility.FORWARD_TRANSITIVE, 3, [(2, 3), (1, 3)]),
        (Compatibility.FULL_TRANSITIVE, 3, [(3, 2), (2, 3), (3, 1), (1, 3)]),
        (Compatibility.NONE, 3, []),
        (Compatibility.BACKWARD, 1, []),
    ],
)
def test_mode_to_reader_writer_pairs(mode: Compatibility, new: int, expected: list[tuple[int, int]]) -> None:
    assert reader_writer_pairs(mode, new) == expected
