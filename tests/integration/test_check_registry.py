"""``epistle check --registry-url`` against the real Apicurio: its verdicts, the client settings, the cleanup.

The schemas folder is not in a git work tree, so only the evolution (and the registry) is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.compat_cases import CASES
from toolkit.cli import app

SECRET = "check-s3cret-pw"
AVRO_V1 = {"type": "record", "name": "Parcel", "namespace": "test.check", "fields": [{"name": "id", "type": "string"}]}
AVRO_V2 = {**AVRO_V1, "fields": [*AVRO_V1["fields"], {"name": "kg", "type": "double", "default": 0.0}]}


def _case(case_id: str):
    return next(case for case in CASES if case.id == case_id)


def write_subject(root: Path, name: str, suffix: str, versions: list, mode: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "subject.toml").write_text(f'compatibility = "{mode}"\n')
    for number, document in enumerate(versions, start=1):
        (folder / f"{number}{suffix}").write_text(json.dumps(document, indent=2))


def scratch_subjects(registry_url: str, label: str) -> list[str]:
    """Subjects, soft-deleted ones included, that a check of the subject ``label`` created."""
    answer = httpx.get(f"{registry_url}/subjects", params={"deleted": "true"}, timeout=10)
    answer.raise_for_status()
    return [name for name in answer.json() if name.startswith(f"epistle-check-{label}-")]


@pytest.fixture
def no_registry_settings(monkeypatch, tmp_path):
    """No SCHEMA_REGISTRY_* from the environment or a .env file unless a test sets one."""
    monkeypatch.chdir(tmp_path)
    for name in ("URL", "USERNAME", "PASSWORD", "BEARER_TOKEN", "CA_BUNDLE", "CLIENT_CERT", "CLIENT_KEY"):
        monkeypatch.delenv(f"SCHEMA_REGISTRY_{name}", raising=False)


def test_check_reports_where_the_registry_disagrees_and_leaves_no_scratch_subject(
    registry_url, unique_name, tmp_path, no_registry_settings
):
    case = _case("json-required-with-default-added-closed")  # we accept it under BACKWARD, Apicurio refuses
    disputed, agreed = unique_name("contacts"), unique_name("parcels")
    root = tmp_path / "schemas"
    write_subject(root, disputed, ".json", list(case.versions), "BACKWARD")
    write_subject(root, agreed, ".avsc", [AVRO_V1, AVRO_V2], "BACKWARD")
    # Credentials in the URL become basic auth (Apicurio ignores them) and must not be shown anywhere.
    url = registry_url.replace("://", f"://svc:{SECRET}@", 1)
    result = CliRunner().invoke(app, ["check", "--schemas", str(root), "--registry-url", url, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    report = json.loads(result.output)
    assert f"compatibility verdicts also asked from the registry at {registry_url}" in report["notes"]
    disagreements = [f for f in report["findings"] if f["rule"] == "REGISTRY_DISAGREES"]
    assert [(f["subject"], f["reader_version"]) for f in disagreements] == [(disputed, 2)], report["findings"]
    assert "the registry rejects v2 under BACKWARD" in disagreements[0]["message"]
    assert "OBJECT_TYPE_REQUIRED_PROPERTIES_MEMBER_ADDED" in disagreements[0]["message"]  # Apicurio's words
    assert not [f for f in report["findings"] if f["rule"] == "REGISTRY_ERROR"]
    for label in (disputed, agreed):
        assert scratch_subjects(registry_url, label) == []


def test_check_uses_the_registry_settings(registry_url, unique_name, tmp_path, monkeypatch, no_registry_settings):
    root = tmp_path / "schemas"
    write_subject(root, unique_name("parcels"), ".avsc", [AVRO_V1, AVRO_V2], "BACKWARD")
    args = ["check", "--schemas", str(root), "--registry-url", registry_url]
    assert CliRunner().invoke(app, args).exit_code == 0
    # A password without a user name is refused as for register and verify: the settings are in use.
    monkeypatch.setenv("SCHEMA_REGISTRY_PASSWORD", SECRET)
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1
    assert "SCHEMA_REGISTRY_USERNAME" in refused.output and SECRET not in refused.output
