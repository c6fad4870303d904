"""Schema references: a version of one subject using types defined in a version of another.

Confluent's model, as registries and serializers know it: a schema carries ``references``, each a ``name``
(the Avro full name of a named type, or the URI a JSON Schema ``$ref`` uses), the ``subject`` and the
``version`` that define it. In ``schemas/`` they are declared per version in the referencing subject's
``subject.toml`` (:mod:`toolkit.layout`)::

    [references]
    1 = [{ name = "com.epistle.common.Address", subject = "address", version = 1 }]

This module resolves them (:func:`resolve`: transitively, dependencies first, refusing a missing subject or
version, a cycle and a name clash with a :class:`~toolkit.errors.SchemaFileError` naming the file, the field
and the fix) and makes one self-contained document of a schema and what it references, for the tools that
need one: :func:`expand_avro` inlines the referenced named types at their first use (Apache Avro's parse and
the compatibility check), :func:`bundle_json` copies referenced JSON Schemas under ``$defs`` and points the
``$ref`` s there (the compatibility check). The validator resolves references itself (a
``referencing.Registry`` for JSON Schema, fastavro's ``named_schemas`` for Avro).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urldefrag

from toolkit.errors import SchemaFileError

if TYPE_CHECKING:
    from toolkit.layout import SchemaFile, Subject

REFERENCES = "references"
NAMED_KINDS = ("record", "error", "enum", "fixed")

Referenced = tuple[tuple[str, Any], ...]
"""What a schema references, transitively, dependencies first: ``(reference name, schema document)``."""


@dataclass(frozen=True)
class SchemaReference:
    """One entry of a schema's ``references``: ``name`` is defined by ``subject`` version ``version``."""

    name: str
    subject: str
    version: int

    def as_dict(self) -> dict[str, Any]:
        """The registry's JSON form."""
        return {"name": self.name, "subject": self.subject, "version": self.version}

    @classmethod
    def from_registry(cls, raw: Any) -> SchemaReference | None:
        """A registry's ``{"name", "subject", "version"}``; None when it is not one."""
        if not isinstance(raw, Mapping):
            return None
        name, subject, version = raw.get("name"), raw.get("subject"), raw.get("version")
        if not isinstance(name, str) or not isinstance(subject, str) or not isinstance(version, int | str):
            return None
        if isinstance(version, bool):
            return None
        try:
            return cls(name, subject, int(version))
        except (TypeError, ValueError):
            return None


def references_of(raw: Sequence[Any]) -> tuple[SchemaReference, ...]:
    """A registry's ``references`` list as :class:`SchemaReference` s (entries that are not one are left out)."""
    return tuple(ref for item in raw if (ref := SchemaReference.from_registry(item)) is not None)


def _field(version: int, index: int | None = None, key: str | None = None) -> str:
    where = f"{REFERENCES}.{version}"
    if index is not None:
        where += f"[{index}]"
    return f"{where}.{key}" if key else where


def resolve(schema_file: SchemaFile, subjects: Mapping[str, Subject]) -> tuple[tuple[str, SchemaFile], ...]:
    """Every schema file ``schema_file`` references, transitively, dependencies first (each once), with the
    reference name it is used by.

    Raises:
        SchemaFileError: on the referencing subject's ``subject.toml``: a referenced subject or version that
            does not exist, a subject of the other format, a cycle, a name two references share; on the
            schema file: a named type it defines that a referenced schema defines too (Avro).
    """
    found: list[tuple[str, SchemaFile]] = []
    done: set[tuple[str, int]] = set()

    def visit(current: SchemaFile, chain: tuple[tuple[str, int], ...]) -> None:
        config = current.path.parent / "subject.toml"
        names: set[str] = set()
        for index, ref in enumerate(current.references):
            if ref.name in names:
                raise SchemaFileError(
                    config,
                    f"version {current.version} declares the reference name {ref.name!r} twice",
                    field=_field(current.version, index, "name"),
                    fix="keep one entry per name (a name is one type or one $ref target)",
                )
            names.add(ref.name)
            target = subjects.get(ref.subject)
            if target is None:
                raise SchemaFileError(
                    config,
                    f"version {current.version} references subject {ref.subject!r}, which has no folder",
                    field=_field(current.version, index, "subject"),
                    fix=f"add schemas/{ref.subject}/ with the referenced schema, or correct the subject name",
                )
            referenced = target.version(ref.version)
            if referenced is None:
                raise SchemaFileError(
                    config,
                    f"version {current.version} references {ref.subject} version {ref.version}, which does not "
                    f"exist (versions 1..{len(target.versions)})",
                    field=_field(current.version, index, "version"),
                    fix=f"reference an existing version of {ref.subject}, or add its version file",
                )
            if referenced.format != current.format:
                raise SchemaFileError(
                    config,
                    f"version {current.version} ({current.format}) references {ref.subject} version "
                    f"{ref.version}, a {referenced.format} schema",
                    field=_field(current.version, index, "subject"),
                    fix="reference a subject of the same format",
                )
            key = (ref.subject, ref.version)
            if key in chain or key == (schema_file.subject, schema_file.version):
                cycle = " -> ".join(f"{s}/{v}" for s, v in (*chain, (current.subject, current.version), key))
                raise SchemaFileError(
                    config,
                    f"references form a cycle: {cycle}",
                    field=_field(current.version, index),
                    fix="move the shared types into a subject that references none of the others",
                )
            if key not in done:
                visit(referenced, (*chain, (current.subject, current.version)))
                done.add(key)
                found.append((ref.name, referenced))
            elif not any(name == ref.name and f is referenced for name, f in found):
                found.append((ref.name, referenced))

    visit(schema_file, ())
    from toolkit.layout import SchemaFormat

    if schema_file.format is SchemaFormat.AVRO:
        labelled = [(name, f"{f.subject}/{f.version}", f.document) for name, f in found]
        check_avro_names(schema_file.path, schema_file.document, labelled)
    return tuple(found)


def documents(resolved: Sequence[tuple[str, SchemaFile]]) -> Referenced:
    return tuple((name, schema_file.document) for name, schema_file in resolved)


# ------------------------------------------------------------------ Avro


def avro_named_types(document: Any, namespace: str = "") -> Iterator[tuple[str, str, dict]]:
    """Every named type a document defines: ``(full name, JSON path, node)``, in definition order."""

    def walk(node: Any, json_path: str, ns: str) -> Iterator[tuple[str, str, dict]]:
        if isinstance(node, list):
            for index, item in enumerate(node):
                yield from walk(item, f"{json_path}[{index}]", ns)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind in NAMED_KINDS and isinstance(node.get("name"), str):
            full = _full_name(node["name"], node.get("namespace"), ns)
            yield full, json_path, node
            ns = full.rpartition(".")[0]
        if isinstance(kind, (dict, list)):
            yield from walk(kind, f"{json_path}.type", ns)
        for key in ("items", "values"):
            if isinstance(node.get(key), (dict, list)):
                yield from walk(node[key], f"{json_path}.{key}", ns)
        for index, item in enumerate(node.get("fields") or ()):
            if isinstance(item, dict):
                yield from walk(item.get("type"), f"{json_path}.fields[{index}].type", ns)

    yield from walk(document, "$", namespace)


def _full_name(name: str, namespace: Any, enclosing: str) -> str:
    if "." in name:
        return name
    ns = namespace if isinstance(namespace, str) else enclosing
    return f"{ns}.{name}" if ns else name


def check_avro_names(path: Path | str, document: Any, referenced: Sequence[tuple[str, str, Any]]) -> None:
    """The reference names are named types of the referenced schemas, and no named type is defined twice
    (by the schema and a referenced one, or by two referenced ones). ``referenced``: ``(reference name,
    label, document)``, the label naming the referenced schema in messages.

    Raises:
        SchemaFileError: naming ``path``, the definition's JSON path (or the reference) and the fix.
    """
    owners: dict[str, str] = {}
    for name, label, doc in referenced:
        defined = {full for full, _, _ in avro_named_types(doc)}
        if name not in defined:
            raise SchemaFileError(
                path,
                f"the reference {name!r} ({label}) names no type that schema defines "
                f"(it defines {', '.join(sorted(defined)) or 'none'})",
                field=REFERENCES,
                fix="use the full name (namespace.name) of a record, enum or fixed of the referenced schema",
            )
        for full in defined:
            if owners.setdefault(full, label) != label:
                raise SchemaFileError(
                    path,
                    f"the named type {full!r} is defined by two referenced schemas ({owners[full]} and {label})",
                    field=REFERENCES,
                    fix="reference one version of the subject that defines it",
                )
    for full, json_path, _ in avro_named_types(document):
        if full in owners:
            raise SchemaFileError(
                path,
                f"the named type {full!r} is defined here and by the referenced schema {owners[full]}",
                field=json_path,
                fix=f'use the referenced type by its name ("type": "{full}") instead of defining it again, '
                "or rename this one",
            )


def expand_avro(document: Any, referenced: Referenced) -> Any:
    """``document`` with every referenced named type defined at its first use (a copy; the document itself
    when it references nothing): a self-contained schema for Apache Avro and the compatibility check."""
    if not referenced:
        return document
    definitions: dict[str, dict] = {}
    for _, doc in referenced:
        for full, _, node in avro_named_types(doc):
            definition = dict(node)
            # Explicit full names keep the namespaces they had in their own file, wherever they land.
            definition["name"] = full
            definition.pop("namespace", None)
            if "." not in full:
                definition["namespace"] = ""
            definitions.setdefault(full, definition)
    defined: set[str] = set()

    def lookup(name: str, ns: str) -> str | None:
        for candidate in (name,) if "." in name else (f"{ns}.{name}" if ns else name, name):
            if candidate in definitions:
                return candidate
        return None

    def walk(node: Any, ns: str) -> Any:
        if isinstance(node, str):
            full = lookup(node, ns)
            if full is None or full in defined:
                return node
            return walk(copy.deepcopy(definitions[full]), ns)
        if isinstance(node, list):
            return [walk(item, ns) for item in node]
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        node = dict(node)
        if kind in NAMED_KINDS and isinstance(node.get("name"), str):
            full = _full_name(node["name"], node.get("namespace"), ns)
            if full in defined:
                return full  # a referenced type defined again inside another referenced one
            defined.add(full)
            ns = full.rpartition(".")[0]
        if isinstance(kind, (str, dict, list)) and kind not in NAMED_KINDS:
            node["type"] = walk(kind, ns)
        for key in ("items", "values"):
            if key in node:
                node[key] = walk(node[key], ns)
        if isinstance(node.get("fields"), list):
            node["fields"] = [
                {**item, "type": walk(item.get("type"), ns)} if isinstance(item, dict) else item
                for item in node["fields"]
            ]
        return node

    return walk(document, "")


# ------------------------------------------------------------------ JSON Schema


def json_resources(document: Any, referenced: Referenced) -> list[tuple[str, Any]]:
    """``(uri, document)`` for a ``referencing.Registry``: each referenced schema under its reference name, and
    under that name resolved against the ``$id`` of the root and of each referenced schema that has one (a
    relative ``$ref`` resolves against the ``$id`` of the schema it is in: person -> address.json, whose own
    ``$id`` differs, -> common.json)."""
    from urllib.parse import urljoin

    bases = [
        doc["$id"]
        for doc in (document, *(doc for _, doc in referenced))
        if isinstance(doc, dict) and isinstance(doc.get("$id"), str) and doc["$id"]
    ]
    resources: dict[str, Any] = {}
    for name, doc in referenced:
        resources.setdefault(name, doc)
        for base in bases:
            resources.setdefault(urljoin(base, name), doc)
    return list(resources.items())


def json_refs(node: Any) -> Iterator[tuple[str, str]]:
    """Every ``$ref`` of a JSON Schema as ``(JSON path, value)`` (data keywords' values skipped)."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            for json_path, ref in json_refs(item):
                yield f"[{index}]{json_path}", ref
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            yield ".$ref", value
        elif key not in ("const", "enum", "default", "examples", "example"):
            for json_path, ref in json_refs(value):
                yield f".{key}{json_path}", ref


def bundle_key(name: str) -> str:
    """The ``$defs`` key a referenced JSON Schema gets in :func:`bundle_json`."""
    return "ref_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def bundle_json(document: Any, referenced: Referenced) -> Any:
    """``document`` with each referenced schema copied under ``$defs`` and every ``$ref`` to it (and within
    it) pointing there: one self-contained document (the compatibility check compares two of them)."""
    if not referenced or not isinstance(document, dict):
        return document
    keys = {name: bundle_key(name) for name, _ in referenced}

    def rewrite(node: Any, prefix: str) -> Any:
        if isinstance(node, list):
            return [rewrite(item, prefix) for item in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                target, fragment = urldefrag(value)
                if not target:
                    value = f"#{prefix}{fragment}" if prefix else value
                elif target in keys:
                    value = f"#/$defs/{keys[target]}{fragment}"
            elif key not in ("const", "enum", "default", "examples", "example"):
                value = rewrite(value, prefix)
            out[key] = value
        return out

    bundled = rewrite(document, "")
    defs = dict(bundled.get("$defs") or {})
    for name, doc in referenced:
        embedded = rewrite(doc, f"/$defs/{keys[name]}") if isinstance(doc, dict) else doc
        if isinstance(embedded, dict):
            embedded = {k: v for k, v in embedded.items() if k not in ("$schema", "$id")}
        defs[keys[name]] = embedded
    bundled["$defs"] = defs
    return bundled
