"""Per-subject checks with no I/O: every version file is a valid schema (:mod:`toolkit.formats`, the rules
codegen and the runtime apply), and versions evolve per the mode."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from toolkit import _args
from toolkit.compat.findings import Finding, Issue, finding_for, reader_writer_pairs
from toolkit.errors import InvalidArgumentType, SchemaFileError, UnsupportedSchema
from toolkit.formats import format_for
from toolkit.layout import Compatibility, SchemaFile, SchemaFormat, Subject, canonical_json


def check_pair(schema_format: SchemaFormat, reader: Any, writer: Any) -> list[Issue]:
    """Why a consumer with the ``reader`` schema cannot read what the ``writer`` schema allows.

    Both are raw schema documents (parsed JSON).

    Raises:
        SchemaFileError: ``reader`` or ``writer`` is not a valid schema of ``schema_format`` (the path is
            ``reader`` / ``writer``); a valid schema codegen cannot express is compared all the same.
        InvalidArgument: ``schema_format`` is not JSON or AVRO.
    """
    fmt = format_for(schema_format)
    for label, document in (("reader", reader), ("writer", writer)):
        fmt.validate(label, document, codegen=False)
    return fmt.compatibility(reader, writer)


def is_compatible(schema_format: SchemaFormat, mode: Compatibility, versions: list[Any]) -> bool:
    """Would registering the last of ``versions`` (raw documents, oldest first) pass under ``mode``?"""
    mode = Compatibility(mode)
    if not isinstance(versions, list | tuple):
        raise InvalidArgumentType(
            f"versions: expected a list of schema documents, got {type(versions).__name__}", argument="versions"
        )
    new = len(versions)
    return not any(
        issue.severity == "error"
        for reader, writer in reader_writer_pairs(mode, new)
        for issue in check_pair(schema_format, versions[reader - 1], versions[writer - 1])
    )


INVALID_SCHEMA = "INVALID_SCHEMA"
UNSUPPORTED_SCHEMA = "UNSUPPORTED_SCHEMA"
INVALID_REFERENCE = "INVALID_REFERENCE"


def validate_file(schema: SchemaFile, references: tuple[tuple[str, Any], ...] = ()) -> list[Finding]:
    """The file is a valid schema of its format that codegen can express: the same rules as codegen and the
    runtime (:mod:`toolkit.formats`), ``references`` resolved (``(name, document)``, dependencies first). One
    finding per problem, with the JSON path and the fix."""
    fmt = format_for(schema.format)
    findings = []
    for problem in fmt.problems(schema.path, schema.document, references):
        unsupported = isinstance(problem, UnsupportedSchema)
        what = "uses a construct codegen cannot express" if unsupported else f"is not a valid {fmt.label}"
        fix = f" Fix: {problem.fix}." if problem.fix else ""
        findings.append(
            Finding(
                schema.subject,
                UNSUPPORTED_SCHEMA if unsupported else INVALID_SCHEMA,
                f"v{schema.version} {what}: {problem.problem}.{fix}",
                path=problem.field or "$",
                file=str(schema.path),
                reader_version=schema.version,
            )
        )
    return findings


def _resolved(schema: SchemaFile, subjects: Mapping[str, Subject] | None) -> tuple[tuple[str, SchemaFile], ...]:
    if not schema.references:
        return ()
    from toolkit.references import resolve

    return resolve(schema, subjects or {})


def check_subject(subject: Subject, subjects: Mapping[str, Subject] | None = None) -> list[Finding]:
    """Validity of every version, then compatibility of each version with its predecessors per the mode.

    Every version after the first is checked as if it were being registered now, against the previous
    version (non-transitive modes) or all earlier ones (*_TRANSITIVE), in the direction(s) of the mode.
    Versions with references are resolved in ``subjects`` (every subject of the folder) and compared with
    the referenced types in place, so a change of a referenced schema that breaks a referencing one is a
    finding of the referencing subject naming the referenced version on either side.
    Pure: no I/O beyond what is already in ``subject``.
    """
    _args.instance("subject", subject, Subject, "a layout.Subject (layout.load_subject)")
    findings: list[Finding] = []
    resolved: list[tuple[tuple[str, SchemaFile], ...]] = []
    for schema in subject.versions:
        try:
            resolved.append(_resolved(schema, subjects))
        except SchemaFileError as exc:
            fix = f" Fix: {exc.fix}." if exc.fix else ""
            findings.append(
                Finding(
                    subject.name,
                    INVALID_REFERENCE,
                    f"v{schema.version}: {exc.problem}.{fix}",
                    path=exc.field or "$",
                    file=str(exc.path),
                    reader_version=schema.version,
                )
            )
            resolved.append(())
    if findings:
        return findings
    documents = [tuple((name, f.document) for name, f in refs) for refs in resolved]
    findings = [
        f for schema, refs in zip(subject.versions, documents, strict=True) for f in validate_file(schema, refs)
    ]
    if any(f.rule == INVALID_SCHEMA for f in findings):  # comparing invalid schemas would only add noise
        return findings
    # a registry keys a version by its text and its references: the same text with other references is new
    identity = [
        (canonical_json(schema.document), sorted((r.name, r.subject, r.version) for r in schema.references))
        for schema in subject.versions
    ]
    for later in subject.versions[1:]:
        for earlier in subject.versions[: later.version - 1]:
            if identity[later.version - 1] == identity[earlier.version - 1]:
                same_refs = " (and the same references)" if later.references else ""
                findings.append(
                    Finding(
                        subject.name,
                        "DUPLICATE_VERSION",
                        f"v{later.version} is identical to v{earlier.version}{same_refs}; a registry does not "
                        f"create a new version for it (it returns v{earlier.version}'s id), so version numbers "
                        "here and in the registry would part ways. Change it or remove it.",
                        file=str(later.path),
                        reader_version=later.version,
                    )
                )
                break
    mode = subject.config.compatibility
    standalone = [_standalone(schema, refs) for schema, refs in zip(subject.versions, documents, strict=True)]
    for new in range(2, len(subject.versions) + 1):
        for reader, writer in reader_writer_pairs(mode, new):
            reader_doc = standalone[reader - 1]  # the pairs are within 1..new
            writer_doc = standalone[writer - 1]
            changed = _changed_references(resolved[reader - 1], resolved[writer - 1])
            # both already validated above: straight to the comparison
            for issue in format_for(subject.format).compatibility(reader_doc, writer_doc):
                finding = finding_for(subject.name, reader, writer, issue, file=str(subject.versions[new - 1].path))
                if changed:
                    finding = replace(finding, message=f"{finding.message} {changed}")
                findings.append(finding)
    return _unique(findings)


def _standalone(schema: SchemaFile, references: tuple[tuple[str, Any], ...]) -> Any:
    """The document with what it references in place (one self-contained document to compare)."""
    from toolkit.references import bundle_json, expand_avro

    if not references:
        return schema.document
    if schema.format is SchemaFormat.AVRO:
        return expand_avro(schema.document, references)
    return bundle_json(schema.document, references)


def _changed_references(reader: tuple[tuple[str, SchemaFile], ...], writer: tuple[tuple[str, SchemaFile], ...]) -> str:
    """Which referenced schemas differ between the reader's and the writer's version, naming both files: the
    referenced change may be what breaks the readers."""
    readers = {name: f for name, f in reader}
    changes = []
    for name, written in writer:
        read = readers.get(name)
        if read is not None and (read.subject, read.version) != (written.subject, written.version):
            changes.append(
                f"{name!r} is {read.subject} v{read.version} ({read.path}) for the reader and "
                f"{written.subject} v{written.version} ({written.path}) for the writer"
            )
    return f"Through the referenced type(s): {'; '.join(changes)}." if changes else ""


def _unique(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))
