"""The keyword audit table in docs/schema-checks.md states what the checker decides, row by row.

Each row names a case of tests/compat_cases.py; its BACKWARD and FORWARD cells ("readers / Confluent") and
its rules are recomputed here, so the documentation fails the build when the checker changes under it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.compat_cases import CASES, JSON_CASES, Case
from toolkit.compat import check_pair
from toolkit.compat.findings import UNKNOWN, Severity

DOC = Path(__file__).resolve().parents[2] / "docs" / "schema-checks.md"


def _rows() -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("### Keyword audit (JSON Schema)", 1)[1].split("\n## ", 1)[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| keyword")
    ]
    return rows


ROWS = _rows()
BY_ID = {case.id: case for case in CASES}


def _cell(case: Case, reader: int, writer: int) -> tuple[str, set[str]]:
    issues = check_pair(case.format, case.versions[reader], case.versions[writer])
    if any(i.severity is Severity.ERROR and i.readers_break for i in issues):
        readers = "breaks"
    else:
        readers = "warns" if any(i.severity is Severity.WARNING for i in issues) else "ok"
    refuses = any(not i.confluent_accepts for i in issues if i.confluent != UNKNOWN)
    return f"{readers} / {'refuses' if refuses else 'accepts'}", {i.rule for i in issues}


def test_the_audit_covers_every_two_version_json_case() -> None:
    named = {row[-1].strip("`") for row in ROWS}
    assert len(ROWS) >= 60
    assert {c.id for c in JSON_CASES if not c.chain} <= named
    assert named <= set(BY_ID)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row[-1].strip("`"))
def test_a_row_states_what_the_checker_decides(row: list[str]) -> None:
    _keyword, _change, backward, forward, rules, case_id = row
    case = BY_ID[case_id.strip("`")]
    got_backward, rules_backward = _cell(case, 1, 0)
    got_forward, rules_forward = _cell(case, 0, 1)
    assert (backward.strip("*"), forward.strip("*")) == (got_backward, got_forward)
    assert set(re.findall(r"`([A-Z_]+)`", rules)) == rules_backward | rules_forward
    for cell in (backward, forward):  # bold exactly where readers and Confluent disagree; a warning Confluent
        # accepts is agreement (neither fails the check), as Issue.confluent defines it
        differs = cell.strip("*") in ("ok / refuses", "breaks / accepts", "warns / refuses")
        assert cell.startswith("**") == differs, cell
