"""Render a :class:`~toolkit.compat.check.CheckReport`: text for a pull-request review, JSON for machines."""

from __future__ import annotations

import json
import os
import textwrap

from toolkit.compat.check import CheckReport
from toolkit.compat.findings import Finding, Severity
from toolkit.layout import SchemaFormat

_FORMAT_NAMES = {SchemaFormat.AVRO: "Avro", SchemaFormat.JSON: "JSON Schema"}


def render_json(report: CheckReport) -> str:
    return json.dumps(
        {
            "ok": report.ok,
            "schemas": str(report.schemas_dir),
            "notes": report.notes,
            "subjects": [
                {
                    "name": s.name,
                    "format": s.format.value,
                    "compatibility": s.config.compatibility.value,
                    "versions": len(s.versions),
                }
                for s in report.subjects
            ],
            "errors": len(report.errors),
            "warnings": len(report.findings) - len(report.errors),
            "findings": [f.to_dict() for f in report.findings],
        },
        indent=2,
    )


def render_text(report: CheckReport) -> str:
    lines = [f"epistle check {report.schemas_dir}: {len(report.subjects)} subject(s)"]
    lines += [f"  note: {note}" for note in report.notes]
    by_subject: dict[str, list[Finding]] = {}
    for finding in report.findings:
        by_subject.setdefault(finding.subject, []).append(finding)
    known = {s.name: s for s in report.subjects}
    for name in sorted(set(known) | set(by_subject)):
        lines.append("")
        subject = known.get(name)
        header = (
            name
            if subject is None
            else (
                f"{name} ({_FORMAT_NAMES[subject.format]}, {subject.config.compatibility}, "
                f"{len(subject.versions)} version{'s' if len(subject.versions) != 1 else ''})"
            )
        )
        found = by_subject.get(name, [])
        lines.append(header if found else f"{header}: ok")
        for finding in found:
            lines += _finding_lines(finding)
    errors, warnings = len(report.errors), len(report.findings) - len(report.errors)
    lines += ["", f"{errors} error(s), {warnings} warning(s): {'OK' if report.ok else 'FAILED'}"]
    return "\n".join(lines)


def _finding_lines(finding: Finding) -> list[str]:
    label = "ERROR  " if finding.severity is Severity.ERROR else "warning"
    versions = ""
    if finding.reader_version and finding.writer_version:
        versions = f"v{finding.reader_version} reading v{finding.writer_version}  "
    elif finding.reader_version:
        versions = f"v{finding.reader_version}  "
    where = f"{finding.path}  " if finding.path != "$" or finding.writer_version else ""
    lines = [f"  {label} {versions}{where}[{finding.rule}]"]
    lines += textwrap.wrap(finding.message, width=100, initial_indent=" " * 10, subsequent_indent=" " * 10)
    if finding.file and not finding.writer_version:
        lines.append(" " * 10 + f"file: {finding.file}")
    if finding.detail:
        lines += [" " * 10 + line for line in finding.detail.rstrip("\n").splitlines()]
    return lines


def github_annotations(report: CheckReport) -> str:
    """``::error file=...::`` workflow commands, so findings show on the pull request's changed files."""
    if os.environ.get("GITHUB_ACTIONS") != "true":
        return ""
    out = []
    for finding in report.findings:
        level = "error" if finding.severity is Severity.ERROR else "warning"
        location = f" file={finding.file}," if finding.file else " "
        message = finding.message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        out.append(f"::{level}{location}title={finding.subject} {finding.rule} {finding.path}::{message}")
    return "\n".join(out)
