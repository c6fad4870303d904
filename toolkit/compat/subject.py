"""Per-subject checks with no I/O: every version file is a valid schema (:mod:`toolkit.formats`, the rules
codegen and the runtime apply), and versions evolve per the mode."""

from __future__ import annotations

from typing import Any

from toolkit import _args
from toolkit.compat.findings import Finding, Issue, finding_for, reader_writer_pairs
from toolkit.errors import InvalidArgumentType, UnsupportedSchema
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


def validate_file(schema: SchemaFile) -> list[Finding]:
    """The file is a valid schema of its format that codegen can express: the same rules as codegen and the
    runtime (:mod:`toolkit.formats`). One finding per problem, with the JSON path and the fix."""
    fmt = format_for(schema.format)
    findings = []
    for problem in fmt.problems(schema.path, schema.document):
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


def check_subject(subject: Subject) -> list[Finding]:
    """Validity of every version, then compatibility of each version with its predecessors per the mode.

    Every version after the first is checked as if it were being registered now, against the previous
    version (non-transitive modes) or all earlier ones (*_TRANSITIVE), in the direction(s) of the mode.
    Pure: no I/O beyond what is already in ``subject``.
    """
    _args.instance("subject", subject, Subject, "a layout.Subject (layout.load_subject)")
    findings = [f for schema in subject.versions for f in validate_file(schema)]
    if any(f.rule == INVALID_SCHEMA for f in findings):  # comparing invalid schemas would only add noise
        return findings
    canonical = [canonical_json(schema.document) for schema in subject.versions]
    for later in subject.versions[1:]:
        for earlier in subject.versions[: later.version - 1]:
            if canonical[later.version - 1] == canonical[earlier.version - 1]:
                findings.append(
                    Finding(
                        subject.name,
                        "DUPLICATE_VERSION",
                        f"v{later.version} is identical to v{earlier.version}; a registry "
                        f"does not "
                        f"create a new version for it (it returns v{earlier.version}'s id), "
                        f"so "
                        "version numbers here and in the registry would part ways. Change "
                        "it or "
                        "remove it.",
                        file=str(later.path),
                        reader_version=later.version,
                    )
                )
                break
    mode = subject.config.compatibility
    for new in range(2, len(subject.versions) + 1):
        for reader, writer in reader_writer_pairs(mode, new):
            reader_doc = subject.versions[reader - 1].document  # the pairs are within 1..new
            writer_doc = subject.versions[writer - 1].document
            # both already validated above: straight to the comparison
            for issue in format_for(subject.format).compatibility(reader_doc, writer_doc):
                findings.append(
                    finding_for(subject.name, reader, writer, issue, file=str(subject.versions[new - 1].path))
                )
    return _unique(findings)


def _unique(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))
