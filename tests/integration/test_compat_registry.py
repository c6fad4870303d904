"""Our verdicts against the real registry's, for the whole table of tests/compat_cases.py.

A disagreement is a finding, not a failure: every one is written to tests/compat_registry_disagreements.md
(with the registry's answer) so it can be reviewed and cited. The test fails only if the registry errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from tests.compat_cases import CASES
from toolkit.compat import is_compatible
from toolkit.compat.registry import ScratchRegistry
from toolkit.errors import RegistryError
from toolkit.layout import Compatibility

# The committed report (tests/compat_registry_disagreements.md) is rewritten only on request,
# EPISTLE_WRITE_COMPAT_REPORT=1, so a test run never dirties a checkout; otherwise it goes to .cache/.
_COMMITTED = Path(__file__).resolve().parent.parent / "compat_registry_disagreements.md"
REPORT = (
    _COMMITTED
    if os.environ.get("EPISTLE_WRITE_COMPAT_REPORT") == "1"
    else Path(__file__).resolve().parents[2] / ".cache" / "compat_registry_disagreements.md"
)
PAIR_MODES = (Compatibility.BACKWARD, Compatibility.FORWARD, Compatibility.FULL)
CHAIN_MODES = (
    *PAIR_MODES,
    Compatibility.BACKWARD_TRANSITIVE,
    Compatibility.FORWARD_TRANSITIVE,
    Compatibility.FULL_TRANSITIVE,
)


def _registry_product(url: str) -> str:
    try:
        root = url.split("/apis/ccompat")[0]
        info = httpx.get(f"{root}/apis/registry/v3/system/info", timeout=10).json()
        return f"{info.get('name', 'registry')} {info.get('version', '')}".strip()
    except Exception:
        return url


def _short(message: str) -> str:
    """Apicurio's message minus the exception class and scratch subject name: the diff types and paths."""
    found = re.search(r"list of diff types: (.*)", message)
    text = found.group(1) if found else message
    return text.replace("|", "\\|").replace("\n", " ")[:300]


def test_our_verdicts_against_the_registry(registry_url: str) -> None:
    rows, errors, compared = [], [], 0
    cases = [case for case in CASES if case.registry]  # the others are draft 2020-12, which Apicurio refuses
    with ScratchRegistry(registry_url, prefix=f"epistle-table-{os.getpid()}") as registry:
        for case in cases:
            for mode in CHAIN_MODES if case.chain else PAIR_MODES:
                ours = is_compatible(case.format, mode, list(case.versions))
                assert ours == case.expected[mode], f"{case.id} {mode}: unit table and checker disagree"
                try:
                    theirs = registry.verdict(case.format, mode, list(case.versions), label=case.id[:40])
                except RegistryError as exc:
                    errors.append(f"{case.id} {mode}: {exc}")
                    continue
                compared += 1
                if theirs.compatible != ours:
                    rows.append((case, mode, ours, theirs))
    product = _registry_product(registry_url)
    lines = [
        "# Where the registry's compatibility verdict differs from `epistle check`",
        "",
        f"Written by `tests/integration/test_compat_registry.py` against {product} "
        f"(Confluent-compatible API). {compared} verdicts compared over {len(cases)} cases of "
        f"`tests/compat_cases.py` ({len(CASES) - len(cases)} draft 2020-12 cases it cannot register are left out); "
        '{n} differ. "ours" is what `epistle check` decides (Avro: Apache Avro\'s '
        'checker; JSON Schema: Confluent\'s documented rules); "registry" is whether it accepted the last '
        "version of the chain.".replace("{n}", str(len(rows))),
        "",
        "| case | format | mode | ours | registry | registry message | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, mode, ours, theirs in rows:
        message = _short("; ".join(theirs.messages))
        lines.append(
            f"| {case.id} | {case.format.value} | {mode.value} | "
            f"{'compatible' if ours else 'incompatible'} | "
            f"{'compatible' if theirs.compatible else 'incompatible'} | {message} | {case.note} |"
        )
    if errors:
        lines += ["", "## Registry errors (not verdicts)", ""] + [f"- {e}" for e in errors]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"\n{len(rows)} disagreement(s) of {compared} verdicts; see {REPORT}")
    assert not errors, f"the registry errored on {len(errors)} check(s): {errors[:3]}"
    assert compared >= 2 * len(cases)


@pytest.mark.parametrize("mode", [Compatibility.BACKWARD, Compatibility.FORWARD])
def test_registry_client_sees_an_obvious_break(registry_url: str, mode: Compatibility) -> None:
    """Guards the comparison itself: if this fails, the disagreement list above means nothing."""
    from toolkit.layout import SchemaFormat

    old = {"type": "record", "name": "E", "fields": [{"name": "a", "type": "string"}]}
    new = {"type": "record", "name": "E", "fields": [{"name": "a", "type": "int"}]}
    with ScratchRegistry(registry_url) as registry:
        assert registry.verdict(SchemaFormat.AVRO, mode, [old, old]).compatible
        assert not registry.verdict(SchemaFormat.AVRO, mode, [old, new]).compatible


@pytest.mark.parametrize(
    "case_id,mode,accepted",
    [
        ("json-oneof-to-anyof", Compatibility.FORWARD, False),  # old readers' oneOf, new anyOf: was "compatible"
        ("audit-dependency-schema-removed", Compatibility.FORWARD, False),  # a dependency dropped: was "compatible"
        ("audit-anyof-to-oneof", Compatibility.BACKWARD, False),  # readers cope (disjoint types); refused all the same
        ("audit-anyof-to-oneof-overlapping", Compatibility.BACKWARD, False),  # an integer matches both branches
        ("audit-const-removed", Compatibility.BACKWARD, False),  # readers cope; the registry refuses all the same
        ("avro-renamed-with-short-alias-in-namespace", Compatibility.BACKWARD, True),  # short alias, Java's way
    ],
)
def test_the_registry_agrees_on_the_changes_the_audit_fixed(
    registry_url: str, case_id: str, mode: Compatibility, accepted: bool
) -> None:
    case = next(c for c in CASES if c.id == case_id)
    assert is_compatible(case.format, mode, list(case.versions)) is accepted
    with ScratchRegistry(registry_url) as registry:
        verdict = registry.verdict(case.format, mode, list(case.versions), label=case_id[:40])
    assert verdict.compatible is accepted, verdict.messages
