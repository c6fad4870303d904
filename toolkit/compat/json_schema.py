"""JSON Schema reader/writer compatibility, after the rules Confluent Schema Registry documents.

The question is the one Confluent asks: does the *reader* schema accept every document the *writer* schema
allowed? (BACKWARD: reader = new version, writer = old; FORWARD: the other way round.) Rule ids are the
names of Confluent's ``Difference.Type`` values, so a finding can be looked up in Confluent's docs:

- types: the reader must allow every type the writer allows; ``integer`` is contained in ``number``
  (TYPE_NARROWED, TYPE_CHANGED; integer -> number is TYPE_EXTENDED, compatible);
- enum and const: every value the writer may write must validate against the reader (checked exactly, with
  ``jsonschema``) (ENUM_ARRAY_NARROWED);
- bounds: minimum/maximum/exclusive*, multipleOf, minLength/maxLength, pattern, minItems/maxItems,
  uniqueItems, minProperties/maxProperties may only be relaxed by the reader (MAXIMUM_DECREASED, ...);
- objects: open and closed content models. A property the writer declared and the reader dropped must be
  accepted by the reader's ``additionalProperties`` (PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL); a property
  the reader adds while the writer was open may already carry any value (PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL;
  fine when the writer was closed: OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL); a newly required property
  breaks (REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL, REQUIRED_ATTRIBUTE_ADDED) unless it has a default,
  which Confluent accepts and we report as a warning (validators do not fill defaults); a reader that closes
  an open model breaks (ADDITIONAL_PROPERTIES_REMOVED);
- arrays: ``items`` (and tuple forms ``prefixItems`` / ``items: [...]`` + ``additionalItems``) recursively;
- combinators: a writer's anyOf/oneOf branches must each be accepted (SUM_TYPE_NARROWED when none of the
  reader's branches takes one); a reader's allOf conjuncts must each accept the writer; a writer's allOf is
  merged; ``not`` is compared reversed (NOT_TYPE_EXTENDED; an added one breaks readers only where the writer
  may write a value of a type it excludes); a changed combinator follows Confluent (COMBINED_TYPE_CHANGED
  unless the reader's is anyOf, or a oneOf/allOf over a single branch), and breaks readers only where a
  reader's oneOf has two branches sharing a type the writer may write, or the comparison rejects a value;
- ``if``/``then``/``else`` (CONDITIONAL_ADDED, CONDITIONAL_NARROWED), ``dependencies`` / ``dependentRequired``
  / ``dependentSchemas`` (DEPENDENCY_ARRAY_*, DEPENDENCY_SCHEMA_ADDED), ``patternProperties``,
  ``propertyNames``, ``contains`` / ``minContains`` / ``maxContains``, ``unevaluated*`` (read like
  ``additional*``);
- ``$ref``: local references (``#/...``) are resolved in each schema's own document, recursion-safe.

Every issue also carries Confluent's expected verdict (:attr:`Issue.confluent`): ``accepts`` for the two
warnings (format, a required property with a default: agreement, neither fails) and where this check is
deliberately stricter (patternProperties read as open, keywords Confluent never compares), and issues with
``readers_break=False`` where readers cope but Confluent's partly syntactic rules refuse (keyword-by-keyword
numeric bounds, a plain enum/const replaced, branch counting and one-to-one pairing, a dependency or
conditional added). docs/schema-checks.md has the keyword-by-keyword audit.

Known limits (reported, not guessed): remote ``$ref`` (UNRESOLVED_REF, warning), regex inclusion (a changed
``pattern`` is an error, as in Confluent), ``format`` (a warning: an annotation unless a validator asserts
it), and oneOf exclusivity when branches are added (Confluent accepts it too).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import replace
from fractions import Fraction
from typing import Any, TypeGuard

from toolkit.compat.findings import ACCEPTS, REFUSES, UNKNOWN, Issue, Severity
from toolkit.layout import canonical_json

_ALL_TYPES = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "id",
        "$anchor",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
    }
)
_COMBINATORS = ("allOf", "anyOf", "oneOf", "not")
_MAX_DEPTH = 64


def check(reader: Any, writer: Any) -> list[Issue]:
    """Why ``reader`` does not accept every document ``writer`` allows; empty when it does."""
    return _Comparison(reader, writer).compare(reader, writer, "$", 0)


class _Document:
    """One schema document: resolves its local ``$ref`` pointers."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def deref(self, schema: Any, issues: list[Issue], path: str) -> Any:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < _MAX_DEPTH:
            seen += 1
            ref = schema["$ref"]
            target = self._pointer(ref)
            if target is None:
                issues.append(
                    Issue(
                        path,
                        "UNRESOLVED_REF",
                        f"the reference '{ref}' cannot be resolved "
                        "offline, so this part of the schema was not compared",
                        Severity.WARNING,
                        confluent=UNKNOWN,
                    )
                )
                return True
            siblings = {k: v for k, v in schema.items() if k != "$ref" and k not in _ANNOTATIONS}
            schema = _merge(target, siblings) if siblings else target
        return schema

    def _pointer(self, ref: str) -> Any:
        if ref == "#":
            return self.root
        if not ref.startswith("#/"):
            return None
        node = self.root
        for token in ref[2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                return None
        return node

    def accepts_value(self, schema: Any, value: Any) -> tuple[bool, str | None]:
        """Validate one value against a subschema of this document (local refs still resolve)."""
        if schema is True or schema == {}:
            return True, None
        if schema is False:
            return False, "false"
        wrapped = dict(schema)
        if isinstance(self.root, dict):
            for key in ("$defs", "definitions"):
                if key in self.root and key not in wrapped:
                    wrapped[key] = self.root[key]
        from jsonschema import validators  # here: most checks never need it (0.2 s to import)

        cls = validators.validator_for(
            self.root if isinstance(self.root, dict) else {}, default=validators.Draft202012Validator
        )
        try:
            error = next(iter(cls(wrapped).iter_errors(value)), None)
        except Exception:  # an unresolvable reference inside: fall back to "accepted", the walk reports it
            return True, None
        return (error is None), (None if error is None else str(error.validator))


class _Comparison:
    def __init__(self, reader_root: Any, writer_root: Any) -> None:
        self.reader = _Document(reader_root)
        self.writer = _Document(writer_root)
        self.active: set[tuple[int, int]] = set()

    def reversed(self) -> _Comparison:
        return _Comparison(self.writer.root, self.reader.root)

    def compare(self, r: Any, w: Any, path: str, depth: int) -> list[Issue]:
        issues: list[Issue] = []
        r = self.reader.deref(r, issues, path)
        w = self.writer.deref(w, issues, path)
        if w is False or _is_open(r) or depth > _MAX_DEPTH:
            return issues
        if r is False:
            return issues + [
                Issue(
                    path,
                    "TYPE_NARROWED",
                    "the reader accepts nothing here (false schema) while the writer may write a value",
                )
            ]
        key = (id(r), id(w))
        if key in self.active:  # a recursive schema: this pair is already being compared further up
            return issues
        self.active.add(key)
        try:
            issues += self._compare(r, w if isinstance(w, dict) else {}, path, depth + 1)
        finally:
            self.active.discard(key)
        return issues

    def _compare(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        issues: list[Issue] = []
        criterion_r, criterion_w = r, w
        if "if" in r or "if" in w:
            issues += self._conditional(r, w, path, depth)
            r, w = _without(r, *_CONDITIONAL), _without(w, *_CONDITIONAL)
        issues += self._combined(r, w, path, depth)
        issues = self._criterion(criterion_r, criterion_w, path, issues) + issues
        if not _errors_at(issues, path):
            issues += _confluent_sum_count(r, w, path) or self._confluent_matching(r, w, path, depth)
        return _dedupe(issues)

    def _confluent_matching(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        """Confluent pairs the branches of two anyOf/oneOf one to one (a maximum matching of compatible
        pairs) and refuses when the smaller side is not covered, even where a reader branch accepts several
        writer branches or a writer branch spreads over several reader branches."""
        kind = _criterion_of(r)
        if kind not in ("anyOf", "oneOf") or _criterion_of(w) not in ("anyOf", "oneOf"):
            return []
        readers, writers = r[kind], w[_criterion_of(w)]
        fits = {
            (i, j)
            for i, rb in enumerate(readers)
            for j, wb in enumerate(writers)
            if not [x for x in self.compare(rb, wb, path, depth) if x.severity is Severity.ERROR]
        }
        if _matching(fits, len(writers)) >= min(len(readers), len(writers)):
            return []
        return [
            Issue(
                path,
                "COMBINED_TYPE_SUBSCHEMAS_CHANGED",
                f"the reader's {kind} accepts every value the "
                "writer allows, but Confluent pairs branches one to one and finds no pairing of compatible "
                "branches",
                readers_break=False,
            )
        ]

    def _criterion(self, r: dict, w: dict, path: str, found: list[Issue]) -> list[Issue]:
        """Confluent's rule on a changed combinator: the reader may turn any combinator into anyOf, a single-
        branch one into oneOf, and a single-branch one into a single-branch allOf; it refuses anything else
        (COMBINED_TYPE_CHANGED).

        Whether readers break is decided apart from that rule. ``found`` holds what comparing the two schemas
        as anyOf-like found: each writer branch accepted by some reader branch (for a oneOf reader) or by every
        reader conjunct (for an allOf reader). The change itself adds one reason only: a oneOf reader rejects a
        value matching two of its branches, possible when two branches share a type the writer may write."""
        r_kind, w_kind = _criterion_of(r), _criterion_of(w)
        if r_kind is None or w_kind is None or r_kind == w_kind:
            return []
        r_size, w_size = len(r[r_kind]), len(w[w_kind])
        if r_kind == "anyOf" or (r_kind == "oneOf" and w_size == 1) or (r_kind == "allOf" and r_size == w_size == 1):
            return []
        changed = f"the combinator changed from {w_kind} (writer) to {r_kind} (reader)"
        if r_kind == "oneOf":
            written = self._value_types(self.writer, w)
            branches = [self._value_types(self.reader, b) & written for b in r["oneOf"]]
            shared = next(
                (
                    (i, j, branches[i] & branches[j])
                    for i in range(len(branches))
                    for j in range(i + 1, len(branches))
                    if branches[i] & branches[j]
                ),
                None,
            )
            if shared is not None:
                i, j, types = shared
                return [
                    Issue(
                        path,
                        "COMBINED_TYPE_CHANGED",
                        f"{changed}: branches {i + 1} and {j + 1} of the "
                        f"reader's oneOf both admit {_or(_shown_types(types))} values, which the writer may "
                        "write, and oneOf rejects a value that matches more than one branch",
                    )
                ]
            alone = (
                "no value the writer may write can match two of the reader's oneOf branches (their types "
                "do not overlap)"
            )
            copes = f"{alone}, and some branch accepts each value the writer allows"
        else:
            alone = "the reader's allOf requires every conjunct"
            copes = "every value the writer allows satisfies each of the reader's allOf conjuncts"
        breaking = _breaking(found)
        if breaking:
            return [
                Issue(
                    path,
                    "COMBINED_TYPE_CHANGED",
                    f"{changed}, which Confluent refuses; {alone}, and the "
                    f"reader rejects values the writer allows: {breaking[0].what}",
                )
            ]
        return [
            Issue(
                path,
                "COMBINED_TYPE_CHANGED",
                f"{changed}; {copes}, but Confluent refuses a changed combinator",
                readers_break=False,
            )
        ]

    def _value_types(self, doc: _Document, s: Any, depth: int = 0) -> set[str]:
        """The kinds of JSON value ``s`` admits, as ``_widen``-ed type names (``integer`` for whole numbers,
        ``number`` for the others): from ``type``, ``enum``/``const`` and combinators; all when unknown."""
        s = doc.deref(s, [], "$")
        if s is False:
            return set()
        if not isinstance(s, dict) or depth > 8:
            return set(_ALL_TYPES)
        found = set(_ALL_TYPES)
        declared = _types(s)
        if declared is not None:
            found &= _widen(declared)
        finite = _finite_values(s)
        if finite is not None:
            found &= {_value_type(v) for v in finite}
        for part in s.get("allOf", []) if isinstance(s.get("allOf"), list) else []:
            found &= self._value_types(doc, part, depth + 1)
        for keyword in ("anyOf", "oneOf"):
            if isinstance(s.get(keyword), list):
                found &= set().union(*(self._value_types(doc, b, depth + 1) for b in s[keyword]))
        return found

    def _conditional(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        """``if``/``then``/``else``: documents the reader's ``if`` matches must pass its ``then``, the others its
        ``else``. With the writer's ``if`` identical, each branch is compared with the writer's same branch;
        otherwise each reader branch must accept every writer document (stricter than needed, never looser).

        Confluent does not compare the contents of a conditional (no ``Difference.Type`` for it: a changed
        ``then`` is accepted), but reads a conditional the writer lacked as a new schema type (TYPE_CHANGED)."""
        if "if" not in r:
            return []  # a writer's conditional only restricts what the writer writes
        base = _without(w, *_CONDITIONAL)
        same_if = "if" in w and w["if"] == r["if"]
        confluent = ACCEPTS if "if" in w else REFUSES
        issues: list[Issue] = []
        for branch, matched in (("then", "matches"), ("else", "does not match")):
            writer_side = _merge(base, self.writer.deref(w.get(branch, True), [], path)) if same_if else base
            found = _breaking(self.compare(r.get(branch, True), writer_side, path, depth))
            if found:
                rule = "CONDITIONAL_NARROWED" if "if" in w else "CONDITIONAL_ADDED"
                issues.append(
                    Issue(
                        path,
                        rule,
                        f"where the reader's 'if' {matched}, its '{branch}' rejects "
                        f"documents the writer allows ({found[0].what})",
                        confluent=confluent,
                    )
                )
        if not issues and "if" not in w:
            issues.append(
                Issue(
                    path,
                    "TYPE_CHANGED",
                    "the reader has an if/then/else the writer lacks, which every "
                    "document of the writer already satisfies, but Confluent reads a conditional on one "
                    "side only as a change of schema type",
                    readers_break=False,
                )
            )
        return issues

    def _combined(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        if "allOf" in w:  # the writer's conjuncts together: merged into one schema
            merged = _without(w, "allOf")
            for part in w["allOf"]:
                merged = _merge(merged, self.writer.deref(part, [], path))
            return self.compare(r, merged, path, depth)
        for keyword in ("anyOf", "oneOf"):
            if keyword in w:  # each writer branch must be readable
                base = _without(w, keyword)
                issues: list[Issue] = []
                for branch in w[keyword]:
                    issues += self.compare(r, _merge(base, self.writer.deref(branch, [], path)), path, depth)
                return _dedupe(issues)
        if "allOf" in r:  # the writer must satisfy every reader conjunct
            issues = self.compare(_without(r, "allOf"), w, path, depth)
            for part in r["allOf"]:
                issues += self.compare(part, w, path, depth)
            return _dedupe(issues)
        for keyword in ("anyOf", "oneOf"):
            if keyword in r:
                return self._reader_sum(r, w, keyword, path, depth)
        if "not" in r:
            if "not" not in w:
                return self._not_added(r, w, path) + self.compare(_without(r, "not"), w, path, depth)
            excluded = self.reversed().compare(w["not"], r["not"], path, depth)
            issues = self.compare(_without(r, "not"), _without(w, "not"), path, depth)
            if _breaking(excluded):
                issues.append(
                    Issue(
                        path,
                        "NOT_TYPE_EXTENDED",
                        "the reader's 'not' excludes values the "
                        f"writer's 'not' allowed ({_breaking(excluded)[0].what})",
                    )
                )
            elif _errors(excluded):
                issues.append(
                    Issue(
                        path,
                        "NOT_TYPE_EXTENDED",
                        "the reader's 'not' excludes nothing the writer's "
                        "'not' allowed, but Confluent compares the two 'not' schemas and refuses "
                        f"({_errors(excluded)[0].what})",
                        readers_break=False,
                    )
                )
            return issues
        finite = _finite_values(w)
        if finite is not None:
            return self._finite(r, w, finite, path)
        return self._structural(r, w, path, depth)

    def _not_added(self, r: dict, w: dict, path: str) -> list[Issue]:
        """A reader's ``not`` the writer lacks excludes values the writer may write, unless none of them can
        match the excluded schema: its types and the writer's do not overlap, or the writer's enum/const values
        all fail it. Confluent refuses a ``not`` added either way (NOT_TYPE_EXTENDED)."""
        excluded = r["not"]
        finite = _finite_values(w)
        if finite is not None:
            written = [v for v in finite if self.writer.accepts_value(w, v)[0]]
            hit = [v for v in written if self.reader.accepts_value(excluded, v)[0]]
            if hit:
                return [
                    Issue(
                        path,
                        "NOT_TYPE_EXTENDED",
                        f"the writer may write {_json(hit[0])}, which the reader's 'not' excludes",
                    )
                ]
            return [
                Issue(
                    path,
                    "NOT_TYPE_EXTENDED",
                    "none of the writer's values matches what the reader's 'not' "
                    "excludes, but Confluent refuses a 'not' added",
                    readers_break=False,
                )
            ]
        shared = self._value_types(self.writer, w) & self._value_types(self.reader, excluded)
        if shared:
            return [
                Issue(
                    path,
                    "NOT_TYPE_EXTENDED",
                    f"the reader's 'not' excludes {_or(_shown_types(shared))} values of a kind the writer may write",
                )
            ]
        return [
            Issue(
                path,
                "NOT_TYPE_EXTENDED",
                "the reader's 'not' excludes only values of types the writer "
                "never writes, but Confluent refuses a 'not' added",
                readers_break=False,
            )
        ]

    def _reader_sum(self, r: dict, w: dict, keyword: str, path: str, depth: int) -> list[Issue]:
        base = _without(r, keyword)
        issues = self.compare(base, w, path, depth)
        w_types = _types(w) or set()
        pieces = [w] if len(w_types) < 2 else [{**w, "type": t} for t in sorted(w_types)]
        for piece in pieces:  # a writer of several types may spread over several reader branches
            best: list[Issue] | None = None
            refused: list[Issue] | None = None  # a branch that reads the piece but Confluent finds changed
            for branch in r[keyword]:
                errors = _errors(self.compare(branch, piece, path, depth))
                found = _breaking(errors)
                if not errors:
                    best, refused = [], None
                    break
                if not found:
                    best, refused = [], refused if refused is not None else errors
                elif best is None or (best and len(found) < len(best)):
                    best = found
            if refused:
                issues += refused
            elif best:
                issues.append(
                    Issue(
                        path,
                        "SUM_TYPE_NARROWED",
                        f"the writer may write values that match "
                        f"none of "
                        f"the reader's {keyword} branches (closest branch: {best[0].what})",
                    )
                )
        return _dedupe(issues)

    def _finite(self, r: dict, w: dict, values: list[Any], path: str) -> list[Issue]:
        rejected = []
        keyword = None
        for value in values:
            if not self.writer.accepts_value(w, value)[0]:
                continue  # the writer's own other keywords exclude it: never written
            ok, failed = self.reader.accepts_value(r, value)
            if not ok:
                rejected.append(value)
                keyword = keyword or failed
        if not rejected:
            return _confluent_finite(r, w, path)
        shown = ", ".join(_json(v) for v in rejected[:5]) + (" ..." if len(rejected) > 5 else "")
        rule = _KEYWORD_RULE.get(keyword, "TYPE_CHANGED") if keyword else "TYPE_CHANGED"
        return [
            Issue(
                path,
                rule,
                f"the writer may write {shown}, which the reader rejects (its '{keyword}' does not allow it)",
            )
        ]

    def _structural(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        issues: list[Issue] = []
        if "enum" in r or "const" in r:
            issues += self._list_for_type(r, w, path)
        reader_types, writer_types = _types(r), _types(w)
        writer_types = set(_ALL_TYPES) if writer_types is None else writer_types
        if reader_types is not None:
            lost = {
                t for t in writer_types if t not in reader_types and not (t == "integer" and "number" in reader_types)
            }
            if lost:
                widened = _widen(reader_types) <= _widen(writer_types)
                issues.append(
                    Issue(
                        path,
                        "TYPE_NARROWED" if widened else "TYPE_CHANGED",
                        f"the writer may write {_or(sorted(lost))} here, which the reader does "
                        f"not "
                        f"accept (it allows {_or(sorted(reader_types))})",
                    )
                )
            writer_types = {t for t in writer_types if t not in lost}
        if writer_types & {"string"}:
            issues += _string_bounds(r, w, path)
        if writer_types & {"number", "integer"}:
            numbers = _number_bounds(r, w, path, integer_only=writer_types.isdisjoint({"number"}))
            issues += numbers or _confluent_number(r, w, path)
        if "object" in writer_types:
            issues += self._object(r, w, path, depth)
        if "array" in writer_types:
            issues += self._array(r, w, path, depth)
        return issues

    def _list_for_type(self, r: dict, w: dict, path: str) -> list[Issue]:
        """A reader's enum/const where the writer has a type: it breaks unless the writer's values are few
        enough to list (null, true, false) and the reader lists each of them."""
        possible = self._value_types(self.writer, w)
        if not possible <= {"null", "boolean"}:
            return [
                Issue(
                    path,
                    "ENUM_ARRAY_NARROWED",
                    "the reader only accepts a fixed list of values here while "
                    "the writer may write any value of its type",
                )
            ]
        listed = {k: r[k] for k in ("enum", "const") if k in r}
        written = [v for v in (None, False, True) if _value_type(v) in possible and self.writer.accepts_value(w, v)[0]]
        rejected = [v for v in written if not self.reader.accepts_value(listed, v)[0]]
        if rejected:
            return [
                Issue(
                    path,
                    "ENUM_ARRAY_NARROWED",
                    f"the writer may write {_json(rejected[0])}, which the "
                    "reader's fixed list of values does not include",
                )
            ]
        return [
            Issue(
                path,
                "ENUM_ARRAY_NARROWED",
                "the reader's fixed list of values includes every value the "
                f"writer may write ({', '.join(_json(v) for v in written)}), but Confluent is expected to "
                "refuse a list of values where the writer had a type",
                readers_break=False,
            )
        ]

    def _object(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        issues: list[Issue] = []
        r_props, w_props = r.get("properties", {}), w.get("properties", {})
        r_required, w_required = set(r.get("required", [])), set(w.get("required", []))
        for name in list(w_props) + [n for n in r_props if n not in w_props]:
            child = f"{path}.{name}"
            if name in r_props and name in w_props:
                issues += self.compare(r_props[name], w_props[name], child, depth)
            elif name in w_props:  # the reader dropped a property the writer declared
                cover = self.reader.deref(_declared(r, name), issues, child)
                if cover is False and self.writer.deref(w_props[name], [], child) is not False:
                    issues.append(
                        Issue(
                            child,
                            "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
                            f"the writer may write property '{name}', which the reader no longer "
                            "declares and its closed content model (additionalProperties: false) "
                            "rejects",
                        )
                    )
                elif not _is_open(cover) and cover is not False:
                    found = self.compare(cover, w_props[name], child, depth)
                    if _breaking(found):
                        issues.append(
                            Issue(
                                child,
                                "PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
                                f"the writer may write property '{name}', which the reader no longer "
                                "declares and its additionalProperties schema does not accept "
                                f"({_breaking(found)[0].what})",
                            )
                        )
                    else:
                        issues += found  # warnings and Confluent-only refusals, as they are
                elif _is_open(cover) and _pattern_only(r):
                    issues.append(
                        Issue(
                            child,
                            "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL",
                            f"the reader no longer declares property '{name}' and no pattern of its "
                            "patternProperties matches it, so any value is accepted; but Confluent "
                            "treats a model with patternProperties as not open and refuses the removal",
                            readers_break=False,
                        )
                    )
            else:  # the reader added a property the writer did not declare
                source = self.writer.deref(_declared(w, name), issues, child)
                if source is False:
                    continue  # the writer's closed model never writes it (unless required, below)
                if _is_open(source):
                    if not _is_open(self.reader.deref(r_props[name], [], child)):
                        pattern_only = _pattern_only(w)
                        unmatched = " (no pattern of its patternProperties matches the name)" if pattern_only else ""
                        issues.append(
                            Issue(
                                child,
                                "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL",
                                f"the writer's content model is open{unmatched}"
                                f", so its documents may already carry a property '{name}' with any "
                                "value, which the reader now constrains (close the writer with "
                                "additionalProperties: false first)",
                                confluent=ACCEPTS if pattern_only else "",
                            )
                        )
                else:
                    found = self.compare(r_props[name], source, child, depth)
                    if _breaking(found):
                        issues.append(
                            Issue(
                                child,
                                "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL",
                                f"the writer's additionalProperties may carry a property '{name}' "
                                "that the reader's new declaration rejects "
                                f"({_breaking(found)[0].what})",
                            )
                        )
                    else:
                        issues += found
        for name in sorted(r_required - w_required):
            child = f"{path}.{name}"
            declared = self.reader.deref(r_props.get(name, True), [], child)
            if isinstance(declared, dict) and "default" in declared:
                issues.append(
                    Issue(
                        child,
                        "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED",
                        f"the reader requires property '{name}' that the writer's documents may "
                        f"lack; "
                        "Confluent accepts this because it has a default, but JSON Schema "
                        "validators "
                        "do not fill defaults",
                        Severity.WARNING,
                    )
                )
            elif name not in w_props and self.writer.deref(_declared(w, name), [], child) is False:
                issues.append(
                    Issue(
                        child,
                        "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL",
                        f"the reader requires property '{name}', which the writer never writes",
                    )
                )
            else:
                issues.append(
                    Issue(
                        child,
                        "REQUIRED_ATTRIBUTE_ADDED",
                        f"the reader requires property '{name}', which the writer's documents "
                        f"may "
                        "lack (it is optional there)",
                    )
                )
        issues += self._additional(r, w, path, depth)
        issues += self._pattern_properties(r, w, path, depth)
        issues += self._property_names(r, w, path, depth)
        issues += _bounds(r, w, path, "minProperties", "maxProperties", "properties")
        issues += self._dependencies(r, w, path, depth)
        return issues

    def _dependencies(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        """``dependencies`` (draft 4-7) and ``dependentRequired`` / ``dependentSchemas`` (2019-09+).

        Confluent refuses a dependency the reader adds or extends (DEPENDENCY_ARRAY_ADDED / _EXTENDED /
        _CHANGED, DEPENDENCY_SCHEMA_ADDED) even where the writer's documents already satisfy it; removing one
        is fine (the reader demands less)."""
        issues: list[Issue] = []
        w_arrays, w_schemas = _dependent_required(w), _dependent_schemas(w)
        for key, needed in _dependent_required(r).items():
            child = f"{path}.{key}"
            written = w_arrays.get(key)
            if written is not None and set(needed) <= set(written):
                continue
            rule = (
                "DEPENDENCY_ARRAY_ADDED"
                if written is None
                else "DEPENDENCY_ARRAY_EXTENDED"
                if set(written) <= set(needed)
                else "DEPENDENCY_ARRAY_CHANGED"
            )
            extra = set(needed) - set(written or []) - set(w.get("required", []))
            if extra and self.writer.deref(_declared(w, key), [], child) is False:
                issues.append(
                    Issue(
                        child,
                        rule,
                        f"the reader's dependency of '{key}' never applies to the writer's "
                        f"documents, which never carry '{key}', but Confluent refuses a dependency "
                        "added or extended",
                        readers_break=False,
                    )
                )
            elif extra:
                issues.append(
                    Issue(
                        child,
                        rule,
                        f"the reader requires {_or(sorted(extra), 'and')} whenever "
                        f"'{key}' is present, which the writer did not",
                    )
                )
            else:
                issues.append(
                    Issue(
                        child,
                        rule,
                        f"the reader's dependency of '{key}' on "
                        f"{_or(sorted(needed), 'and')} is already met by every document of the "
                        "writer, but Confluent refuses a dependency added or extended",
                        readers_break=False,
                    )
                )
        base = _without(w, "dependencies", "dependentRequired", "dependentSchemas")
        for key, needed in _dependent_schemas(r).items():
            child = f"{path}.{key}"
            if key in w_schemas:
                writer_side = _merge(base, self.writer.deref(w_schemas[key], [], child))
            else:
                writer_side = base
            found = _errors(self.compare(needed, writer_side, path, depth))
            if key in w_schemas:
                issues += [replace(i, what=f"where '{key}' is present (schema dependency): {i.what}") for i in found]
            elif self.writer.deref(_declared(w, key), [], child) is False:
                issues.append(
                    Issue(
                        child,
                        "DEPENDENCY_SCHEMA_ADDED",
                        f"the reader's schema dependency on '{key}' "
                        f"never applies to the writer's documents, which never carry '{key}', but "
                        "Confluent refuses a dependency schema added",
                        readers_break=False,
                    )
                )
            elif found := _breaking(found):
                issues.append(
                    Issue(
                        child,
                        "DEPENDENCY_SCHEMA_ADDED",
                        f"the reader has a schema dependency on "
                        f"'{key}' that the writer lacks, and the writer's documents with '{key}' may "
                        f"fail it ({found[0].what})",
                    )
                )
            elif not _is_open(self.reader.deref(needed, [], child)):
                issues.append(
                    Issue(
                        child,
                        "DEPENDENCY_SCHEMA_ADDED",
                        f"the reader has a schema dependency on "
                        f"'{key}' that the writer lacks; every document of the writer already "
                        "satisfies it, but Confluent refuses a dependency schema added",
                        readers_break=False,
                    )
                )
        return issues

    def _pattern_properties(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        """Each reader ``patternProperties`` schema must accept what the writer may write under a matching
        name: its declared properties that the reader declares too (a dropped one is checked above) and its
        undeclared ones (the writer's same pattern, else its additionalProperties). Confluent never compares
        patternProperties schemas, so it accepts these changes."""
        issues: list[Issue] = []
        r_props, w_props = r.get("properties", {}), w.get("properties", {})
        w_patterns = w.get("patternProperties", {})
        for pattern, sub in r.get("patternProperties", {}).items():
            if _is_open(self.reader.deref(sub, [], path)):
                continue
            sources = [
                (f"{path}.{name}", w_props[name]) for name in w_props if name in r_props and _matches(pattern, name)
            ]
            if pattern in w_patterns:
                sources.append((f"{path}.*", w_patterns[pattern]))
            else:
                extra = self.writer.deref(_undeclared(w), [], path)
                if extra is not False:
                    sources.append((f"{path}.*", extra))
            for where, source in sources:
                found = _breaking(self.compare(sub, source, where, depth))
                if found:
                    issues.append(
                        Issue(
                            where,
                            "PATTERN_PROPERTIES_NARROWED",
                            f"the reader's patternProperties "
                            f"{pattern!r} rejects values the writer may write under a matching name "
                            f"({found[0].what})",
                            confluent=ACCEPTS,
                        )
                    )
        return issues

    def _property_names(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        """``propertyNames``: every name the writer may use must pass the reader's. Confluent does not compare
        propertyNames, so it accepts these changes."""
        names = self.reader.deref(r.get("propertyNames", True), [], path)
        if _is_open(names):
            return []
        rejected = sorted(n for n in w.get("properties", {}) if not self.reader.accepts_value(names, n)[0])
        what = None
        if rejected:
            what = f"the writer declares property {_or(rejected)}, whose name the reader's propertyNames rejects"
        elif not (self.writer.deref(_undeclared(w), [], path) is False and not w.get("patternProperties")):
            written = _merge({"type": "string"}, self.writer.deref(w.get("propertyNames", True), [], path))
            found = _breaking(self.compare(names, written, f"{path}.*", depth))
            if found:
                what = (
                    "the writer allows undeclared properties whose names the reader's propertyNames rejects "
                    f"({found[0].what})"
                )
        return [Issue(path, "PROPERTY_NAMES_NARROWED", what, confluent=ACCEPTS)] if what else []

    def _additional(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        r_extra = self.reader.deref(_undeclared(r), [], path)
        w_extra = self.writer.deref(_undeclared(w), [], path)
        if w_extra is False or _is_open(r_extra):
            return []
        keyword = "additionalProperties" if "additionalProperties" in r else "unevaluatedProperties"
        prefix = "ADDITIONAL" if keyword == "additionalProperties" else "UNEVALUATED"
        if r_extra is False:
            return [
                Issue(
                    path,
                    f"{prefix}_PROPERTIES_REMOVED",
                    "the writer allows undeclared properties "
                    f"and the reader's closed content model ({keyword}: false) rejects them",
                )
            ]
        found = [] if _is_open(w_extra) else self.compare(r_extra, w_extra, f"{path}.*", depth)
        if _is_open(w_extra) or _breaking(found):
            return [
                Issue(
                    path,
                    f"{prefix}_PROPERTIES_NARROWED",
                    f"the reader's {keyword} schema rejects undeclared properties the writer allows",
                )
            ]
        return found  # warnings and Confluent-only refusals, as they are

    def _array(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        issues: list[Issue] = []
        r_prefix, r_rest = _items(r)
        w_prefix, w_rest = _items(w)
        for i in range(max(len(r_prefix), len(w_prefix))):
            writer_item = w_prefix[i] if i < len(w_prefix) else w_rest
            reader_item = r_prefix[i] if i < len(r_prefix) else r_rest
            issues += self.compare(reader_item, writer_item, f"{path}[{i}]", depth)
        rest = self.compare(r_rest, w_rest, f"{path}[*]", depth)
        keyword = _rest_keyword(r)
        if _breaking(rest) and keyword in ("additionalItems", "unevaluatedItems"):
            closed = self.reader.deref(r_rest, [], path) is False
            rule = f"{_snake(keyword).rsplit('_', 1)[0]}_ITEMS_{'REMOVED' if closed else 'NARROWED'}"
            rest = [
                Issue(
                    path,
                    rule,
                    f"the reader's {keyword} rejects items beyond the tuple that the writer "
                    f"allows ({_breaking(rest)[0].what})",
                )
            ]
        issues += rest
        issues += _bounds(r, w, path, "minItems", "maxItems", "items")
        if r.get("uniqueItems") and not w.get("uniqueItems"):
            if w.get("maxItems", math.inf) <= 1:
                issues.append(
                    Issue(
                        path,
                        "UNIQUE_ITEMS_ADDED",
                        "the reader requires unique items, which arrays of "
                        "at most one item (the writer's maxItems) always are, but Confluent refuses "
                        "uniqueItems added",
                        readers_break=False,
                    )
                )
            else:
                issues.append(
                    Issue(
                        path,
                        "UNIQUE_ITEMS_ADDED",
                        "the reader requires unique items and the writer may write duplicates",
                    )
                )
        issues += self._contains(r, w, path, depth)
        return issues

    def _every_item_matches(self, schema: Any, w: dict, path: str, depth: int) -> bool:
        """Does each item schema of the writer (tuple positions and the rest) accept only values ``schema``
        accepts?"""
        prefix, rest = _items(w)
        return not any(_breaking(self.compare(schema, item, f"{path}[*]", depth)) for item in [*prefix, rest])

    def _contains(self, r: dict, w: dict, path: str, depth: int) -> list[Issue]:
        """``contains`` with ``minContains`` (default 1) and ``maxContains``. Confluent compares only the two
        counts (MIN_CONTAINS_ADDED / _INCREASED, MAX_CONTAINS_ADDED / _DECREASED break), never the contains
        schema itself: it accepts a stricter or new ``contains``. Readers cope where every item the writer may
        write matches the reader's ``contains`` and the writer's ``minItems`` reaches the reader's minContains."""
        issues: list[Issue] = []
        refused = _confluent_contains(r, w)
        confluent = REFUSES if refused else ACCEPTS
        if "contains" in r:
            c_r, c_w = r["contains"], w.get("contains")
            low_r = r.get("minContains", 1)
            low_w = w.get("minContains", 1) if c_w is not None else 0
            same = c_w is not None and not _breaking(self.compare(c_r, c_w, f"{path}[*]", depth))
            # every item the writer writes matches the reader's contains, and there are enough of them
            met = w.get("minItems", 0) >= low_r and self._every_item_matches(c_r, w, path, depth)
            if low_r > 0 and not same and not met:
                rule = "CONTAINS_ADDED" if c_w is None else "CONTAINS_NARROWED"
                issues.append(
                    Issue(
                        path,
                        rule,
                        "the reader requires an item matching its 'contains' schema, "
                        "which arrays of the writer may lack",
                        confluent=confluent,
                    )
                )
            elif low_r > low_w and not met:
                issues.append(
                    Issue(
                        path,
                        "MIN_CONTAINS_INCREASED" if "minContains" in w else "MIN_CONTAINS_ADDED",
                        f"the reader requires at least {low_r} matching items (minContains) and the writer {low_w}",
                        confluent=confluent,
                    )
                )
            high_r = r.get("maxContains")
            if high_r is not None:
                high_w = w.get("maxContains") if c_w is not None and c_w == c_r else None
                bounded = (high_w is not None and high_w <= high_r) or w.get("maxItems", math.inf) <= high_r
                if not bounded:
                    issues.append(
                        Issue(
                            path,
                            "MAX_CONTAINS_DECREASED" if "maxContains" in w else "MAX_CONTAINS_ADDED",
                            f"the reader allows at most {high_r} items "
                            "matching its 'contains' (maxContains), and the writer may write more",
                            confluent=confluent,
                        )
                    )
        if refused and not issues:
            issues.append(
                Issue(
                    path,
                    refused,
                    "the writer's arrays already satisfy the reader's "
                    "minContains/maxContains, but Confluent compares the numbers alone and refuses "
                    "the change",
                    readers_break=False,
                )
            )
        return issues


_KEYWORD_RULE = {
    "enum": "ENUM_ARRAY_NARROWED",
    "const": "ENUM_ARRAY_NARROWED",
    "type": "TYPE_NARROWED",
    "maxLength": "MAX_LENGTH_DECREASED",
    "minLength": "MIN_LENGTH_INCREASED",
    "pattern": "PATTERN_CHANGED",
    "maximum": "MAXIMUM_DECREASED",
    "minimum": "MINIMUM_INCREASED",
    "exclusiveMaximum": "EXCLUSIVE_MAXIMUM_DECREASED",
    "exclusiveMinimum": "EXCLUSIVE_MINIMUM_INCREASED",
    "multipleOf": "MULTIPLE_OF_CHANGED",
    "required": "REQUIRED_ATTRIBUTE_ADDED",
    "additionalProperties": "ADDITIONAL_PROPERTIES_NARROWED",
}


def _string_bounds(r: dict, w: dict, path: str) -> list[Issue]:
    issues = _bounds(r, w, path, "minLength", "maxLength", "characters")
    if "pattern" in r and r["pattern"] != w.get("pattern"):
        rule = "PATTERN_CHANGED" if "pattern" in w else "PATTERN_ADDED"
        issues.append(
            Issue(
                path,
                rule,
                f"the reader requires the pattern {r['pattern']!r}, which strings the writer allows may not match",
            )
        )
    if "format" in r and r["format"] != w.get("format"):
        issues.append(
            Issue(
                path,
                "FORMAT_CHANGED",
                f"the reader expects format '{r['format']}' where the "
                f"writer "
                f"had {repr(w['format']) if 'format' in w else 'none'}",
                Severity.WARNING,
            )
        )
    return issues


def _bounds(r: dict, w: dict, path: str, low: str, high: str, unit: str) -> list[Issue]:
    issues = []
    if low in r and r[low] > w.get(low, 0):
        rule = f"{_snake(low)}_{'INCREASED' if low in w else 'ADDED'}"
        issues.append(
            Issue(path, rule, f"the reader requires {low} {r[low]} and the writer allows {w.get(low, 0)} {unit}")
        )
    if high in r and r[high] < w.get(high, math.inf):
        rule = f"{_snake(high)}_{'DECREASED' if high in w else 'ADDED'}"
        issues.append(
            Issue(
                path,
                rule,
                f"the reader allows at most {r[high]} {unit} ({high}) and the writer "
                f"{w[high] if high in w else 'any number'}",
            )
        )
    return issues


def _number_bounds(r: dict, w: dict, path: str, integer_only: bool) -> list[Issue]:
    issues = []
    for side, sign, word in (("MINIMUM", 1, "lower"), ("MAXIMUM", -1, "upper")):
        r_bound, w_bound = _bound(r, side, integer_only), _bound(w, side, integer_only)
        if r_bound is None:
            continue
        # compare as (value, exclusive) with the direction folded in: larger means stricter
        r_key = (sign * r_bound[0], r_bound[1])
        if w_bound is None or r_key > (sign * w_bound[0], w_bound[1]):
            exclusive = "EXCLUSIVE_" if r_bound[1] else ""
            change = "ADDED" if w_bound is None else ("INCREASED" if sign > 0 else "DECREASED")
            shown = "none" if w_bound is None else _show_bound(w_bound, side)
            issues.append(
                Issue(
                    path,
                    f"{exclusive}{side}_{change}",
                    f"the reader's {word} bound "
                    f"{_show_bound(r_bound, side)} rejects numbers the writer allows (its "
                    f"bound: {shown})",
                )
            )
    if "multipleOf" in r:
        divisor = Fraction(str(r["multipleOf"]))
        written = Fraction(str(w["multipleOf"])) if "multipleOf" in w else None
        written = Fraction(1) if written is None and integer_only else written
        if written is None or (written / divisor).denominator != 1:
            rule = "MULTIPLE_OF_ADDED" if "multipleOf" not in w else "MULTIPLE_OF_CHANGED"
            allowed = f"multiples of {w['multipleOf']}" if "multipleOf" in w else "any number"
            issues.append(
                Issue(
                    path, rule, f"the reader requires multiples of {r['multipleOf']}, and the writer allows {allowed}"
                )
            )
    return issues


def _bound(s: dict, side: str, integer_only: bool) -> tuple[Fraction, bool] | None:
    """(value, exclusive) of the lower (MINIMUM) or upper (MAXIMUM) bound, draft-4 and draft-6+ forms."""
    plain, exclusive_key = side.lower(), "exclusive" + side.capitalize()
    candidates = []
    if isinstance(s.get(plain), (int, float)) and not isinstance(s.get(plain), bool):
        candidates.append((Fraction(str(s[plain])), s.get(exclusive_key) is True))
    if isinstance(s.get(exclusive_key), (int, float)) and not isinstance(s.get(exclusive_key), bool):
        candidates.append((Fraction(str(s[exclusive_key])), True))
    if not candidates:
        return None
    if integer_only:  # x > 0 on integers is x >= 1: compare like with like
        step = 1 if side == "MINIMUM" else -1
        candidates = [
            (Fraction(math.floor(v) + 1) if step > 0 else Fraction(math.ceil(v) - 1), False)
            if ex
            else (Fraction(math.ceil(v)) if step > 0 else Fraction(math.floor(v)), False)
            for v, ex in candidates
        ]
    sign = 1 if side == "MINIMUM" else -1
    return max(candidates, key=lambda c: (sign * c[0], c[1]))


def _show_bound(bound: tuple[Fraction, bool], side: str) -> str:
    op = (">" if side == "MINIMUM" else "<") + ("" if bound[1] else "=")
    value = bound[0]
    return f"{op} {value.numerator if value.denominator == 1 else float(value)}"


def _items(s: dict) -> tuple[list[Any], Any]:
    fallback = s.get("unevaluatedItems", True)
    if "prefixItems" in s:
        return list(s["prefixItems"]), s.get("items", fallback)
    if isinstance(s.get("items"), list):
        return list(s["items"]), s.get("additionalItems", fallback)
    return [], s.get("items", fallback)


def _rest_keyword(s: dict) -> str:
    if "prefixItems" in s or not isinstance(s.get("items"), list):
        return "items" if "items" in s else "unevaluatedItems" if "unevaluatedItems" in s else "items"
    return "additionalItems" if "additionalItems" in s else "unevaluatedItems" if "unevaluatedItems" in s else ""


def _confluent_contains(r: dict, w: dict) -> str:
    """The Difference.Type with which Confluent's keyword-by-keyword comparison of minContains/maxContains
    refuses the change, or ''."""
    low_r, low_w = r.get("minContains"), w.get("minContains")
    high_r, high_w = r.get("maxContains"), w.get("maxContains")
    if low_r is not None and (low_w is None or low_r > low_w):
        return "MIN_CONTAINS_ADDED" if low_w is None else "MIN_CONTAINS_INCREASED"
    if high_r is not None and (high_w is None or high_r < high_w):
        return "MAX_CONTAINS_ADDED" if high_w is None else "MAX_CONTAINS_DECREASED"
    return ""


_CONFLUENT_NUMBER = (
    ("minimum", 1, "MINIMUM"),
    ("exclusiveMinimum", 1, "EXCLUSIVE_MINIMUM"),
    ("maximum", -1, "MAXIMUM"),
    ("exclusiveMaximum", -1, "EXCLUSIVE_MAXIMUM"),
)


def _confluent_number(r: dict, w: dict, path: str) -> list[Issue]:
    """Confluent compares each numeric keyword on its own (NumberSchemaDiff), so an equivalent bound written
    with another keyword (> 0 and >= 1 on integers) is refused although no reader breaks."""
    changes = []
    for keyword, stricter, name in _CONFLUENT_NUMBER:
        mine, theirs = r.get(keyword), w.get(keyword)
        if not _is_number(mine):
            continue
        if not _is_number(theirs):
            changes.append(f"{name}_ADDED")
        elif (mine - theirs) * stricter > 0:
            changes.append(f"{name}_{'INCREASED' if stricter > 0 else 'DECREASED'}")
    if _is_number(r.get("multipleOf")):
        mine, theirs = Fraction(str(r["multipleOf"])), w.get("multipleOf")
        if not _is_number(theirs):
            changes.append("MULTIPLE_OF_ADDED")
        elif mine != Fraction(str(theirs)) and (Fraction(str(theirs)) / mine).denominator != 1:
            changes.append("MULTIPLE_OF_CHANGED")
    if not changes:
        return []
    return [
        Issue(
            path,
            changes[0],
            "the reader's numeric bounds accept every number the writer allows, but "
            f"Confluent compares each keyword on its own and refuses the change ({', '.join(changes)})",
            readers_break=False,
        )
    ]


def _declared(s: dict, name: str) -> Any:
    """The subschema an object schema applies to property ``name``."""
    if name in s.get("properties", {}):
        return s["properties"][name]
    for pattern, sub in s.get("patternProperties", {}).items():
        if _matches(pattern, name):
            return sub
    return _undeclared(s)


def _dependent_required(s: dict) -> dict[str, list[str]]:
    found = {k: v for k, v in s.get("dependencies", {}).items() if isinstance(v, list)}
    found.update(s.get("dependentRequired", {}))
    return found


def _dependent_schemas(s: dict) -> dict[str, Any]:
    found = {k: v for k, v in s.get("dependencies", {}).items() if not isinstance(v, list)}
    found.update(s.get("dependentSchemas", {}))
    return found


def _undeclared(s: dict) -> Any:
    """The schema for properties no ``properties`` entry declares (patterns aside)."""
    if "additionalProperties" in s:
        return s["additionalProperties"]
    return s.get("unevaluatedProperties", True)


def _pattern_only(s: dict) -> bool:
    """patternProperties with no additionalProperties schema: open for other names, but not for Confluent
    (its isOpenContentModel requires no patternProperties)."""
    return bool(s.get("patternProperties")) and _is_open(s.get("additionalProperties", True))


def _matches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _finite_values(s: dict) -> list[Any] | None:
    if "const" in s:
        return [s["const"]]
    if isinstance(s.get("enum"), list):
        return list(s["enum"])
    return None


def _types(s: dict) -> set[str] | None:
    declared = s.get("type")
    if declared is None:
        return None
    return {declared} if isinstance(declared, str) else set(declared)


def _widen(types: Iterable[str]) -> set[str]:
    types = set(types)
    return types | {"integer"} if "number" in types else types


def _value_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "object")


def _shown_types(types: set[str]) -> list[str]:
    """``integer`` and ``number`` together read as ``number``."""
    return sorted(types - {"integer"} if "number" in types else types)


def _is_open(s: Any) -> bool:
    return s is True or (isinstance(s, dict) and all(k in _ANNOTATIONS for k in s))


def _without(s: dict, *keys: str) -> dict:
    return {k: v for k, v in s.items() if k not in keys}


_CONDITIONAL = ("if", "then", "else")


def _criterion_of(s: dict) -> str | None:
    return next((k for k in ("oneOf", "anyOf", "allOf") if isinstance(s.get(k), list)), None)


def _errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity is Severity.ERROR]


def _breaking(issues: list[Issue]) -> list[Issue]:
    """The issues that say a reader rejects a value the writer may write: errors, not warnings, and not the
    ones only Confluent refuses (``readers_break=False``)."""
    return [i for i in issues if i.severity is Severity.ERROR and i.readers_break]


def _errors_at(issues: list[Issue], path: str) -> bool:
    return any(i.severity is Severity.ERROR and i.path == path for i in issues)


def _distinct(branches: list[Any]) -> int:
    return len({canonical_json(b) for b in branches})


def _matching(edges: set[tuple[int, int]], writers: int) -> int:
    """Size of a maximum matching between reader branches (i) and writer branches (j)."""
    owner: dict[int, int] = {}

    def place(i: int, seen: set[int]) -> bool:
        for j in range(writers):
            if (i, j) in edges and j not in seen:
                seen.add(j)
                if j not in owner or place(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(place(i, set()) for i in sorted({i for i, _ in edges}))


def _confluent_finite(r: dict, w: dict, path: str) -> list[Issue]:
    """A writer that is only an enum or a const is another schema type for Confluent than a reader without
    one (an EnumSchema or ConstSchema against, say, a StringSchema): TYPE_CHANGED, though the reader accepts
    every value."""
    w_keys = {k for k in w if k not in _ANNOTATIONS}
    r_keys = {k for k in r if k not in _ANNOTATIONS}
    if w_keys not in ({"enum"}, {"const"}) or not r_keys or r_keys == w_keys or _criterion_of(r):
        return []
    return [
        Issue(
            path,
            "TYPE_CHANGED",
            f"the reader accepts every value of the writer's {w_keys.pop()}, but "
            "Confluent reads a plain enum or const replaced by another kind of schema as a change of type",
            readers_break=False,
        )
    ]


def _confluent_sum_count(r: dict, w: dict, path: str) -> list[Issue]:
    """Confluent counts branches: a reader with fewer anyOf/oneOf branches (or more allOf conjuncts) than the
    writer is refused even where the remaining branches accept everything (SUM_TYPE_NARROWED,
    PRODUCT_TYPE_EXTENDED)."""
    kind = _criterion_of(r)
    if kind is None or kind != _criterion_of(w):
        return []
    r_size, w_size = _distinct(r[kind]), _distinct(w[kind])
    if kind != "allOf" and r_size < w_size:
        return [
            Issue(
                path,
                "SUM_TYPE_NARROWED",
                f"the reader's {kind} has {r_size} distinct branch(es) where the "
                f"writer's had {w_size}; its remaining branches accept every value, but Confluent counts "
                "branches",
                readers_break=False,
            )
        ]
    if kind == "allOf" and r_size > w_size:
        return [
            Issue(
                path,
                "PRODUCT_TYPE_EXTENDED",
                f"the reader's allOf has {r_size} distinct conjuncts where "
                f"the writer's had {w_size}; the writer's values satisfy them all, but Confluent counts "
                "conjuncts",
                readers_break=False,
            )
        ]
    return []


def _merge(a: Any, b: Any) -> Any:
    """Both constraints at once, shallowly (what an allOf of the two means for the keywords compared here)."""
    if a is False or b is False:
        return False
    if a is True:
        return b
    if b is True:
        return a
    merged = dict(a)
    for key, value in b.items():
        if key not in merged:
            merged[key] = value
        elif key == "properties":
            props = dict(merged[key])
            for name, sub in value.items():
                props[name] = sub if name not in props else {"allOf": [props[name], sub]}
            merged[key] = props
        elif key == "required":
            merged[key] = list(dict.fromkeys([*merged[key], *value]))
        elif key == "type":
            # a "type": null (no valid schema has one) constrains nothing
            mine, theirs = (_ALL_TYPES if t is None else t for t in (_types(merged), _types(b)))
            merged[key] = sorted({t for t in mine if t in _widen(theirs)} | {t for t in theirs if t in _widen(mine)})
        elif key in _LOWER_BOUNDS and _is_number(value) and _is_number(merged[key]):
            merged[key] = max(merged[key], value)
        elif key in _UPPER_BOUNDS and _is_number(value) and _is_number(merged[key]):
            merged[key] = min(merged[key], value)
        else:  # an approximation: the more specific (later) schema's keyword wins
            merged[key] = value
    return merged


_LOWER_BOUNDS = {"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"}
_UPPER_BOUNDS = {"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"}


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dedupe(issues: list[Issue]) -> list[Issue]:
    return list(dict.fromkeys(issues))


def _snake(keyword: str) -> str:
    return "".join("_" + c if c.isupper() else c.upper() for c in keyword).lstrip("_")


def _or(items: list[str], word: str = "or") -> str:
    quoted = [f"'{i}'" for i in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" {word} " + quoted[-1]


def _json(value: Any) -> str:
    return json.dumps(value)
