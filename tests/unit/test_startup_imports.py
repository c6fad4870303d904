"""Each `epistle` command imports only what it uses (structural checks in a fresh interpreter, no timing).

What the heavy modules cost to import is measured with `python -X importtime`, not here; these tests only check
that they stay out of the commands that do not need them.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Never needed to start the CLI or print its help.
HEAVY = [
    "jsonschema",
    "jsonschema_rs",
    "lark",
    "datamodel_code_generator",
    "confluent_kafka",
    "cookiecutter",
    "httpx",
    "pydantic",
    "pydantic_settings",
    "fastavro",
    "avro",
    "rich",
    "typer.rich_utils",
    "logging",
    "toolkit.settings",
    "toolkit.consumer",
    "toolkit.validation",
    "toolkit.codegen",
    "toolkit.registry",
]
# Not needed by `epistle check` on a folder (no registry asked): rfc3987_syntax's grammar (lark) and arrow's
# dateutil (isoduration's) included; bodies are not validated, so neither is the body validator.
NOT_FOR_CHECK = [
    "lark",
    "dateutil",
    "datamodel_code_generator",
    "confluent_kafka",
    "cookiecutter",
    "httpx",
    "pydantic_settings",
    "rich",
    "email_validator",
    "toolkit.consumer",
    "toolkit.codegen",
    "toolkit.validation",
    "toolkit.settings",
    "toolkit.registry",
]


def _loaded_after(code: str) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_none_of_the_heavy_modules() -> None:
    loaded = _loaded_after("import toolkit.cli")
    assert [name for name in HEAVY if name in loaded] == []


def test_help_loads_none_of_the_heavy_modules() -> None:
    code = "from toolkit.cli import app\ntry:\n    app(['--help'], prog_name='epistle')\nexcept SystemExit:\n    pass"
    loaded = _loaded_after(code)
    assert [name for name in HEAVY if name in loaded] == []


def test_check_loads_only_what_checking_needs() -> None:
    code = (
        f"from toolkit.cli import app\ntry:\n    app(['check', '--schemas', {str(REPO / 'schemas')!r}], "
        "prog_name='epistle')\nexcept SystemExit:\n    pass"
    )
    loaded = _loaded_after(code)
    assert [name for name in NOT_FOR_CHECK if name in loaded] == []


@pytest.mark.parametrize("module", ["rfc3987_syntax", "rfc3986_validator", "arrow"])
def test_jsonschema_imported_after_the_toolkit_defers_the_slow_format_modules(module: str) -> None:
    # All come with jsonschema's format-nongpl extra (a dependency; arrow through isoduration): a missing one
    # would pass vacuously.
    assert importlib.util.find_spec(module) is not None, f"{module} is not installed (jsonschema[format-nongpl])"
    code = (
        "import toolkit, jsonschema, types\n"
        f"module = sys.modules.get({module!r})\n"
        "print(json.dumps(module is None or type(module) is not types.ModuleType))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json, sys\n" + code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert json.loads(out) is True  # not imported, or still a shell whose code has not run


def test_deferred_format_checks_give_the_same_answers() -> None:
    # Known verdicts of jsonschema's own iri / iri-reference / uri / duration checkers (rfc3987-syntax,
    # rfc3986-validator, isoduration: its datetime form "P0003-06-04T12:30:05" is parsed by arrow, and refused
    # by jsonschema for not ending in a designator).
    cases = [
        ("iri", "http://example.com/ä", True),
        ("iri", "not an iri", False),
        ("iri-reference", "a b", False),
        ("iri-reference", "//host/päth", True),
        ("uri", "http://example.com/x", True),
        ("uri", "no scheme", False),
        ("duration", "P1DT2H", True),
        ("duration", "P", False),
        ("duration", "P0003-06-04T12:30:05", False),
        ("duration", "P2024-13-45T00:00:00", False),
    ]
    code = (
        "import json, sys, types, toolkit, jsonschema\n"
        "checker = jsonschema.FormatChecker()\n"
        f"print(json.dumps([checker.conforms(value, fmt) for fmt, value, _ in {cases!r}]))\n"
        "print(json.dumps(['lark' in sys.modules, type(sys.modules['arrow']) is types.ModuleType]))\n"
        "print(json.dumps([name in jsonschema.FormatChecker.checkers for name in ('iri', 'duration')]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.splitlines()
    assert json.loads(out[2]) == [True, True], "jsonschema[format-nongpl] is missing: no iri or duration checker"
    assert json.loads(out[0]) == [verdict for _, _, verdict in cases]
    assert json.loads(out[1]) == [True, True]  # the deferred modules did run when first used
