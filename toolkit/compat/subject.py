"""Per-subject checks with no I/O: every version file is a valid schema, and versions evolve per the mode."""

from __future__ import annotations

from typing import Any

from toolkit.compat import avro as avro_compat
from toolkit.compat import json_schema as json_compat
from toolkit.compat.findings import Finding, Issue, finding_for, reader_writer_pairs
from toolkit.layout import Compatibility, SchemaFile, SchemaFormat, Subject


def check_pair(schema_format: SchemaFormat, reader: Any, writer: Any) -> list[Issue]:
    """Why a consumer with the ``reader`` schema cannot read what the ``writer`` schema allows.

    Both are raw schema documents (parsed JSON)."""
    if schema_format is SchemaFormat.AVRO:
        return avro_compat.check(reader, writer)
    return json_compat.check(reader, writer)


def is_compatible(schema_format: SchemaFormat, mode: Compatibility, versions: list[Any]) -> bool:
    """Would registering the last of ``versions`` (raw documents, oldest first) pass under ``mode``?"""
    new = len(versions)
    return not any(issue.severity == "error"
                   for reader, writer in reader_writer_pairs(mode, new)
                   for issue in check_pair(schema_format, versions[reader - 1], versions[writer - 1]))


def validate_file(schema: SchemaFile) -> list[Finding]:
    """The file is a schema of its format: JSON Schema meta-schema, or parseable by Avro and fastavro."""
    problem = _schema_problem(schema.format, schema.document)
    if problem is None:
        return []
    return [Finding(schema.subject, "INVALID_SCHEMA", f"v{schema.version} is not a valid "
                    f"{'Avro schema' if schema.format is SchemaFormat.AVRO else 'JSON Schema'}: {problem}.",
                    file=str(schema.path), reader_version=schema.version)]


def _schema_problem(schema_format: SchemaFormat, document: Any) -> str | None:
    if schema_format is SchemaFormat.AVRO:
        import fastavro

        try:
            avro_compat.parse_avro(document)
            fastavro.parse_schema(document, _write_hint=False)
        except Exception as exc:  # both libraries raise their own exception trees
            return f"{type(exc).__name__}: {exc}"
        return None
    from jsonschema import exceptions, validators

    if not isinstance(document, (dict, bool)):
        return f"a JSON Schema is an object or a boolean, not {type(document).__name__}"
    cls = validators.validator_for(document, default=validators.Draft202012Validator)
    try:
        cls.check_schema(document)
    except exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        return f"{exc.message} at {where}"
    return None


def check_subject(subject: Subject) -> list[Finding]:
    """Validity of every version, then compatibility of each version with its predecessors per the mode.

    Every version after the first is checked as if it were being registered now, against the previous
    version (non-transitive modes) or all earlier ones (*_TRANSITIVE), in the direction(s) of the mode.
    Pure: no I/O beyond what is already in ``subject``.
    """
    findings = [f for schema in subject.versions for f in validate_file(schema)]
    if findings:  # comparing invalid schemas would only add noise
        return findings
    for later in subject.versions[1:]:
        for earlier in subject.versions[:later.version - 1]:
            if later.document == earlier.document:
                findings.append(Finding(subject.name, "DUPLICATE_VERSION",
                                        f"v{later.version} is identical to v{earlier.version}; a registry "
                                        f"does not "
                                        f"create a new version for it (it returns v{earlier.version}'s id), "
                                        f"so "
                                        "version numbers here and in the registry would part ways. Change "
                                        "it or "
                                        "remove it.", file=str(later.path), reader_version=later.version))
                break
    mode = subject.config.compatibility
    for new in range(2, len(subject.versions) + 1):
        for reader, writer in reader_writer_pairs(mode, new):
            reader_doc = subject.version(reader).document
            writer_doc = subject.version(writer).document
            for issue in check_pair(subject.format, reader_doc, writer_doc):
                findings.append(finding_for(subject.name, reader, writer, issue,
                                            file=str(subject.version(new).path)))
    return _unique(findings)


def _unique(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))
