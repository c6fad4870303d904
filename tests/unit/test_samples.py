"""Golden sample bodies under schemas/<name>/samples/<version>/{valid,invalid}/: the valid ones pass the
validator and build the generated model; the invalid ones fail the validator with a MessageError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.codegen import load_model_index
from toolkit.errors import MessageError
from toolkit.layout import load_schemas
from toolkit.registry.base import RegisteredSchema
from toolkit.validation import compile_schema

ROOT = Path(__file__).resolve().parents[2]
SUBJECTS = load_schemas(ROOT / "schemas")


def _cases(kind: str) -> list:
    cases = []
    for name, subject in SUBJECTS.items():
        for schema_file in subject.versions:
            folder = subject.folder / "samples" / str(schema_file.version) / kind
            for sample in sorted(folder.glob("*.json")):
                case_id = f"{name}/{schema_file.version}/{sample.stem}"
                cases.append(pytest.param(schema_file, sample, id=case_id))
    return cases


def _compiled(schema_file):
    return compile_schema(
        RegisteredSchema(schema_file.subject, schema_file.version, schema_file.format, schema_file.text)
    )


def test_every_version_has_samples() -> None:
    for subject in SUBJECTS.values():
        for schema_file in subject.versions:
            folder = subject.folder / "samples" / str(schema_file.version)
            assert len(list((folder / "valid").glob("*.json"))) >= 3, folder
            assert len(list((folder / "invalid").glob("*.json"))) >= 5, folder


@pytest.mark.parametrize(("schema_file", "sample"), _cases("valid"))
def test_valid_sample_passes_validator_and_model(schema_file, sample: Path) -> None:
    body = json.loads(sample.read_text(encoding="utf-8"))
    value = _compiled(schema_file).decode(body)
    model = load_model_index().get(schema_file.subject, schema_file.version)
    assert model is not None
    instance = model.model_validate(value)
    # camelCase on the wire, snake_case attributes; dumping by alias round-trips through the model.
    assert model.model_validate(instance.model_dump(by_alias=True)) == instance


@pytest.mark.parametrize(("schema_file", "sample"), _cases("invalid"))
def test_invalid_sample_fails_validator(schema_file, sample: Path) -> None:
    body = json.loads(sample.read_text(encoding="utf-8"))
    with pytest.raises(MessageError) as caught:
        _compiled(schema_file).decode(body)
    assert caught.value.stage == "validation"
    assert caught.value.details and caught.value.details[0]["path"].startswith("$")


def test_older_valid_samples_pass_newer_versions() -> None:
    """BACKWARD: each version reads every body written with the version before it."""
    for subject in SUBJECTS.values():
        for older, newer in zip(subject.versions, subject.versions[1:], strict=False):
            compiled = _compiled(newer)
            folder = subject.folder / "samples" / str(older.version) / "valid"
            for sample in sorted(folder.glob("*.json")):
                compiled.decode(json.loads(sample.read_text(encoding="utf-8")))
