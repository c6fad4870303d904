"""One JSON equality (toolkit.layout.canonical_json): register/verify (same_schema), epistle check's duplicate
versions and its published-version edits, and the branch count of the compatibility checker agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.compat.history import _same_json
from toolkit.compat.json_schema import _distinct
from toolkit.compat.subject import check_subject
from toolkit.layout import load_subject
from toolkit.registry import same_schema


def _schema(value: object, indent: int | None = None) -> str:
    return json.dumps({"type": "object", "properties": {"flag": {"const": value}}}, indent=indent)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (_schema(1), _schema(1, indent=4), True),  # formatting
        ('{"type": "object", "title": "x"}', '{"title": "x", "type": "object"}', True),  # key order
        ('{"title": "caf\\u00e9"}', '{"title": "café"}', True),  # an escape is the same string
        (_schema(1), _schema(True), False),  # Python's == takes true for 1: a different schema
        (_schema(1), _schema(1.0), False),  # the texts registries compare differ
        (_schema(0), _schema(False), False),
    ],
)
def test_every_caller_takes_the_same_pairs_for_the_same_json(tmp_path: Path, a: str, b: str, same: bool) -> None:
    folder = tmp_path / "things"
    folder.mkdir()
    (folder / "1.json").write_text(a)
    (folder / "2.json").write_text(b)
    subject = load_subject(folder)
    duplicate = any(f.rule == "DUPLICATE_VERSION" for f in check_subject(subject))
    published_unchanged = _same_json(a, b)  # VERSION_REFORMATTED (a warning), not VERSION_EDITED
    one_branch = _distinct([json.loads(a), json.loads(b)]) == 1
    assert (same_schema(a, b), duplicate, published_unchanged, one_branch) == (same,) * 4
