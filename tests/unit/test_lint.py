"""The code base is formatted by ruff and passes ruff and mypy (their settings in pyproject.toml): a format,
lint or type error fails the suite, and so CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run(
        [ruff, "check", "--output-format", "concise", "toolkit", "tests", "scripts", "bench", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_formatted_by_ruff() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run(
        [ruff, "format", "--check", "toolkit", "tests", "scripts", "bench", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, "run `ruff format` (make lint): " + result.stdout + result.stderr


def test_mypy_finds_nothing_in_toolkit(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        from mypy import api
    except ImportError:
        pytest.fail("mypy is a dev dependency: pip install -e '.[dev]'")
    # From the repository root: the config's exclude patterns are paths relative to it, and the
    # incremental cache (.mypy_cache/, git-ignored) makes later runs take a second or two.
    monkeypatch.chdir(ROOT)
    stdout, stderr, status = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--no-pretty", "--no-error-summary", "toolkit"]
    )
    errors = [line for line in stdout.splitlines() if ": error: " in line]
    assert status == 0 and not errors, f"mypy found {len(errors)} error(s):\n" + (stdout + stderr).strip()
