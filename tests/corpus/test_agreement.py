"""Over real public schemas, what the validator accepts the generated model accepts and gives
back unchanged (see agreement.py for what is generated and judged; SOURCES.md for where each schema is from).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis_jsonschema._canonicalise import HypothesisRefResolutionError

from tests.corpus.agreement import (
    REFUSED,
    Subject,
    Tally,
    hypothesis_jsonschema_compat,
    judge,
    load_corpus,
    mutants,
    valid_bodies,
)
from tests.corpus.conftest import TALLIES

EXAMPLES = 20
# hypothesis-jsonschema takes seconds per body on these (large oneOf/anyOf trees, open objects): fewer
# bodies keep the whole corpus run near two minutes on two cores.
FEWER_EXAMPLES = {
    "readthedocs": 3,
    "feed-1": 5,
    "taskfile": 4,
    "github-actions": 5,
    "dotnet-releases-index": 5,
    "json-patch": 8,
    "web-manifest-share-target": 8,
    "odgs-ontology-graph": 8,
    "schema-catalog": 8,
}
SUBJECTS = sorted(load_corpus())


@pytest.mark.parametrize("name", SUBJECTS)
def test_validator_and_model_agree(name: str, corpus_subjects: dict[str, Subject]) -> None:
    subject = corpus_subjects[name]
    if name in REFUSED:
        words, why = REFUSED[name]
        assert subject.refused is not None and words in subject.refused, subject.refused
        pytest.skip(f"refused by toolkit.formats (epistle check and codegen), listed in REFUSED: {why}")
    assert subject.refused is None, f"refused by toolkit.formats and not listed in REFUSED: {subject.refused}"
    assert subject.error is None, subject.error
    tally = TALLIES[name] = Tally()
    rng = random.Random(name)
    bodies = valid_bodies(subject.schema_file)

    @settings(
        max_examples=FEWER_EXAMPLES.get(name, EXAMPLES),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(bodies)
    def run(body: object) -> None:
        tally.valid += 1
        judge(subject, body, tally, "valid")
        for mutant in mutants(body, rng):
            tally.mutants += 1
            judge(subject, mutant, tally, "mutant")

    try:
        with hypothesis_jsonschema_compat():
            run()
    except HypothesisRefResolutionError as exc:
        # hypothesis-jsonschema cannot draw bodies for recursive $refs; the model was still generated.
        pytest.skip(f"hypothesis-jsonschema cannot generate bodies for this schema: {str(exc)[:100]}")
    failures = sorted(set(tally.failures))
    assert not failures, f"{len(failures)} disagreement(s):\n" + "\n".join(failures[:15])
    assert tally.valid_accepted > 0, f"no generated body was accepted by the validator ({tally.kinds})"


def test_the_refused_corpus_schemas_are_the_listed_ones(corpus_subjects: dict[str, Subject]) -> None:
    refused = {name: subject.refused for name, subject in corpus_subjects.items() if subject.refused}
    assert sorted(refused) == sorted(REFUSED)
    for name, (words, _) in REFUSED.items():
        assert words in refused[name] and "fix:" in refused[name], refused[name]


def test_the_hypothesis_jsonschema_shim_is_scoped_to_its_block() -> None:
    from hypothesis.internal.conjecture import utils as cu

    from toolkit.layout import SchemaFile, SchemaFormat

    before = cu.many.__dict__.get("more")
    document = {
        "type": "object",
        "required": ["a"],
        "minProperties": 2,
        "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
    }
    bodies = valid_bodies(SchemaFile("shim", 1, SchemaFormat.JSON, Path("shim/1.json"), "", document))
    drawn: list[object] = []

    @settings(max_examples=10, derandomize=True, database=None, deadline=None)
    @given(bodies)
    def run(body: object) -> None:
        drawn.append(body)

    with hypothesis_jsonschema_compat():
        run()
    assert drawn and all(isinstance(body, dict) and "a" in body and len(body) >= 2 for body in drawn)
    assert cu.many.__dict__.get("more") is before  # nothing left behind for the rest of the session
