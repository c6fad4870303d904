"""JSON Schema as a :class:`~toolkit.formats.base.Format`: the one validity check for ``.json`` schemas.

A document is refused by ``epistle check`` and codegen when (in this order; a document that is not a valid
schema gets that one problem; the runtime refuses only 1-3, :meth:`JsonSchemaFormat.invalid`):

1. it is not a JSON object, or its ``$schema`` names a draft jsonschema does not know;
2. it does not conform to its draft's meta-schema (2020-12 when ``$schema`` is absent);
3. a ``$ref`` does not resolve inside the document or in a schema it declares as a reference (a ``$ref``
   whose URI is a reference's name, see :mod:`toolkit.references`; nothing else is fetched);
4. it uses a construct datamodel-code-generator cannot turn into one usable pydantic model, or one whose
   model cannot follow the validator (:class:`~toolkit.errors.UnsupportedSchema`, every occurrence
   reported):

   - a definition name (under ``$defs`` or ``definitions``) containing ``.``: the generator reads the dots
     as module paths and writes several modules instead of one;
   - a root without ``type`` (and without ``$ref``, ``allOf``/``anyOf``/``oneOf``, ``enum``, ``const``,
     ``if`` or ``not`` to give it one): the validator accepts any JSON value as the body, the generated
     class only an object;
   - a root ``type`` that is a list (``["object", "null"]``): the generated class accepts only the object,
     so a ``null`` body that passes validation would fail in the model;
   - a root that is an ``enum``: the generator writes a Python ``Enum``, not a pydantic model, and the model
     index could not build any message with it;
   - a ``pattern`` or ``patternProperties`` key that no validator compiles, and a ``$ref`` loop that stays on
     one value (through ``allOf``, ``anyOf`` ...): a value that reaches them cannot be validated. A registry
     version with them still validates the bodies that never reach them, so the runtime does not refuse it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urldefrag, urlsplit

from toolkit.errors import SchemaFileError, UnsupportedSchema
from toolkit.formats.base import BaseFormat, child, shorten
from toolkit.layout import SchemaFormat

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

    from toolkit.compat.findings import Issue
    from toolkit.references import Referenced
    from toolkit.validation.json_schema import JsonSchema

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# Keywords whose values are data, not subschemas: a "$ref" key inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})
# Keywords whose values map arbitrary names to subschemas: the names are not keywords.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_DEFINITIONS = ("$defs", "definitions")
# Root keywords that give the body's type without "type" (a reference, a composition, a value list): the
# generator builds the model from them, so a root with one of them but no "type" is not refused for that.
_TYPED_ELSEWHERE = ("$ref", "allOf", "anyOf", "oneOf", "enum", "const", "if", "not")


# The drafts jsonschema knows, by $schema (normalised as jsonschema does: no empty fragment), and whether
# jsonschema-rs checks their meta-schema. jsonschema-rs imports in milliseconds; jsonschema takes seconds
# (its format checkers compile a grammar at import), which codegen of one changed file would pay for nothing.
KNOWN_DRAFTS = {
    "http://json-schema.org/draft-03/schema": False,
    "http://json-schema.org/draft-04/schema": True,
    "http://json-schema.org/draft-06/schema": True,
    "http://json-schema.org/draft-07/schema": True,
    "https://json-schema.org/draft/2019-09/schema": True,
    "https://json-schema.org/draft/2020-12/schema": True,
}


def draft_of(path: Path | str, document: Any) -> str:
    """The document's draft as its meta-schema URI (2020-12 when it has no ``$schema``).

    Raises:
        SchemaFileError: not an object, or an unknown ``$schema`` (field ``$schema``).
    """
    if not isinstance(document, dict):
        raise SchemaFileError(
            path,
            f"a JSON Schema must be a JSON object, not {type(document).__name__}",
            fix=f'start the file with {{"$schema": "{DRAFT_2020_12}"',
        )
    declared = document.get("$schema", DRAFT_2020_12)
    uri = urlsplit(declared).geturl() if isinstance(declared, str) else None
    if uri not in KNOWN_DRAFTS:
        raise SchemaFileError(
            path,
            f"unknown $schema {declared!r}",
            field="$schema",
            fix=f"use {DRAFT_2020_12} (or another draft jsonschema knows: draft-04, -06, -07, 2019-09)",
        )
    return uri


def validator_class(path: Path | str, document: Any) -> type[Validator]:
    """The jsonschema validator class for the document's ``$schema`` (draft 2020-12 when it has none).

    Raises:
        SchemaFileError: not an object, or an unknown ``$schema`` (field ``$schema``).
    """
    import jsonschema

    draft_of(path, document)
    if "$schema" not in document:
        return jsonschema.Draft202012Validator
    return jsonschema.validators.validator_for(document)


class JsonSchemaFormat(BaseFormat):
    schema_format = SchemaFormat.JSON
    suffix = ".json"
    label = "JSON Schema"
    codegen_input = "jsonschema"

    def invalid(self, path: Path | str, document: Any, references: Referenced = ()) -> list[SchemaFileError]:
        try:
            _check_meta_schema(path, draft_of(path, document), document)
        except SchemaFileError as exc:
            return [exc]
        return list(_unresolved_refs(path, document, references))

    def unsupported(self, path: Path | str, document: Any, references: Referenced = ()) -> list[UnsupportedSchema]:
        return (
            list(_unsupported(path, document))
            + list(_deep_references(path, document, references))
            + list(_bad_patterns(path, document))
            + list(_in_place_loops(path, document))
        )

    def validator_class(
        self, path: Path | str, document: Any, *, codegen: bool = True, references: Referenced = ()
    ) -> type[Validator]:
        """:meth:`validate` (``codegen`` as there), then the validator class for the document's draft."""
        self.validate(path, document, codegen=codegen, references=references)
        return validator_class(path, document)

    def compile(self, label: str, subject: str, version: int, document: Any, references: Referenced = ()) -> JsonSchema:
        from toolkit.validation.json_schema import JsonSchema

        return JsonSchema.compile(label, subject, version, document, references)

    def compatibility(self, reader: Any, writer: Any) -> list[Issue]:
        from toolkit.compat import json_schema as json_compat

        return json_compat.check(reader, writer)


def _check_meta_schema(path: Path | str, draft: str, document: dict) -> None:
    if KNOWN_DRAFTS[draft]:
        import jsonschema_rs

        try:
            jsonschema_rs.meta.validate(document)
            return
        except jsonschema_rs.ValidationError as exc:
            where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.instance_path)
            raise _meta_schema_error(path, exc.message, where, draft) from None
        except Exception:  # noqa: BLE001 - anything jsonschema-rs cannot do itself: jsonschema decides
            pass
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    cls = validator_for(document) if "$schema" in document else validator_for({"$schema": DRAFT_2020_12})
    try:
        error = best_match(cls(cls.META_SCHEMA).iter_errors(document))
    except RecursionError:
        raise SchemaFileError(path, "schema is nested too deeply", fix="flatten it with $defs") from None
    if error is not None:
        raise _meta_schema_error(path, error.message, error.json_path, draft)


def _meta_schema_error(path: Path | str, message: str, where: str, draft: str) -> SchemaFileError:
    return SchemaFileError(
        path,
        f"does not conform to its meta-schema: {shorten(message)}",
        field=where,
        fix=f"correct the schema at {where} (see {draft})",
    )


def reference_registry(document: Any, references: Referenced) -> Any:
    """A ``referencing.Registry`` holding the referenced schemas under their reference names (and those names
    resolved against the root's ``$id``): how a ``$ref`` into another subject's schema resolves."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    from toolkit.references import json_resources

    return Registry().with_resources(
        (uri, Resource.from_contents(doc, default_specification=DRAFT202012))
        for uri, doc in json_resources(document, references)
    )


def _unresolved_refs(path: Path | str, document: dict, references: Referenced = ()) -> Iterator[SchemaFileError]:
    from referencing import Resource
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    base = resource.id() or ""
    resolver = reference_registry(document, references).with_resource(base, resource).resolver(base_uri=base)
    for json_path, ref, scope in _iter_refs(document, "$", resolver, Resource, DRAFT202012):
        try:
            scope.lookup(ref)
        except Unresolvable:
            target, fragment = urldefrag(ref)
            if target and fragment and _resolves(scope, target):
                yield SchemaFileError(
                    path,
                    f"$ref {ref!r} does not resolve: the referenced schema {target!r} exists but has nothing at "
                    f"#{fragment}",
                    field=json_path,
                    fix=f'point it at a part that exists in {target} (e.g. "{target}#/$defs/Name") or at its '
                    f'root ("{target}")',
                )
                continue
            kind = (
                "a reference to another file or URL" if not ref.startswith("#") else "no such definition in this file"
            )
            yield SchemaFileError(
                path,
                f"$ref {ref!r} does not resolve ({kind})",
                field=json_path,
                fix='point it at a definition in this file, e.g. "#/$defs/Name", or at another subject\'s '
                "schema declared under [references] in subject.toml (the $ref's URI is the reference's "
                "name); URLs are not fetched",
            )


def _resolves(scope: Any, ref: str) -> bool:
    from referencing.exceptions import Unresolvable

    try:
        scope.lookup(ref)
    except Unresolvable:
        return False
    return True


def _iter_refs(node: Any, json_path: str, resolver: Any, resource: Any, spec: Any) -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _iter_refs(item, f"{json_path}[{index}]", resolver, resource, spec)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("$id"), str) and json_path != "$":
        resolver = resolver.in_subresource(resource.from_contents(node, default_specification=spec))
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            yield f"{json_path}.$ref", value, resolver
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, subschema in value.items():
                yield from _iter_refs(subschema, f"{json_path}.{key}.{name}", resolver, resource, spec)
        elif key not in _DATA_KEYWORDS:
            yield from _iter_refs(value, f"{json_path}.{key}", resolver, resource, spec)


def _deep_references(path: Path | str, document: Any, references: Referenced) -> Iterator[UnsupportedSchema]:
    """A ``$ref`` into another subject's schema that codegen cannot import: its models import the referenced
    module's root class or the class of one of its top-level definitions, nothing deeper."""
    if not references:
        return
    from toolkit.references import json_refs

    names = {name for name, _ in references}
    for json_path, ref in json_refs(document):
        target, fragment = urldefrag(ref)
        parts = fragment.split("/")
        if target not in names or fragment in ("", "/"):
            continue
        if len(parts) == 3 and parts[0] == "" and parts[1] in _DEFINITIONS:
            continue
        yield UnsupportedSchema(
            path,
            f"$ref {ref!r}: codegen imports a referenced schema's root or one of its top-level definitions only",
            field=f"${json_path}",
            fix=f'point the $ref at "{target}" or "{target}#/$defs/<Name>"',
        )


# Keywords whose value is one subschema, and those whose value is a list of subschemas (every draft; "items"
# is either): where a "pattern" is a keyword, and not a property name or an annotation's data.
SUBSCHEMA_KEYWORDS = (
    "additionalProperties",
    "additionalItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "items",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
)
SUBSCHEMA_LIST_KEYWORDS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SUBSCHEMA = frozenset(SUBSCHEMA_KEYWORDS + SUBSCHEMA_LIST_KEYWORDS)
_SUBSCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "dependentSchemas", "dependencies"})


def _subschemas(document: Any) -> Iterator[tuple[str, dict, bool]]:
    """Every subschema of ``document`` (each object once), in document order, with its JSON path and whether
    it stands below a subschema with an id of its own (there "#/..." is not the file's root)."""
    seen: set[int] = set()
    stack: list[tuple[str, Any, bool]] = [("$", document, False)]
    while stack:
        json_path, node, in_scope = stack.pop()
        if isinstance(node, list):  # (children pushed last first: document order)
            stack.extend((child(json_path, i), item, in_scope) for i, item in reversed(list(enumerate(node))))
            continue
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        in_scope = in_scope or (json_path != "$" and any(isinstance(node.get(k), str) for k in ("$id", "id")))
        yield json_path, node, in_scope
        children: list[tuple[str, Any, bool]] = []
        for key, value in node.items():
            if key in _SUBSCHEMA:
                children.append((child(json_path, key), value, in_scope))
            if (key in _SUBSCHEMA_MAPS or key == "patternProperties") and isinstance(value, dict):
                children.extend((child(child(json_path, key), name), sub, in_scope) for name, sub in value.items())
        stack.extend(reversed(children))


def _bad_patterns(path: Path | str, document: Any) -> Iterator[UnsupportedSchema]:
    """A ``pattern`` or ``patternProperties`` key that is no regular expression: a value that reaches it
    cannot be validated (jsonschema raises on it, jsonschema-rs cannot compile the schema)."""
    for json_path, node, _ in _subschemas(document):
        if isinstance(node.get("pattern"), str):
            problem = _regex_problem(node["pattern"])
            if problem:
                yield _pattern_error(path, child(json_path, "pattern"), node["pattern"], problem)
        if isinstance(node.get("patternProperties"), dict):
            for regex in node["patternProperties"]:
                problem = _regex_problem(regex)
                if problem:
                    where = child(child(json_path, "patternProperties"), regex)
                    yield _pattern_error(path, where, regex, problem)


# Keywords that apply their subschemas to the value itself, not to a part of it.
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_LIST = ("allOf", "anyOf", "oneOf")
_IN_PLACE_MAP = ("dependentSchemas", "dependencies")  # (a dependency's schema applies to the object itself)
# Drafts whose "$ref" replaces the rest of its object (its siblings are ignored).
_REF_ALONE = ("draft-03", "draft-04", "draft-06", "draft-07")


def _in_place_loops(path: Path | str, document: Any) -> Iterator[UnsupportedSchema]:
    """A ``$ref`` (with ``allOf``, ``anyOf``, ``oneOf``, ``not``, ``if``/``then``/``else``, a dependency) that
    leads back to where it started without going into a property or an item: it applies to the same value
    without end. jsonschema-rs accepts any value there, jsonschema (explaining a rejected body) recurses until
    Python stops it, and pydantic refuses every value there (a recursion loop). Followed: references inside
    the file by JSON pointer (``#``, ``#/...``), not from a subschema with an id of its own; not followed:
    anchors (``#name``), and URIs (the root's ``$id`` too)."""
    legacy = isinstance(document, dict) and any(d in str(document.get("$schema", "")) for d in _REF_ALONE)
    nodes: dict[int, tuple[str, dict]] = {}
    scoped: set[int] = set()  # below a subschema with an id of its own: its "#/..." is not the file's
    for json_path, node, in_scope in _subschemas(document):
        nodes[id(node)] = (json_path, node)
        if in_scope:
            scoped.add(id(node))
    order = {key: index for index, key in enumerate(nodes)}

    def in_place(node: dict) -> Iterator[Any]:
        """The schemas applied to the value ``node`` is applied to, each noted with its JSON path (a part
        the walk above does not visit, e.g. under an unknown keyword, is reached only this way)."""
        where = nodes[id(node)][0]
        targets: list[tuple[Any, str]] = []
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#") and id(node) not in scoped:
            found = _pointer(document, ref[1:])
            if found is not None:
                targets.append(found)
        if not (legacy and isinstance(ref, str)):  # (in those drafts a $ref's siblings are not applied)
            targets += [(node[key], child(where, key)) for key in _IN_PLACE_ONE if key in node]
            for key in _IN_PLACE_LIST:
                if isinstance(node.get(key), list):
                    targets += [(item, child(child(where, key), i)) for i, item in enumerate(node[key])]
            for key in _IN_PLACE_MAP:
                if isinstance(node.get(key), dict):
                    targets += [(item, child(child(where, key), name)) for name, item in node[key].items()]
        for target, target_path in targets:
            if isinstance(target, dict):
                nodes.setdefault(id(target), (target_path, target))
                yield target

    state: dict[int, int] = {}  # 1: on the current walk, 2: done
    for start in list(nodes):
        if start in state:
            continue
        walk: list[tuple[dict, Iterator[Any]]] = [(nodes[start][1], in_place(nodes[start][1]))]
        state[start] = 1
        while walk:
            node, edges = walk[-1]
            target = next(edges, None)
            if target is None:
                state[id(node)] = 2
                walk.pop()
                continue
            if state.get(id(target)) == 1:
                loop = [n for n, _ in walk][[id(n) for n, _ in walk].index(id(target)) :]
                first = min(range(len(loop)), key=lambda i: order.get(id(loop[i]), len(order)))
                loop = loop[first:] + loop[:first]  # told from the loop's first schema in the file
                names = [nodes[id(n)][0] for n in loop]
                yield UnsupportedSchema(
                    path,
                    f"{' -> '.join([*names, names[0]])} applies to the same value without end (through $ref, "
                    "allOf, anyOf, oneOf, not, if/then/else or a dependency): jsonschema-rs accepts any value there, "
                    "jsonschema (which explains a rejected body) recurses until Python stops it, and the model "
                    "refuses every value there",
                    field=names[0],
                    fix="break the loop: a schema may refer to itself only below a property or an array item, "
                    'e.g. "items": {"$ref": "#/$defs/Node"}',
                )
                return
            if id(target) not in state:
                state[id(target)] = 1
                walk.append((target, in_place(target)))


def _pointer(document: Any, fragment: str) -> tuple[Any, str] | None:
    """The part of ``document`` a ``$ref``'s fragment names as a JSON pointer (``""`` the root, ``"/a/b"``),
    with its JSON path; None for another fragment (an anchor) or a pointer to nothing."""
    from urllib.parse import unquote

    if fragment and not fragment.startswith("/"):
        return None
    node, json_path = document, "$"
    for part in unquote(fragment).split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node, json_path = node[part], child(json_path, part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node, json_path = node[int(part)], child(json_path, int(part))
        else:
            return None
    return node, json_path


def _regex_problem(regex: str) -> str | None:
    """Why ``regex`` is not one JSON Schema's validators can use, or None. jsonschema-rs reads JSON Schema's
    dialect (ECMA-262) in linear time; a regex it cannot compile makes the whole schema fall back to
    jsonschema, whose Python ``re`` reads it otherwise (``\\Z`` is "Z" in ECMA-262) and backtracks without
    bound on a hostile value."""
    import re
    import warnings

    import jsonschema_rs

    try:
        jsonschema_rs.validator_for({"pattern": regex})
        return None
    except Exception:  # noqa: BLE001 - not ECMA-262 as jsonschema-rs reads it
        pass
    try:
        with warnings.catch_warnings():  # ("possible nested set": Python's own future syntax)
            warnings.simplefilter("ignore", FutureWarning)
            re.compile(regex)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        return f"not a regular expression: {exc or type(exc).__name__}"
    return "Python's re reads it, JSON Schema's dialect (ECMA-262) does not"


def _pattern_error(path: Path | str, where: str, regex: str, problem: str) -> UnsupportedSchema:
    return UnsupportedSchema(
        path,
        f"{shorten(repr(regex), 80)} is {problem}: jsonschema-rs cannot compile it, so a value that reaches it "
        "cannot be validated, or only by Python's re, slowly and in another dialect",
        field=where,
        fix="write it in ECMA-262, JSON Schema's dialect: e.g. (?<name>...) for a named group, $ rather than \\Z",
    )


def _unsupported(path: Path | str, document: dict) -> Iterator[UnsupportedSchema]:
    root_type = document.get("type")
    if root_type is None and not any(key in document for key in _TYPED_ELSEWHERE):
        yield UnsupportedSchema(
            path,
            'the root has no "type": the validator accepts any JSON value as the body (a string, a '
            "number, null ...), the generated model only an object",
            field="$",
            fix='add "type": "object" to the root (a message body is an object)',
        )
    if isinstance(root_type, list):
        yield UnsupportedSchema(
            path,
            f"the root's type is a list {root_type!r}: codegen makes one class for the first object "
            "type, so a body of another listed type would pass validation and then fail in the model",
            field="$.type",
            fix='give the root one type, "type": "object" (a message body is an object); '
            "put optional or nullable values in its properties",
        )
    if "enum" in document and root_type in (None, "string", "integer", "number"):
        yield UnsupportedSchema(
            path,
            "the root is an enum: codegen makes a Python Enum, not a pydantic model, so no message "
            "could be built from it",
            field="$.enum",
            fix='make the root an object with the enum as a property, e.g. {"type": "object", '
            '"properties": {"value": {"enum": [...]}}, "required": ["value"]}',
        )
    yield from _dotted_definitions(path, document, "$")


def _dotted_definitions(path: Path | str, node: Any, json_path: str) -> Iterator[UnsupportedSchema]:
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _dotted_definitions(path, item, child(json_path, index))
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in _DATA_KEYWORDS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, subschema in value.items():
                where = child(child(json_path, key), name)
                if key in _DEFINITIONS and "." in name:
                    new = name.replace(".", "_")
                    yield UnsupportedSchema(
                        path,
                        f"definition name {name!r} contains '.': codegen reads the dots as module "
                        "paths and writes several modules instead of one",
                        field=where,
                        fix=f'rename it to {new!r} and every $ref to it to "#/{key}/{new}"',
                    )
                yield from _dotted_definitions(path, subschema, where)
        else:
            yield from _dotted_definitions(path, value, child(json_path, key))
