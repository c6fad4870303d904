"""The local ``schemas/`` folder as a read-only registry: the embedded default, no server needed.

The folder is the source of truth and is changed by pull requests, not by this client, so:

- lookups read the folder once (on first use) and answer from memory; :meth:`LocalFolderRegistry.reload`
  re-reads it, and so does a lookup that finds nothing (at most once per ``rescan_interval_s``, 1 s by
  default), so a version file added while the consumer runs is found (a record waiting out its
  unknown-schema grace finds it on its next retry). A folder that cannot be read at that moment (a file
  half-written) keeps the previous view and answers *not found* until a later re-read succeeds;
- :meth:`~LocalFolderRegistry.register` writes nothing: a schema identical to an existing version is returned
  as that version (the protocol's idempotence), anything else is refused with the fix (add a version file);
- :meth:`~LocalFolderRegistry.check_compatibility` answers only for an identical schema; real compatibility
  checks between versions are ``epistle check``'s job (or an HTTP registry's).

Schema ids: the folder has none (a version is a file, numbered per subject), so records in Confluent's wire
format, which name their schema by a registry-wide id, cannot be read with it: ``supports_schema_ids`` is
False and :meth:`~LocalFolderRegistry.get_by_id` raises :class:`~toolkit.errors.ConfigError` saying to set
``SCHEMA_REGISTRY_URL`` (the consumer checks this when it starts, before any record is read).

Subject names: a folder is a subject (the default strategy, subject = schemaName). For Confluent's
``<topic>-value`` strategy, ``<topic>-value`` resolves to the one subject whose ``subject.toml`` lists
the topic.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from toolkit import _args
from toolkit.errors import (
    ConfigError,
    RegistryError,
    RegistryRejected,
    SchemaCannotExist,
    SchemaFileError,
    SchemaNotFound,
    quoted,
)
from toolkit.layout import SchemaFile, Subject, load_schemas
from toolkit.registry.base import (
    CompatibilityResult,
    RegisteredSchema,
    SchemaById,
    SchemaFormat,
    registry_subjects,
    same_references,
    same_schema,
)

RESCAN_INTERVAL_S = 1.0
# Every name the folder can answer for: a subject folder's (layout: a letter, then letters, digits, ".", "_",
# "-"), or <topic>-value under the topic_value strategy (Kafka topic names: the same characters, up to 249;
# never "." or "..").
_POSSIBLE_SUBJECT = re.compile(r"[A-Za-z0-9._-]{1,255}")

log = logging.getLogger("toolkit.registry")
R = TypeVar("R")


class LocalFolderRegistry:
    """Schemas read from a folder laid out as :mod:`toolkit.layout` describes.

    Raises:
        SchemaFileError: (on first use) the folder or one of its subjects is invalid.
    """

    def __init__(
        self,
        schemas_dir: Path | str,
        *,
        rescan_interval_s: float = RESCAN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.schemas_dir = _args.path("schemas_dir", schemas_dir)
        self.rescan_interval_s = rescan_interval_s
        self._clock = clock
        self._subjects: dict[str, Subject] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    supports_schema_ids = False  # versions are files: there is no registry-wide schema id

    def __repr__(self) -> str:
        return f"LocalFolderRegistry({str(self.schemas_dir)!r})"

    def reload(self) -> None:
        """Re-read the folder (the next lookup sees added version files).

        Raises:
            SchemaFileError: the folder or one of its subjects is invalid (the previous view is kept).
            OSError: a file vanished or could not be read mid-scan (the previous view is kept).
        """
        with self._lock:
            self._loaded_at = self._clock()
            self._subjects = load_schemas(self.schemas_dir)

    def _all(self) -> dict[str, Subject]:
        if self._subjects is None:
            with self._lock:
                if self._subjects is None:
                    self._loaded_at = self._clock()
                    self._subjects = load_schemas(self.schemas_dir)
        return self._subjects

    def _or_rescan(self, lookup: Callable[[], R]) -> R:
        """``lookup()``; when it finds nothing and the folder was read long enough ago, re-read and retry."""
        try:
            return lookup()
        except SchemaNotFound as missing:
            if isinstance(missing, SchemaCannotExist) or self._clock() - self._loaded_at < self.rescan_interval_s:
                raise
            try:
                self.reload()
            except (SchemaFileError, OSError) as exc:  # a file being written, renamed or deleted: try again
                # on a later miss
                log.warning("re-reading %s after a miss failed, keeping the previous view: %s", self.schemas_dir, exc)
                raise missing from None
            return lookup()

    def _subject(self, name: str) -> Subject:
        _args.text("subject", name)
        if not _POSSIBLE_SUBJECT.fullmatch(name) or name in (".", ".."):
            raise SchemaCannotExist(
                f"subject {quoted(name)} can never be in {self.schemas_dir}: a subject folder's name is 1 to 255 "
                "letters, digits, '.', '_' and '-', not '.' or '..' (the header's schemaName, or <topic>-value, "
                "names the subject)",
                subject=name,
            )
        subjects = self._all()
        if name in subjects:
            return subjects[name]
        # Under topic_value a folder is the subject <topic>-value of each topic its subject.toml lists.
        carriers = [s for s in subjects.values() if s.config.topics and name in registry_subjects(s, "topic_value")]
        if len(carriers) == 1:
            return carriers[0]
        if len(carriers) > 1:
            names = ", ".join(s.name for s in carriers)
            raise SchemaNotFound(
                f"subject {name!r}: several subject folders ({names}) in {self.schemas_dir} list "
                "its topic in their subject.toml; the <topic>-value strategy needs exactly one",
                subject=name,
            )
        raise SchemaNotFound(f"subject {name!r} not found in {self.schemas_dir}", subject=name)

    def get(self, subject: str, version: int) -> RegisteredSchema:
        """The schema ``version`` of ``subject`` (a miss re-reads the folder first, see the module doc).

        Raises:
            SchemaNotFound: no such subject folder or version file.
        """
        return self._or_rescan(lambda: self._get(subject, version))

    def _get(self, subject: str, version: int) -> RegisteredSchema:
        found = self._subject(subject)
        schema_file = found.version(version) if _is_version(version) else None
        if schema_file is None:
            raise SchemaNotFound(
                f"subject {subject!r} has no version {version!r} in {found.folder} (versions 1..{len(found.versions)})",
                subject=subject,
                version=version,
            )
        return _registered(subject, schema_file)

    def latest(self, subject: str) -> RegisteredSchema:
        found = self._or_rescan(lambda: self._subject(subject))
        return _registered(subject, found.latest)

    def get_by_id(self, schema_id: int) -> SchemaById:
        """Always refused: the folder assigns no schema ids (see the module doc).

        Raises:
            ConfigError: naming ``SCHEMA_REGISTRY_URL``, the fix.
        """
        raise ConfigError(no_schema_ids(self), setting="SCHEMA_REGISTRY_URL")

    def subjects(self) -> list[str]:
        return list(self._all())

    def versions(self, subject: str) -> list[int]:
        return [schema_file.version for schema_file in self._subject(subject).versions]

    def register(
        self, subject: str, text: str, schema_format: SchemaFormat, *, references: Sequence[Mapping[str, Any]] = ()
    ) -> RegisteredSchema:
        """Return the existing version identical to ``text`` (with the same references); the folder is never
        written.

        Raises:
            RegistryRejected: no identical version exists (the fix: add a version file).
        """
        _args.text("text", text)
        schema_format = SchemaFormat(schema_format)
        try:
            found = self._subject(subject)
        except SchemaCannotExist as exc:  # no version file can be added for it either
            raise RegistryRejected(str(exc), reasons=[str(exc)], subject=subject) from None
        except SchemaNotFound:
            found = None
        if found is not None:
            for schema_file in found.versions:
                if (
                    schema_file.format == schema_format
                    and same_schema(schema_file.text, text)
                    and same_references(_registered(subject, schema_file).references, references)
                ):
                    return _registered(subject, schema_file)
        where = found.folder if found is not None else self.schemas_dir / subject
        following = len(found.versions) + 1 if found is not None else 1
        suffix = ".json" if schema_format == SchemaFormat.JSON else ".avsc"
        reason = (
            f"the local schemas folder is read-only for the registry client; add the schema as "
            f"{where / f'{following}{suffix}'} in a pull request"
        )
        raise RegistryRejected(f"subject {subject!r}: {reason}", reasons=[reason], subject=subject)

    def check_compatibility(
        self,
        subject: str,
        text: str,
        schema_format: SchemaFormat,
        version: int | str = "latest",
        *,
        references: Sequence[Mapping[str, Any]] = (),
    ) -> CompatibilityResult:
        """Compatible when ``text`` is identical to the compared version.

        Raises:
            SchemaNotFound: the compared version does not exist.
            RegistryError: the schemas differ; the local folder does not judge compatibility
                (run ``epistle check``, or use an HTTP registry).
        """
        against = self.latest(subject) if version == "latest" else self.get(subject, int(version))
        if (
            against.format == schema_format
            and same_schema(against.text, text)
            and same_references(against.references, references)
        ):
            return CompatibilityResult(True)
        raise RegistryError(
            f"subject {subject!r}: the local folder registry does not check compatibility "
            f"between different schemas; run `epistle check` or use an HTTP registry",
            subject=subject,
            version=against.version,
        )

    def close(self) -> None:
        """Nothing to release."""


def no_schema_ids(registry: object) -> str:
    """Why records in Confluent's wire format cannot be read with ``registry``, and the fix."""
    return (
        f"{registry!r} has no schema ids, and records in Confluent's wire format name their schema by "
        "the registry's id: set SCHEMA_REGISTRY_URL to the Confluent-compatible registry their producers "
        "use (for Apicurio .../apis/ccompat/v7), or read the topic as envelopes (value format envelope)"
    )


def _is_version(version: object) -> bool:
    return isinstance(version, int) and not isinstance(version, bool) and version >= 1


def _registered(subject: str, schema_file: SchemaFile) -> RegisteredSchema:
    return RegisteredSchema(
        subject=subject,
        version=schema_file.version,
        format=schema_file.format,
        text=schema_file.text,
        references=tuple(ref.as_dict() for ref in schema_file.references),
    )
