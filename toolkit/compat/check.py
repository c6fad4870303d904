"""``epistle check``: validity, immutability and compatibility of the whole schemas folder, in one report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit import _args
from toolkit.compat.findings import Finding, Severity
from toolkit.compat.history import check_immutable, resolve_base
from toolkit.compat.subject import INVALID_SCHEMA, UNSUPPORTED_SCHEMA, check_subject, is_compatible
from toolkit.errors import RegistryError, RegistryUnavailable, SchemaFileError
from toolkit.layout import SUBJECT_CONFIG, Compatibility, Subject, load_subject

if TYPE_CHECKING:
    from toolkit.settings import RegistrySettings


@dataclass
class CheckReport:
    schemas_dir: Path
    subjects: list[Subject] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def ok(self) -> bool:
        return not self.errors


def run_check(
    schemas_dir: Path,
    *,
    base: str | None = None,
    registry: str | RegistrySettings | None = None,
    registry_url: str | None = None,
) -> CheckReport:
    """Check every subject under ``schemas_dir``; never raises for a problem in the schemas themselves.

    ``registry`` (a URL, or settings with the URL, credentials and TLS) is also asked for its verdicts, in
    scratch subjects; where it disagrees the report has a warning. ``registry_url`` is the earlier name
    of ``registry`` for a URL, still accepted.

    Raises:
        ConfigError: the registry settings are inconsistent (credentials, TLS files).
    """
    schemas_dir = _args.path("schemas_dir", schemas_dir)
    if base is not None:
        _args.text("base", base, empty=False)
    for name, value in (("registry", registry), ("registry_url", registry_url)):
        if value is not None and not isinstance(value, str):
            from toolkit.settings import RegistrySettings

            _args.instance(name, value, RegistrySettings, "a registry URL or RegistrySettings")
    registry = registry or registry_url
    report = CheckReport(schemas_dir)
    if not schemas_dir.is_dir():
        report.findings.append(
            Finding("-", "SCHEMAS_FOLDER_MISSING", f"{schemas_dir} is not a folder.", file=str(schemas_dir))
        )
        return report
    folders = sorted(p for p in schemas_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    for folder in folders:
        try:
            subject = load_subject(folder)
        except SchemaFileError as exc:
            rule = "INVALID_SUBJECT_CONFIG" if exc.path.name == SUBJECT_CONFIG else "INVALID_LAYOUT"
            fix = f" Fix: {exc.fix}." if exc.fix else ""
            report.findings.append(
                Finding(folder.name, rule, f"{exc.problem}.{fix}", path=exc.field or "$", file=str(exc.path))
            )
            continue
        report.subjects.append(subject)
    subjects = {subject.name: subject for subject in report.subjects}
    for subject in report.subjects:
        report.findings += check_subject(subject, subjects)
    resolved = resolve_base(schemas_dir, base)
    report.notes.append(resolved.note)
    if base and resolved.ref is None:
        report.findings.append(Finding("-", "BASE_NOT_FOUND", f"{resolved.note}; pass a branch, tag or commit."))
    report.findings += check_immutable(schemas_dir, resolved)
    if registry and (isinstance(registry, str) or not registry.is_local):
        report.findings += _compare_with_registry(report, registry)
    return report


def _compare_with_registry(report: CheckReport, source: str | RegistrySettings) -> list[Finding]:
    from toolkit.compat.registry import ScratchRegistry

    invalid = {f.subject for f in report.findings if f.rule in (INVALID_SCHEMA, UNSUPPORTED_SCHEMA)}
    findings = []
    with ScratchRegistry(source) as registry:
        report.notes.append(f"compatibility verdicts also asked from the registry at {registry.url}")
        for subject in report.subjects:
            mode = subject.config.compatibility
            if subject.name in invalid or mode is Compatibility.NONE:
                continue
            if any(version.references for version in subject.versions):
                # Scratch subjects would need the referenced schemas registered too: not compared.
                report.notes.append(f"{subject.name}: has references, not compared with the registry's verdicts")
                continue
            documents = [v.document for v in subject.versions]
            for new in range(2, len(documents) + 1):
                ours = is_compatible(subject.format, mode, documents[:new])
                try:
                    theirs = registry.verdict(subject.format, mode, documents[:new], label=subject.name)
                except RegistryUnavailable as exc:
                    findings.append(Finding(subject.name, "REGISTRY_ERROR", f"{exc}.", reader_version=new))
                    if exc.status is None:  # no answer at all: the next subjects would fail the same way
                        return findings
                    break  # a server error on this subject's schemas (Apicurio and draft 2020-12): go on
                except RegistryError as exc:  # e.g. it refuses the schema itself: go on with the next subject
                    findings.append(
                        Finding(
                            subject.name,
                            "REGISTRY_ERROR",
                            f"the registry could not judge v{new}: {exc}.",
                            reader_version=new,
                        )
                    )
                    break
                if ours == theirs.compatible:
                    continue
                verb = ("accepts", "rejects") if theirs.compatible else ("rejects", "accepts")
                reasons = f" Registry says: {'; '.join(theirs.messages)}" if theirs.messages else ""
                findings.append(
                    Finding(
                        subject.name,
                        "REGISTRY_DISAGREES",
                        f"the registry {verb[0]} v{new} under {mode} but this check "
                        f"{verb[1]} it; "
                        f"registering it will {'succeed' if theirs.compatible else 'fail'}." + reasons,
                        severity=Severity.WARNING,
                        reader_version=new,
                        file=str(subject.versions[new - 1].path),
                    )
                )
    return findings
