"""What a check reports: :class:`Finding`, and which version pairs a compatibility mode compares.

A format checker (Avro, JSON Schema) answers one question: can a consumer holding the *reader* schema read
everything a producer holding the *writer* schema may write?  It returns :class:`Issue` objects that describe
the difference without knowing versions; :func:`finding_for` turns one into a :class:`Finding` with the
subject, the two versions and one sentence on who breaks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from toolkit import _args
from toolkit.layout import Compatibility


class Severity(StrEnum):
    ERROR = "error"  # the check fails
    WARNING = "warning"  # shown in the review, does not fail the check


@dataclass(frozen=True)
class Issue:
    """One reason a reader schema does not accept what a writer schema allows.

    ``what`` completes the sentence "consumers ... cannot read records ...: <what>", in terms of reader and
    writer, e.g. "field 'email' is missing from the writer's records and the reader gives it no default".
    """

    path: str
    rule: str
    what: str
    severity: Severity = Severity.ERROR
    # Confluent Schema Registry's expected verdict on the change, when it is not the same as ours: "accepts"
    # (an error: this check is deliberately stricter), "refuses" (a warning, or an error readers cope with), or
    # "unknown" (e.g. it depends on a remote reference); empty = it agrees (an error it refuses, a warning it
    # accepts: neither fails the check).
    confluent: str = ""
    # False for a change that readers cope with but that Confluent refuses: the registration fails at deploy.
    readers_break: bool = True

    @property
    def confluent_accepts(self) -> bool:
        if self.confluent:
            return self.confluent == ACCEPTS
        return self.severity is Severity.WARNING


ACCEPTS, REFUSES, UNKNOWN = "accepts", "refuses", "unknown"


@dataclass(frozen=True)
class Finding:
    """One problem in the schemas folder, fit for a pull-request review and for machines (``to_dict``)."""

    subject: str
    rule: str
    message: str
    severity: Severity = Severity.ERROR
    path: str = "$"
    reader_version: int | None = None
    writer_version: int | None = None
    file: str | None = None
    detail: str | None = None  # e.g. the unified diff of an edited published version
    # compatibility findings carry two verdicts: ours on the readers ("breaks", "may break", "copes") and
    # the one Confluent Schema Registry is expected to give when the version is registered ("accepts",
    # "refuses"); None for findings that are not about a reader/writer pair
    readers: str | None = None
    confluent: str | None = None

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Severity) else v) for k, v in asdict(self).items()}


def finding_for(subject: str, reader: int, writer: int, issue: Issue, *, file: str | None = None) -> Finding:
    if reader > writer:
        who = f"Consumers upgraded to v{reader} cannot read records written with v{writer}"
    else:
        who = f"Consumers still on v{reader} cannot read records that producers write with v{writer}"
    readers = "breaks"
    if issue.severity is Severity.WARNING:
        who, readers = f"Consumers on v{reader} may mis-read records written with v{writer}", "may break"
    if not issue.readers_break:
        who, readers = f"Consumers on v{reader} can read records written with v{writer}", "copes"
    accepts = issue.confluent_accepts
    if issue.confluent == UNKNOWN:
        verdict = "what Confluent Schema Registry decides depends on what this check could not compare"
    elif not issue.readers_break or (issue.severity is Severity.WARNING and not accepts):
        verdict = (
            "but Confluent Schema Registry refuses this change, so registering the new version will fail at deploy time"
        )
    elif issue.severity is Severity.WARNING:  # a warning does not fail the check: Confluent accepting it agrees
        verdict = "Confluent Schema Registry accepts it too (a warning does not fail this check either)"
    elif accepts:
        verdict = "Confluent Schema Registry would accept this change (this check is stricter)"
    else:
        verdict = "Confluent Schema Registry refuses it too"
    return Finding(
        subject=subject,
        rule=issue.rule,
        message=f"{who}: {issue.what}; {verdict}.",
        severity=issue.severity,
        path=issue.path,
        reader_version=reader,
        writer_version=writer,
        file=file,
        readers=readers,
        confluent=UNKNOWN if issue.confluent == UNKNOWN else ACCEPTS if accepts else REFUSES,
    )


_BACKWARD = {
    Compatibility.BACKWARD,
    Compatibility.BACKWARD_TRANSITIVE,
    Compatibility.FULL,
    Compatibility.FULL_TRANSITIVE,
}
_FORWARD = {Compatibility.FORWARD, Compatibility.FORWARD_TRANSITIVE, Compatibility.FULL, Compatibility.FULL_TRANSITIVE}
_TRANSITIVE = {Compatibility.BACKWARD_TRANSITIVE, Compatibility.FORWARD_TRANSITIVE, Compatibility.FULL_TRANSITIVE}


def reader_writer_pairs(mode: Compatibility, new: int) -> list[tuple[int, int]]:
    """The (reader, writer) version pairs that registering version ``new`` is checked with under ``mode``.

    Confluent's meaning: BACKWARD = the new schema reads data written with the old one; FORWARD = the old
    schema reads data written with the new one; FULL = both. Non-transitive modes compare with the previous
    version only, the *_TRANSITIVE modes with every earlier version.
    """
    mode = Compatibility(mode)
    _args.integer("new", new, low=1, fix=" (the version being registered)")
    if mode is Compatibility.NONE or new < 2:
        return []
    olds = range(new - 1, 0, -1) if mode in _TRANSITIVE else [new - 1]
    pairs = []
    for old in olds:
        if mode in _BACKWARD:
            pairs.append((new, old))
        if mode in _FORWARD:
            pairs.append((old, new))
    return pairs
