"""Offline schema-evolution checks: validity, immutability against git, compatibility per subject mode.

Avro verdicts come from Apache Avro's ``avro.compatibility`` checker; JSON Schema verdicts from
:mod:`toolkit.compat.json_schema`, which implements the rules Confluent Schema Registry documents.
"""

from toolkit.compat.check import CheckReport, run_check
from toolkit.compat.findings import Finding, Issue, Severity, reader_writer_pairs
from toolkit.compat.subject import check_pair, check_subject, is_compatible

__all__ = [
    "CheckReport",
    "Finding",
    "Issue",
    "Severity",
    "check_pair",
    "check_subject",
    "is_compatible",
    "reader_writer_pairs",
    "run_check",
]
