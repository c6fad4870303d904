"""Session fixtures for the corpus agreement tests: the corpus models are generated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.corpus.agreement import REFUSED, Subject, Tally, build_subjects

TALLIES: dict[str, Tally] = {}


@pytest.fixture(scope="session")
def corpus_subjects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Subject]:
    out: Path = tmp_path_factory.mktemp("corpus_models")
    return build_subjects(out)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 - pytest's signature
    if not TALLIES:
        return
    total = Tally()
    for tally in TALLIES.values():
        for name in (
            "valid",
            "valid_accepted",
            "mutants",
            "mutants_accepted",
            "mutants_rejected",
            "model_also_rejects",
            "agreed",
        ):
            setattr(total, name, getattr(total, name) + getattr(tally, name))
        total.failures += tally.failures
        total.kinds.update(tally.kinds)
    accepted = total.valid_accepted + total.mutants_accepted
    share = 100.0 * total.agreed / accepted if accepted else 100.0
    terminalreporter.write_sep("-", "validator/model agreement over the corpus")
    terminalreporter.write_line(
        f"{len(TALLIES)} schemas; valid bodies generated {total.valid} (validator accepts {total.valid_accepted}); "
        f"mutants {total.mutants} (validator accepts {total.mutants_accepted}, rejects {total.mutants_rejected}; "
        f"the model alone also rejects {total.model_also_rejects} of the JSON Schema ones); "
        f"agreement on accepted bodies {total.agreed}/{accepted} = {share:.1f}%"
    )
    for what, count in sorted(total.kinds.items()):
        terminalreporter.write_line(f"  {what}: {count}")
    terminalreporter.write_line(f"refused by toolkit.formats, not judged: {len(REFUSED)}")
    for name, (_, why) in sorted(REFUSED.items()):
        terminalreporter.write_line(f"  {name}: {why}")
