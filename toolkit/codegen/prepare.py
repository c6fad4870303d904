r"""What codegen feeds datamodel-code-generator, so that the model accepts what the validator accepts.

The consumer validates a body first and then builds the model from the validator's output, so the model
never has to refuse anything: it has to accept every validated value and keep all of it, so that
``model_dump(by_alias=True, exclude_unset=True)`` gives the value back. The generator alone does not:

- an object without ``additionalProperties: false`` is open, but a pydantic model ignores (drops) unknown
  keys unless its config says ``extra="allow"``: such objects get ``additionalProperties: true`` (and
  render.py has them populated by alias only, so an unknown ``order_id`` is not read as ``orderId``);
- a ``pattern`` pydantic would read otherwise than the validator is left to the validator (which matched
  it with JSON Schema's dialect, ECMA-262, in jsonschema-rs): one with a class escape (``\d``, ``\w``, ``\s``,
  ``\b``, ``\p`` and their negations are Unicode classes in Rust's ``regex``, so ``^[^\d]+$`` would refuse
  the Arabic-Indic "١" the validator accepted), a group flag, lookaround or backreference (``(?=``,
  ``(?i)``, ``\1``: another engine, Python's ``re``, and its own reading), or one Rust's engine refuses;
  plain patterns (``^[A-Z]{2}$``) stay in the model;
- ``patternProperties`` become ``extra="forbid"`` (beside ``additionalProperties: false``) or a
  ``dict[constr(pattern=...), T]`` that refuses the keys no pattern matches: they are dropped and the object
  opened (the validator has checked the keys and their values; the model keeps them as extras);
- a subschema with ``properties`` or ``items`` but no ``type`` also accepts every value of another type; it
  becomes ``anyOf: [<it, typed>, {"not": {"type": ...}}]``, i.e. ``Model | Any``;
- an enum mixing booleans and numbers is a ``Literal`` (in a Python Enum ``True`` is the member ``1``);
  booleans are ``StrictBool`` (a lax bool turns ``"off"`` into ``False`` ahead of an enum branch); URIs,
  durations and e-mail addresses stay strings (``AnyUrl``, ``timedelta`` and ``EmailStr`` rewrite them, and
  ``EmailStr`` refuses addresses the validator accepts);
- Avro: a non-null field with a default stays non-Optional (``strict_nullable``), a ``big-decimal`` is a
  Decimal (the validator decodes it so), and a root that is not a record (an enum, a union, an array ...)
  is wrapped so that render.py can make the module define a ``RootModel`` the index can use.

What the generated model still cannot follow (a JSON Schema root without a type or with a list of types,
Avro unions whose branches the model cannot tell apart once unwrapped) is refused before this runs, by
``Format.unsupported`` in :mod:`toolkit.formats` (``epistle check`` and codegen, with the same message).
Known value-level limits of the types kept (not refused): ``format: date-time``/``time`` with a leap second
(``23:59:60``) is refused by the model, and digits below the microsecond are dropped.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from toolkit.formats.json_schema import SUBSCHEMA_KEYWORDS, SUBSCHEMA_LIST_KEYWORDS

# Options passed to datamodel-code-generator on top of the layout ones in render.py.
GENERATOR_OPTIONS: dict[str, Any] = {
    # A field with a default is not nullable unless its type says so (Avro: `"default": false` on a
    # boolean stays `bool = False`, not `bool | None`).
    "strict_nullable": True,
    # The model is built from Python values (the validator's output), where a lax bool turns the string
    # "off" into False: in `bool | <an enum with "off">` the enum never gets it (a str enum is not strict
    # for a plain str). Booleans from JSON and Avro are real bools, so StrictBool refuses nothing valid.
    "strict_types": ["bool"],
    # URIs stay the strings that were sent: pydantic's AnyUrl rewrites them ("https://A.com" ->
    # "https://a.com/"), so the dump would not give the input back. A duration stays a string too: a
    # timedelta has no months ("P1M" came back as "P30D"). E-mail addresses stay strings as well: pydantic's
    # EmailStr refuses addresses the validator accepts ("a@b", "ops@localhost") and lower-cases the domain
    # ("A@Example.COM" -> "A@example.com"). The validator checks all these formats.
    "type_mappings": [
        "string+uri=string",
        "string+uri-reference=string",
        "string+iri=string",
        "string+iri-reference=string",
        "string+uri-template=string",
        "string+duration=string",
        "string+email=string",
        "string+idn-email=string",
    ],
}

# Keywords whose value is one subschema / a list of subschemas / a map of name -> subschema.
_ONE = SUBSCHEMA_KEYWORDS
_LIST = SUBSCHEMA_LIST_KEYWORDS
_MAP = ("properties", "$defs", "definitions", "dependentSchemas")
_OPAQUE = ("$ref", "enum", "const")  # the value's type is given elsewhere
# Keywords that give a type-less subschema a shape the generator turns into a type (a model, a list).
# Constraint-only subschemas (``required``, ``minLength`` ...) stay as they are: the generator gives them
# no type of their own (``Any``), or they are branches of a composition that only add constraints.
_IMPLIED = {
    "object": ("properties",),
    "array": ("items", "prefixItems"),
}


def prepare_json_schema(document: Any) -> Any:
    """A copy of ``document`` rewritten for the generator (see the module docstring); the root stays as it
    is apart from opening it (a root without ``type`` is refused by :mod:`toolkit.formats` first)."""
    document = copy.deepcopy(document)
    _prepare(document, root=True)
    return document


def _prepare(node: Any, root: bool = False) -> Any:
    if not isinstance(node, dict):
        return node
    for key in _ONE:
        if isinstance(node.get(key), dict):
            node[key] = _prepare(node[key])
    for key in _LIST:
        if isinstance(node.get(key), list):
            node[key] = [_prepare(item) for item in node[key]]
    for key in _MAP:
        if isinstance(node.get(key), dict):
            node[key] = {name: _prepare(sub) for name, sub in node[key].items()}
    if isinstance(node.get("pattern"), str) and not model_can_match(node["pattern"]):
        del node["pattern"]
    if "patternProperties" in node:
        # Matching keys are extras for the model: their values were checked by the validator.
        del node["patternProperties"]
        node["additionalProperties"] = True
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = True
    if isinstance(node.get("enum"), list) and _mixes_bools_and_numbers(node["enum"]):
        # In a Python Enum, True is an alias of the member 1 (True == 1): `true` would come back as `1`.
        # A Literal[1, True] keeps them apart (datamodel-code-generator's per-schema extension).
        node["x-enum-field-as-literal"] = True
    if root or "type" in node or any(key in node for key in _OPAQUE) or _typed_branches(node):
        return node
    implied = [kind for kind, keywords in _IMPLIED.items() if any(key in node for key in keywords)]
    if len(implied) != 1:
        return node
    typed = {
        key: value
        for key, value in node.items()
        if key not in ("title", "description", "default", "examples", "$id", "$anchor")
    }
    outer = {key: value for key, value in node.items() if key not in typed}
    return {**outer, "anyOf": [{**typed, "type": implied[0]}, {"not": {"type": implied[0]}}]}


# What makes a regex mean something else to pydantic than to the validator (see the module docstring).
# (Inside brackets Rust's engine also reads "[:alpha:]" as a POSIX class and "&&", "--", "~~" and a nested
# "[" as set operations, where ECMA-262 reads plain characters.)
_DIALECT_SPECIFIC = re.compile(r"\\[dDwWsSbBpPuxck0-9]|\(\?(?!:)")


def model_can_match(regex: str) -> bool:
    """Whether the model may match ``regex`` itself: pydantic's default engine compiles it and reads it as
    the validator does (no class escape, group flag, lookaround or backreference, no bracket that Rust's
    engine reads as a class or a set operation)."""
    if _DIALECT_SPECIFIC.search(regex) or _bracket_in_class(regex):
        return False
    from pydantic_core import SchemaError, SchemaValidator, core_schema

    try:
        SchemaValidator(core_schema.str_schema(pattern=regex))
    except SchemaError:
        return False
    return True


def _bracket_in_class(regex: str) -> bool:
    """Whether a character class holds an unescaped ``[`` (``[[:alpha:]]``, ``[a[b]]``) or ``&&``, ``--``,
    ``~~`` (Rust's set operations; plain characters to ECMA-262)."""
    in_class, escaped, previous = False, False, ""
    for char in regex:
        if escaped:
            escaped, previous = False, ""
            continue
        if char == "\\":
            escaped = True
        elif char == "[":
            if in_class:
                return True
            in_class = True
        elif char == "]":
            in_class = False
        elif in_class and char in "&-~" and previous == char:
            return True
        previous = char
    return False


def _mixes_bools_and_numbers(values: list) -> bool:
    return any(isinstance(v, bool) for v in values) and any(type(v) in (int, float) for v in values)


def _typed_branches(node: dict) -> bool:
    """Whether a composition keyword of ``node`` gives the type (a branch with a type, $ref, enum or const):
    then the generator builds the union from the branches. Branches of bare keywords (``required``,
    ``not: {required}``) leave the node as type-less as it looks."""
    for key in ("allOf", "anyOf", "oneOf"):
        for branch in node.get(key) or ():
            if isinstance(branch, dict) and any(k in branch for k in ("type", *_OPAQUE, "allOf", "anyOf", "oneOf")):
                return True
    return False


def prepare_avro_schema(document: Any, class_name: str) -> Any:
    """The Avro schema as given when its root is a record; anything else is wrapped in a record with one
    field ``root`` (named ``class_name``), which render.py turns into a ``RootModel``."""
    if avro_root_kind(document) in ("record", "error"):
        return document
    return {"type": "record", "name": class_name, "fields": [{"name": "root", "type": document}]}


def avro_root_kind(document: Any) -> str:
    if isinstance(document, list):
        return "union"
    if isinstance(document, dict):
        kind = document.get("type")
        return kind if isinstance(kind, str) else "union" if isinstance(kind, list) else "schema"
    return str(document)
