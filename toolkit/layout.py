"""The ``schemas/`` folder: one folder per schemaName, one file per version, a small per-subject config.

    schemas/
      orders/
        subject.toml        # optional: compatibility = "BACKWARD", topics = ["orders"], [references]
        1.json              # JSON Schema, version 1
        2.json
      shipments/
        1.avsc              # Avro, version 1
        samples/            # golden sample bodies (not schema files), see tests

Version files are named by a positive integer without leading zeros; versions run 1..N without gaps, and
one subject uses one format. A version may use types another subject's version defines: its
``references``, declared in ``subject.toml`` (:mod:`toolkit.references`; :func:`load_schemas` resolves
them). Every problem is a :class:`~toolkit.errors.SchemaFileError` naming the file, the field and the fix.
This module reads files and parses JSON only; format-specific checks (meta-schema, Avro parsing) live in
:mod:`toolkit.validation`.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from toolkit import _args
from toolkit.errors import SchemaFileError, json_error_text
from toolkit.references import REFERENCES, SchemaReference

SUBJECT_CONFIG = "subject.toml"
_SUBJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")  # (\Z: "$" would let a final newline in)
SCHEMA_VERSION = re.compile(r"[1-9][0-9]{0,8}")
"""A schema version written as text (a version file's name, an envelope's ``schemaVersion``, use ``fullmatch``):
a positive integer without sign, leading zeros or decimals, below 10**9 (registries number versions with 32-bit
ints, and ``int()`` of a long digit string is slow or refused)."""


class SchemaFormat(StrEnum):
    """The Confluent ``schemaType`` names."""

    JSON = "JSON"
    AVRO = "AVRO"

    _missing_ = classmethod(_args.not_a_member)

    def suffix_text(self) -> str:
        return ".json" if self is SchemaFormat.JSON else ".avsc"

    @classmethod
    def from_suffix(cls, suffix: str) -> SchemaFormat | None:
        return {".json": cls.JSON, ".avsc": cls.AVRO}.get(suffix)


class Compatibility(StrEnum):
    """Confluent Schema Registry's compatibility modes."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    _missing_ = classmethod(_args.not_a_member)


@dataclass(frozen=True)
class SchemaFile:
    """One version of one subject as it is on disk."""

    subject: str
    version: int
    format: SchemaFormat
    path: Path
    text: str
    document: Any  # the parsed JSON (a dict for JSON Schema; dict, list or str for Avro)
    references: tuple[SchemaReference, ...] = ()  # declared in subject.toml, resolved by load_schemas


@dataclass(frozen=True)
class SubjectConfig:
    compatibility: Compatibility = Compatibility.BACKWARD
    topics: tuple[str, ...] = ()
    references: dict[int, tuple[SchemaReference, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Subject:
    name: str
    folder: Path
    config: SubjectConfig
    versions: tuple[SchemaFile, ...] = field(default=())

    @property
    def format(self) -> SchemaFormat:
        return self.versions[0].format

    def version(self, number: int) -> SchemaFile | None:
        return self.versions[number - 1] if 0 < number <= len(self.versions) else None

    @property
    def latest(self) -> SchemaFile:
        return self.versions[-1]


def parse_json_file(path: Path, text: str | None = None, *, unique_keys: bool = False) -> Any:
    """Parse a JSON file (or ``text``, a registry's schema text, ``path`` naming it), raising SchemaFileError with
    the line and column of a syntax error: the one parse of schema text, for the folder and the runtime.

    ``unique_keys`` (the ``schemas/`` folder's files): a key given twice in one object is an error naming its
    path. JSON leaves its meaning open (Python's parser and Jackson keep the last value, others the first or
    refuse), so such a schema would not mean one thing to every reader. A registry's text is read as the
    registry's other clients read it (the last value), since it is already in use."""
    path = _args.path("path", path)
    if text is not None:
        _args.text("text", text)
    text = read_schema_text(path) if text is None else text
    duplicates = _DuplicateKeys() if unique_keys else None
    try:
        document = json.loads(text, object_pairs_hook=duplicates) if duplicates else json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaFileError(path, f"not valid JSON: {json_error_text(exc)}", fix="correct the JSON syntax") from None
    except RecursionError:
        raise SchemaFileError(
            path,
            "JSON nested too deeply to parse",
            fix="flatten it with definitions ($defs in JSON Schema, named types in Avro)",
        ) from None
    except ValueError:  # an integer of more digits than Python converts
        raise SchemaFileError(
            path,
            f"holds an integer of more than {sys.get_int_max_str_digits()} digits, which cannot be read",
            fix="write the number with fewer digits (a schema's bounds and defaults fit in 64 bits)",
        ) from None
    if duplicates is not None and duplicates.found:
        where, key = duplicates.where(document)
        raise SchemaFileError(
            path,
            f"the key {key!r} is given twice in one object: JSON parsers disagree on which one counts (the "
            "first, the last, or neither)",
            field=where,
            fix=f"keep one {key!r} in that object",
        )
    return document


def read_schema_text(path: Path) -> str:
    """A schema file's text (UTF-8), or SchemaFileError saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaFileError(
            path, f"not UTF-8 text ({exc.reason} at byte {exc.start})", fix="save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise SchemaFileError(
            path, f"cannot be read ({exc.strerror or exc})", fix="give the path of a readable JSON file"
        ) from None


class _DuplicateKeys:
    """``json.loads``'s ``object_pairs_hook``: the objects built, noting those that had a key twice (by id:
    each stays alive in the document), so that :meth:`where` can name the first one's path."""

    def __init__(self) -> None:
        self.found: dict[int, tuple[str, dict[str, Any]]] = {}  # (the object kept: its id stays its own)

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        built = dict(pairs)
        if len(built) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    self.found.setdefault(id(built), (key, built))
                    break
                seen.add(key)
        return built

    def where(self, document: Any) -> tuple[str, str]:
        """The JSON path of the first object (in document order) that had a key twice, and that key."""
        from toolkit.formats.base import child

        stack: list[tuple[str, Any]] = [("$", document)]
        while stack:
            json_path, node = stack.pop()
            if isinstance(node, dict):
                if id(node) in self.found:
                    return json_path, self.found[id(node)][0]
                stack.extend((child(json_path, k), v) for k, v in reversed(list(node.items())))
            elif isinstance(node, list):
                stack.extend((child(json_path, i), v) for i, v in reversed(list(enumerate(node))))
        return "$", next(iter(self.found.values()))[0]


def canonical_json(document: Any) -> str:
    """``document`` as JSON text with sorted keys and no whitespace: two documents are the same JSON when
    their canonical texts are equal (key order and formatting aside). Not ``==``, which takes ``1``, ``1.0``
    and ``true`` for one value, although ``{"const": true}`` and ``{"const": 1}`` are different schemas."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_subject_config(path: Path) -> SubjectConfig:
    """Read a subject.toml (defaults when it does not exist). Raises SchemaFileError when it is invalid."""
    path = _args.path("path", path)
    if not path.exists():
        return SubjectConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SchemaFileError(path, f"not valid TOML: {exc}", fix="correct the TOML syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaFileError(
            path,
            f"cannot be read ({getattr(exc, 'strerror', None) or exc})",
            fix="give the path of a readable subject.toml file",
        ) from None
    unknown = sorted(set(data) - {"compatibility", "topics", REFERENCES})
    if unknown:
        raise SchemaFileError(
            path,
            f"unknown key(s) {', '.join(unknown)}",
            field=unknown[0],
            fix="use only 'compatibility', 'topics' and 'references'",
        )
    raw_mode = data.get("compatibility", "BACKWARD")
    try:
        mode = Compatibility(str(raw_mode).upper())
    except ValueError:
        raise SchemaFileError(
            path,
            f"unknown compatibility mode {raw_mode!r}",
            field="compatibility",
            fix="use one of " + ", ".join(m.value for m in Compatibility),
        ) from None
    topics = data.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
        raise SchemaFileError(
            path, "topics must be a list of topic names", field="topics", fix='write e.g. topics = ["orders"]'
        )
    return SubjectConfig(compatibility=mode, topics=tuple(topics), references=_references(path, data.get(REFERENCES)))


_REFERENCE_EXAMPLE = '[references]\n1 = [{ name = "com.example.Address", subject = "address", version = 1 }]'


def _references(path: Path, raw: Any) -> dict[int, tuple[SchemaReference, ...]]:
    """The ``[references]`` table: version -> its references (each a name, subject and version)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SchemaFileError(
            path, "references must be a table of versions", field=REFERENCES, fix=f"write e.g. {_REFERENCE_EXAMPLE}"
        )
    found: dict[int, tuple[SchemaReference, ...]] = {}
    for key, entries in raw.items():
        where = f"{REFERENCES}.{key}"
        if not SCHEMA_VERSION.fullmatch(key):
            raise SchemaFileError(
                path,
                f"{key!r} is not a version number",
                field=where,
                fix="key each list of references by the version that uses them, e.g. 1 = [...]",
            )
        if not isinstance(entries, list):
            raise SchemaFileError(
                path, "must be a list of references", field=where, fix=f"write e.g. {_REFERENCE_EXAMPLE}"
            )
        refs = []
        for index, entry in enumerate(entries):
            name, subject, version = (entry.get(k) if isinstance(entry, dict) else None for k in _REF_KEYS)
            if (
                not isinstance(entry, dict)
                or set(entry) != set(_REF_KEYS)
                or not isinstance(name, str)
                or not name
                or not isinstance(subject, str)
                or not _SUBJECT_NAME.match(subject)
                or not isinstance(version, int)
                or isinstance(version, bool)
                or version < 1
            ):
                raise SchemaFileError(
                    path,
                    f'reference {index} of version {key} must be {{ name = "...", subject = "...", version = N }}'
                    f" (got {entry!r})",
                    field=f"{where}[{index}]",
                    fix="give the name the schema uses (an Avro full name, a JSON Schema $ref), the subject "
                    "folder that defines it and its version (a positive integer)",
                )
            refs.append(SchemaReference(name, subject, version))
        found[int(key)] = tuple(refs)
    return found


_REF_KEYS = ("name", "subject", "version")


def load_subject(folder: Path) -> Subject:
    """Read one subject folder. Raises SchemaFileError on the first problem found."""
    folder = _args.path("folder", folder)
    if not folder.is_dir():
        raise SchemaFileError(
            folder, "subject folder not found", fix="give the path of a folder of schema versions (schemas/<subject>)"
        )
    name = folder.name
    if not _SUBJECT_NAME.match(name):
        raise SchemaFileError(
            folder,
            f"folder name {name!r} is not a valid schemaName",
            fix="start with a letter; use letters, digits, '.', '_' or '-'",
        )
    config = load_subject_config(folder / SUBJECT_CONFIG)
    found: dict[int, SchemaFile] = {}
    formats: set[SchemaFormat] = set()
    for path in sorted(folder.iterdir()):
        if path.is_dir() or path.name == SUBJECT_CONFIG or path.name.startswith("."):
            continue
        fmt = SchemaFormat.from_suffix(path.suffix)
        if fmt is None:
            raise SchemaFileError(
                path,
                f"unexpected file type {path.suffix or '(none)'!r}",
                fix="schema versions are <N>.json (JSON Schema) or <N>.avsc (Avro); "
                "move other files out of the subject folder or into a subfolder",
            )
        if not SCHEMA_VERSION.fullmatch(path.stem):
            raise SchemaFileError(
                path,
                f"file name {path.stem!r} is not a positive integer version",
                field="version",
                fix=f"rename it to <N>{path.suffix} with N = 1, 2, ... (no leading zeros, below 1000000000)",
            )
        version = int(path.stem)
        if version in found:
            raise SchemaFileError(
                path,
                f"version {version} exists twice ({found[version].path.name} and {path.name})",
                field="version",
                fix="keep one file per version",
            )
        text = read_schema_text(path)
        document = parse_json_file(path, text, unique_keys=True)
        refs = config.references.get(version, ())
        found[version] = SchemaFile(name, version, fmt, path, text, document, refs)
        formats.add(fmt)
    if not found:
        raise SchemaFileError(
            folder,
            "no schema versions in subject folder",
            fix="add 1.json (JSON Schema) or 1.avsc (Avro), or remove the folder",
        )
    if len(formats) > 1:
        raise SchemaFileError(
            folder,
            "mixes JSON Schema (.json) and Avro (.avsc) versions",
            fix="keep one format per subject; use a new subject for the other format",
        )
    expected = list(range(1, len(found) + 1))
    if sorted(found) != expected:
        # Listed lazily, the first ten: a file named 999999999.json leaves almost a billion numbers out.
        gaps = (version for version in range(1, max(found)) if version not in found)
        missing = f"{list(itertools.islice(gaps, 10))}" + (" ..." if next(gaps, None) is not None else "")
        raise SchemaFileError(
            folder,
            f"version sequence has a gap: missing {missing}",
            field="version",
            fix="versions run 1, 2, 3 ... without gaps; add or rename the missing version",
        )
    undeclared = sorted(set(config.references) - set(found))
    if undeclared:
        raise SchemaFileError(
            folder / SUBJECT_CONFIG,
            f"references declared for version {undeclared[0]}, which has no file",
            field=f"{REFERENCES}.{undeclared[0]}",
            fix=f"add {undeclared[0]}{next(iter(formats)).suffix_text()} or remove its references",
        )
    return Subject(name, folder, config, tuple(found[v] for v in expected))


def load_schemas(root: Path | str) -> dict[str, Subject]:
    """Read every subject under ``root``, sorted by name.

    Raises:
        SchemaFileError: the folder is missing or a subject is invalid.
    """
    root = _args.path("root", root)
    if not root.is_dir():
        raise SchemaFileError(
            root, "schemas folder not found", fix="create it, or point EPISTLE_SCHEMAS_DIR at your schemas folder"
        )
    subjects = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        subject = load_subject(folder)
        subjects[subject.name] = subject
    check_references(subjects)
    return subjects


def check_references(subjects: dict[str, Subject]) -> None:
    """Resolve every version's references (:func:`toolkit.references.resolve`).

    Raises:
        SchemaFileError: the first bad reference (a missing subject or version, a cycle, a name clash).
    """
    from toolkit.references import resolve

    for subject in subjects.values():
        for schema_file in subject.versions:
            if schema_file.references:
                resolve(schema_file, subjects)
