"""``epistle check`` in a throw-away git repository: published versions are immutable, evolution is checked.

Needs only git (no broker, no registry), so it is fast; it lives with the integration tests because it runs
subprocesses and a real git.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

V1 = {"type": "record", "name": "Order", "fields": [{"name": "id", "type": "string"}]}
V2_COMPATIBLE = {
    "type": "record",
    "name": "Order",
    "fields": [{"name": "id", "type": "string"}, {"name": "note", "type": "string", "default": ""}],
}
V2_BREAKING = {
    "type": "record",
    "name": "Order",
    "fields": [{"name": "id", "type": "string"}, {"name": "email", "type": "string"}],
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def epistle_check(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "check", "--schemas", "schemas", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env=_env(),
    )


def _env() -> dict[str, str]:
    import os

    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_ACTIONS"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def write(repo: Path, name: str, document: dict) -> None:
    path = repo / "schemas" / "orders" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo whose main branch has schemas/orders/1.avsc committed, checked out on a feature branch."""
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "test@example.invalid")
    git(tmp_path, "config", "user.name", "test")
    write(tmp_path, "1.avsc", V1)
    (tmp_path / "schemas" / "orders" / "subject.toml").write_text('compatibility = "BACKWARD"\n')
    git(tmp_path, "add", "schemas")
    git(tmp_path, "commit", "-q", "-m", "orders v1")
    git(tmp_path, "checkout", "-q", "-b", "feature")
    return tmp_path


def test_untouched_schemas_pass(repo: Path) -> None:
    result = epistle_check(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "merge base with main" in result.stdout


def test_editing_a_published_version_fails_with_the_diff(repo: Path) -> None:
    write(repo, "1.avsc", V2_COMPATIBLE)
    git(repo, "commit", "-q", "-am", "edit v1 in place")
    result = epistle_check(repo)
    assert result.returncode == 1
    assert "VERSION_EDITED" in result.stdout
    assert "add the change as a new version file" in result.stdout
    assert '+      "name": "note",' in result.stdout  # the unified diff is shown


def test_deleting_a_published_version_fails(repo: Path) -> None:
    (repo / "schemas" / "orders" / "1.avsc").unlink()
    write(repo, "2.avsc", V1)  # keep the subject loadable: now 2.avsc without 1 -> also a layout error
    result = epistle_check(repo, "--format", "json")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert {"VERSION_DELETED", "INVALID_LAYOUT"} <= {f["rule"] for f in report["findings"]}


def test_adding_a_compatible_version_passes(repo: Path) -> None:
    write(repo, "2.avsc", V2_COMPATIBLE)
    result = epistle_check(repo)
    assert result.returncode == 0, result.stdout
    assert "orders (Avro, BACKWARD, 2 versions): ok" in result.stdout


def test_adding_an_incompatible_version_fails_with_the_reason(repo: Path) -> None:
    write(repo, "2.avsc", V2_BREAKING)
    result = epistle_check(repo, "--format", "json")
    assert result.returncode == 1
    findings = json.loads(result.stdout)["findings"]
    assert [(f["rule"], f["path"], f["reader_version"], f["writer_version"]) for f in findings] == [
        ("READER_FIELD_MISSING_DEFAULT_VALUE", "$.email", 2, 1)
    ]
    assert findings[0]["message"].startswith("Consumers upgraded to v2 cannot read records written with v1")
    text = epistle_check(repo).stdout
    assert "ERROR   v2 reading v1  $.email  [READER_FIELD_MISSING_DEFAULT_VALUE]" in text


def test_on_main_itself_compares_with_head(repo: Path) -> None:
    git(repo, "checkout", "-q", "main")
    write(repo, "1.avsc", V2_COMPATIBLE)  # uncommitted edit on main
    result = epistle_check(repo)
    assert result.returncode == 1
    assert "compared with HEAD" in result.stdout and "VERSION_EDITED" in result.stdout


def test_explicit_base_and_unknown_base(repo: Path) -> None:
    write(repo, "2.avsc", V2_COMPATIBLE)
    git(repo, "add", "schemas")
    git(repo, "commit", "-q", "-m", "v2")
    write(repo, "2.avsc", V2_BREAKING)  # editing v2 is fine against main (v2 unpublished) ...
    assert "VERSION_EDITED" not in epistle_check(repo).stdout
    against_head = epistle_check(repo, "--base", "HEAD")  # ... but not against a base that has it
    assert "VERSION_EDITED" in against_head.stdout
    unknown = epistle_check(repo, "--base", "no-such-ref")
    assert unknown.returncode == 1 and "BASE_NOT_FOUND" in unknown.stdout
