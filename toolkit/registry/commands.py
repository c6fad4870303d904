"""``epistle register`` and ``epistle verify``: the local ``schemas/`` folder against a registry.

Both compare schemas by their parsed JSON (:func:`~toolkit.registry.base.same_schema`), not by text: a
registry may keep the text re-indented. Local version N must be registry version N, because a message's
``schemaVersion`` is the registry version.

What the registries do that matters here (Apicurio 3.0.9 ccompat/v7, checked against the real server):

- Registering a schema identical (by canonical content) to *any* existing version of the subject creates
  nothing and answers with that version's id, like Confluent. So a local version that repeats an earlier
  one cannot get its own number in the registry; :func:`register_schemas` reports it as a conflict.
- A new version gets the next number (max + 1); versions are never renumbered, so local N = registry N as
  long as the registry subject is only written by this command.
- ``POST /compatibility/...?verbose=true`` answers ``{"is_compatible": false}`` with no messages; the
  reasons come only with a refused registration (HTTP 409, ``RuleViolationException ... list of diff
  types: [...]``), which is what ``register`` reports.
- ``PUT /config/{subject}`` answers 40401 for a subject with no version yet, so a new subject's mode is set
  right after its version 1 (a first version is never checked). A subject mode of ``NONE`` does not
  override the global ``BACKWARD`` rule (it removes the subject's rule): Confluent differs here.
- References (a version using another subject's types) are sent as ``references``, each ``{"name",
  "subject", "version"}`` with the referenced folder's name as the subject: a subject other versions
  reference is registered under its own name first (whatever the subject strategy), then the ones using it.
  Apicurio stores and answers them as sent; a schema naming a type it does not define, sent without its
  references, is refused with HTTP 422 "Failed to discover artifact type from content".
- Its JSON Schema checker (everit) cannot read draft 2020-12 (``"$schema": ".../draft/2020-12/schema"``):
  checking such a version answers HTTP 500 "could not determine version" (drafts 4/6/7, or no
  ``$schema``, work). Retried as a server error, then reported as a ``failed`` step naming the version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from toolkit import _args
from toolkit.errors import RegistryRejected, RegistryUnavailable, SchemaNotFound
from toolkit.layout import SchemaFile, Subject
from toolkit.registry.base import (
    SchemaRegistry,
    SupportsCompatibilityConfig,
    registry_subjects,
    same_references,
    same_schema,
)

FAILED_ACTIONS = frozenset({"refused", "conflict", "would be refused", "failed"})


@dataclass(frozen=True)
class Step:
    """One thing ``register`` did (or, in a dry run, would do) for one registry subject and local version."""

    subject: str
    version: int | None
    action: str  # compatibility | unchanged | registered | refused | conflict | failed | would ...
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.action in FAILED_ACTIONS

    def __str__(self) -> str:
        where = self.subject + (f" v{self.version}" if self.version is not None else "")
        return f"{where}: {self.action}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Drift:
    """A difference between the local folder and the registry found by ``verify``."""

    subject: str
    version: int | None
    problem: str

    def __str__(self) -> str:
        return self.subject + (f" v{self.version}" if self.version is not None else "") + f": {self.problem}"


@dataclass
class VerifyReport:
    checked: int = 0
    drifts: list[Drift] = field(default_factory=list)


def _check(registry: Any, subjects: Any, strategy: Any) -> None:
    _args.has_methods("registry", registry, "get", "versions", "register", what="a SchemaRegistry")
    _args.mapping("subjects", subjects)
    for subject in subjects.values():
        _args.instance("subjects", subject, Subject, "a dict of layout.Subject (layout.load_schemas)")
    _args.text("strategy", strategy)


def register_schemas(
    registry: SchemaRegistry,
    subjects: Mapping[str, Subject],
    *,
    dry_run: bool = False,
    strategy: str = "schema_name",
    on_step: Callable[[Step], None] | None = None,
) -> list[Step]:
    """Register every local version, subject by subject, versions in order; stop at the first failure.

    Idempotent: a version already in the registry with the same content is ``unchanged``. A failing step
    (``refused`` with the registry's reasons, ``conflict`` when the registry's numbering or content differs,
    ``would be refused`` in a dry run, ``failed`` when the registry did not answer) is the last one. On
    registries that support it, each subject's compatibility mode from ``subject.toml`` is set first (an
    idempotent ``PUT /config/{subject}``).

    Raises:
        RegistryUnavailable, RegistryError: the registry cannot answer a read.
    """
    _check(registry, subjects, strategy)
    steps: list[Step] = []

    def record(step: Step) -> bool:
        steps.append(step)
        if on_step is not None:
            on_step(step)
        return not step.failed

    referenced = {ref.subject for s in subjects.values() for f in s.versions for ref in f.references}
    for subject in _dependencies_first(subjects):
        for name in _registry_names(subject, strategy, referenced):
            if not _register_subject(registry, subject, name, dry_run, record):
                return steps
    return steps


def _dependencies_first(subjects: Mapping[str, Subject]) -> list[Subject]:
    """The subjects with each one after those its versions reference (a subject-level cycle keeps its order)."""
    ordered: list[Subject] = []
    placed: set[str] = set()
    visiting: set[str] = set()

    def place(subject: Subject) -> None:
        if subject.name in placed or subject.name in visiting:
            return
        visiting.add(subject.name)
        for schema_file in subject.versions:
            for ref in schema_file.references:
                if ref.subject in subjects:
                    place(subjects[ref.subject])
        visiting.discard(subject.name)
        placed.add(subject.name)
        ordered.append(subject)

    for subject in subjects.values():
        place(subject)
    return ordered


def _registry_names(subject: Subject, strategy: str, referenced: set[str]) -> list[str]:
    """The registry subjects to register ``subject`` under: the strategy's, and its own name when other
    versions reference it (references name the folder)."""
    if subject.name not in referenced:
        return registry_subjects(subject, strategy)
    names = registry_subjects(subject, strategy) if subject.config.topics or strategy == "schema_name" else []
    return list(dict.fromkeys([subject.name, *names]))


def references_payload(schema_file: SchemaFile) -> list[dict[str, Any]]:
    """The ``references`` a version is registered with."""
    return [ref.as_dict() for ref in schema_file.references]


def _describe_refs(references: Any) -> str:
    from toolkit.references import references_of

    found = references_of(references or ())
    return ", ".join(f"{r.name} -> {r.subject} v{r.version}" for r in found) or "none"


def _register_subject(
    registry: SchemaRegistry, subject: Subject, name: str, dry_run: bool, record: Callable[[Step], bool]
) -> bool:
    mode = subject.config.compatibility
    configurable = isinstance(registry, SupportsCompatibilityConfig)

    def set_mode() -> None:
        if not dry_run:
            registry.set_compatibility(name, mode)  # type: ignore[attr-defined]
        record(Step(name, None, "would set compatibility" if dry_run else "compatibility", str(mode)))

    remote = _versions(registry, name)
    # Apicurio refuses (40401) to configure a subject that does not exist yet, and a first version is never
    # checked, so a new subject gets its mode right after version 1.
    if configurable and remote:
        set_mode()
    first_new = True
    for schema_file in subject.versions:
        number = schema_file.version
        references = references_payload(schema_file)
        extra: dict[str, Any] = {"references": references} if references else {}
        if number in remote:
            held = registry.get(name, number)
            if held.format == schema_file.format and same_schema(held.text, schema_file.text):
                if not same_references(held.references, references):
                    return record(
                        Step(
                            name,
                            number,
                            "conflict",
                            f"the registry holds version {number} with references {_describe_refs(held.references)}, "
                            f"the local one declares {_describe_refs(references)}; published versions are "
                            "immutable: add a new version with the references you want",
                        )
                    )
                record(Step(name, number, "unchanged"))
                continue
            return record(
                Step(
                    name,
                    number,
                    "conflict",
                    f"the registry holds a different {held.format} schema under version {number}; "
                    "published versions are immutable: add a new version file instead",
                )
            )
        if remote and max(remote) >= number:
            return record(
                Step(
                    name,
                    number,
                    "conflict",
                    f"the registry's versions {remote} skip {number}, "
                    f"so {schema_file.path.name} cannot get version {number} there",
                )
            )
        if dry_run:
            if first_new and remote:
                try:
                    verdict = registry.check_compatibility(name, schema_file.text, schema_file.format, **extra)
                except RegistryUnavailable as exc:
                    return record(Step(name, number, "failed", f"compatibility check: {exc}"))
                if not verdict.compatible:
                    reasons = "; ".join(verdict.messages) or "the registry gave no reasons"
                    return record(
                        Step(
                            name,
                            number,
                            "would be refused",
                            f"incompatible with version {max(remote)} under {mode}: {reasons}",
                        )
                    )
                record(Step(name, number, "would register", f"compatible with version {max(remote)}"))
            else:
                record(
                    Step(
                        name,
                        number,
                        "would register",
                        "new subject"
                        if first_new
                        else f"compatibility not checked: version {number - 1} is not registered yet",
                    )
                )
                if configurable and first_new and not remote:
                    set_mode()
            first_new = False
            continue
        try:
            got = registry.register(name, schema_file.text, schema_file.format, **extra)
        except RegistryRejected as exc:
            return record(Step(name, number, "refused", "; ".join(exc.reasons) or str(exc)))
        except RegistryUnavailable as exc:
            # Also what a registry bug looks like: Apicurio 3.0.9 answers HTTP 500 "could not determine
            # version" when asked to check a draft 2020-12 JSON Schema. Either way, name the version.
            return record(Step(name, number, "failed", str(exc)))
        if got.version != number:
            return record(
                Step(
                    name,
                    number,
                    "conflict",
                    f"the registry answered with version {got.version}: {schema_file.path.name} "
                    f"is identical to its version {got.version}, so nothing was registered; "
                    "a new version must differ from every earlier one",
                )
            )
        record(Step(name, number, "registered", f"id {got.schema_id}" if got.schema_id is not None else ""))
        if configurable and not remote:
            set_mode()
        remote.append(number)
    return True


def verify_schemas(
    registry: SchemaRegistry, subjects: Mapping[str, Subject], *, strategy: str = "schema_name"
) -> VerifyReport:
    """Every difference between the local folder and the registry, for the local subjects.

    Drifts: a subject or version missing in the registry, a different schema (parsed JSON), format or
    references under the same version, a registry version with no local file. Registry subjects with no local folder are
    not reported (a registry is usually shared).

    Raises:
        RegistryUnavailable, RegistryError: the registry cannot answer.
    """
    _check(registry, subjects, strategy)
    report = VerifyReport()
    referenced = {ref.subject for s in subjects.values() for f in s.versions for ref in f.references}
    for subject in subjects.values():
        for name in _registry_names(subject, strategy, referenced):
            remote = _versions(registry, name)
            if not remote:
                report.drifts.append(
                    Drift(name, None, f"subject missing in the registry (local versions 1..{len(subject.versions)})")
                )
                continue
            for schema_file in subject.versions:
                report.checked += 1
                if schema_file.version not in remote:
                    report.drifts.append(Drift(name, schema_file.version, "missing in the registry"))
                    continue
                held = registry.get(name, schema_file.version)
                if held.format != schema_file.format:
                    report.drifts.append(
                        Drift(
                            name,
                            schema_file.version,
                            f"format differs: local {schema_file.format}, registry {held.format}",
                        )
                    )
                elif not same_schema(held.text, schema_file.text):
                    report.drifts.append(
                        Drift(name, schema_file.version, f"content differs from {schema_file.path.name}")
                    )
                elif not same_references(held.references, references_payload(schema_file)):
                    report.drifts.append(
                        Drift(
                            name,
                            schema_file.version,
                            f"references differ: local {_describe_refs(references_payload(schema_file))}, "
                            f"registry {_describe_refs(held.references)}",
                        )
                    )
            local = {schema_file.version for schema_file in subject.versions}
            for number in sorted(set(remote) - local):
                report.drifts.append(Drift(name, number, "in the registry but not in the local folder"))
    return report


def _versions(registry: SchemaRegistry, subject: str) -> list[int]:
    try:
        return sorted(registry.versions(subject))
    except SchemaNotFound:
        return []
