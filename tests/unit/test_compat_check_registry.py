"""run_check's registry comparison when the registry fails: a server error on one subject's schemas moves on
to the next subject; no answer at all stops asking. The registry here is a stand-in for ScratchRegistry
(our class); the real Apicurio is asked in tests/integration/test_check_registry.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import toolkit.compat.registry as scratch_module
from toolkit.compat.check import run_check
from toolkit.errors import RegistryUnavailable
from toolkit.registry import CompatibilityResult

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    for name in ("orders", "shipments"):
        shutil.copytree(ROOT / "schemas" / name, tmp_path / "schemas" / name, ignore=shutil.ignore_patterns("samples"))
    return tmp_path / "schemas"


def failing_registry(status: int | None, asked: list[str]):
    class Registry:
        url = "http://registry.test/apis/ccompat/v7"

        def __init__(self, source):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def verdict(self, schema_format, mode, documents, label="subject"):
            asked.append(label)
            if len(asked) == 1:
                raise RegistryUnavailable(
                    "schema registry unavailable: POST failed 4 time(s)", status=status, subject=label
                )
            return CompatibilityResult(True)

    return Registry


@pytest.mark.parametrize(("status", "subjects_asked"), [(500, 2), (None, 1)])
def test_a_registry_failure_on_one_subject(schemas, monkeypatch, status, subjects_asked):
    asked: list[str] = []
    monkeypatch.setattr(scratch_module, "ScratchRegistry", failing_registry(status, asked))
    url = "http://registry.test/apis/ccompat/v7"
    # (``registry_url`` is the parameter's earlier name, still accepted)
    report = run_check(schemas, base="HEAD", **({"registry": url} if status else {"registry_url": url}))
    errors = [f for f in report.findings if f.rule == "REGISTRY_ERROR"]
    assert len(errors) == 1 and errors[0].subject == asked[0]
    assert len(set(asked)) == subjects_asked  # a 5xx moves on to the next subject; no answer stops asking
