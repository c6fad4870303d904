"""Validator/model agreement over the vendored corpus: the machinery the tests use.

For one schema version: the project's codegen (``render_module``, what ``epistle codegen`` runs) writes the
model into a temporary package; valid bodies come from hypothesis (hypothesis-jsonschema for JSON Schema, a
strategy built from the parsed Avro schema that writes the Avro JSON encoding); each valid body also yields
mutants (an extra key in some object, a key dropped, a leaf of another type). Every body then goes through
what the consumer does (``CompiledSchema.decode``, then ``model_validate`` of its output) and is judged:

- the validator accepts  => the model accepts the validator's output, and
  ``model_dump(mode="json" for JSON Schema / "python" for Avro, by_alias=True, exclude_unset=True)`` gives
  that output back (so every property the schema allows, unknown ones included, is kept);
- the validator rejects  => the pipeline dead-letters at stage ``validation``; for JSON Schema the model's
  own verdict on the body is counted (how often the model alone would also have refused it), not asserted.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any
from uuid import UUID

from hypothesis import strategies as st
from pydantic import BaseModel, RootModel, TypeAdapter, ValidationError

from toolkit.codegen.render import package_name, render_module, root_class_name
from toolkit.consumer.pipeline import Pipeline
from toolkit.errors import CodegenError, MessageError, SchemaFileError, UnsupportedSchema
from toolkit.layout import SchemaFile, SchemaFormat, load_schemas
from toolkit.registry.base import RegisteredSchema
from toolkit.validation import CompiledSchema, compile_schema

CORPUS = Path(__file__).resolve().parent / "schemas"
EXTRA_KEY = "x_corpus_extra"
# Corpus schemas toolkit.formats refuses (epistle check and codegen: UnsupportedSchema), so no model is
# generated and no body judged: subject -> (words of the refusal, why). Any other refusal fails the corpus
# tests, and so does a listed schema that is no longer refused.
REFUSED = {
    "licenses-1": (
        'the root has no "type"',
        "the root has no type: the validator takes any JSON value, a model only an object",
    ),
    "prometheus-rules": (
        "the root's type is a list",
        'the root\'s type is ["object", "null"]: the model takes only the object',
    ),
}


@dataclass
class Subject:
    name: str
    schema_file: SchemaFile
    compiled: CompiledSchema | None = None
    model: type[BaseModel] | None = None
    error: str | None = None  # codegen or import failed
    refused: str | None = None  # an UnsupportedSchema from toolkit.formats (codegen and check refuse it)


@dataclass
class Tally:
    valid: int = 0  # generated valid bodies
    valid_accepted: int = 0  # ... the validator accepted (the rest: the generator's fault, counted)
    mutants: int = 0
    mutants_accepted: int = 0
    mutants_rejected: int = 0
    model_also_rejects: int = 0  # JSON Schema: of the rejected mutants, how many the model alone refuses
    agreed: int = 0  # accepted bodies whose model built and round-tripped
    failures: list[str] = field(default_factory=list)
    rejected_valid: list[str] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)


def load_corpus(corpus: Path = CORPUS) -> dict[str, SchemaFile]:
    return {name: subject.versions[0] for name, subject in load_schemas(corpus).items()}


def build_subjects(out: Path, package: str = "corpus_models", corpus: Path = CORPUS) -> dict[str, Subject]:
    """Render every corpus schema with the project's codegen into ``out/<package>`` and import the models."""
    root = out / package
    root.mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").write_text("")
    subjects: dict[str, Subject] = {}
    for name, schema_file in load_corpus(corpus).items():
        subject = subjects[name] = Subject(name, schema_file)
        class_name = root_class_name(schema_file)
        module = package_name(name)
        try:
            (root / f"{module}.py").write_text(render_module(schema_file, class_name))
        except UnsupportedSchema as exc:  # refused by toolkit.formats: epistle check refuses it too
            subject.refused = str(exc)
            continue
        except (CodegenError, SchemaFileError) as exc:
            subject.error = f"codegen: {exc}"
            continue
        subject.compiled = compile_schema(RegisteredSchema(name, 1, schema_file.format, schema_file.text))
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    for name, subject in subjects.items():
        if subject.error is None:
            try:
                module = importlib.import_module(f"{package}.{package_name(name)}")
                subject.model = getattr(module, root_class_name(subject.schema_file))
            except Exception as exc:  # noqa: BLE001 - reported per schema
                subject.error = f"import: {type(exc).__name__}: {exc}"
    return subjects


# ---------------------------------------------------------------- judging one body


def judge(subject: Subject, body: Any, tally: Tally, kind: str) -> None:
    """Run ``body`` through validator and model as the pipeline does; count it in ``tally``."""
    assert subject.compiled is not None and subject.model is not None
    is_json = subject.schema_file.format == SchemaFormat.JSON
    try:
        value = Pipeline._validate(copy.deepcopy(body), subject.compiled)  # stage "validation", as consumed
    except MessageError:
        if kind == "valid":  # hypothesis-jsonschema's idea of a format is not always the validator's
            tally.kinds["generated as valid, the validator rejects (not judged)"] += 1
            tally.rejected_valid.append(_short(body, 200))
            return
        tally.mutants_rejected += 1
        if is_json:
            try:
                subject.model.model_validate(body)
            except (ValidationError, ValueError, TypeError, RecursionError):
                tally.model_also_rejects += 1
        return
    if kind == "valid":
        tally.valid_accepted += 1
    else:
        tally.mutants_accepted += 1
    try:
        instance = Pipeline._build(value, subject.model)  # stage "model": model_validate of that value
    except MessageError as exc:
        detail = exc.details[0] if exc.details else {"path": "", "message": str(exc)}
        _fail(
            tally,
            f"{kind}: validator accepts, model rejects at {detail['path']}: {detail['message']} (body {_short(body)})",
        )
        return
    try:
        dumped = instance.model_dump(mode="json" if is_json else "python", by_alias=True, exclude_unset=True)
    except Exception as exc:  # noqa: BLE001 - a serializer failure is a disagreement too
        _fail(tally, f"{kind}: model_dump fails: {type(exc).__name__}: {exc} (body {_short(body)})")
        return
    where = _difference(value, dumped, "$")
    if where is not None:
        _fail(tally, f"{kind}: model_dump does not give the input back at {where} (body {_short(body)})")
        return
    if not is_json:
        where = _wrong_branch(subject, body, instance)
        if where is not None:
            _fail(
                tally, f"{kind}: the model holds another union branch than the body's at {where} (body {_short(body)})"
            )
            return
    tally.agreed += 1


def _fail(tally: Tally, message: str) -> None:
    tally.failures.append(message)


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, default=repr, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _difference(expected: Any, got: Any, path: str) -> str | None:
    """The first path where ``got`` differs from ``expected`` (bool is not a number, 1 == 1.0), or None."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{path} (expected an object, got {_short(got, 80)})"
        if set(expected) != set(got):
            missing = sorted(set(expected) - set(got), key=str)
            added = sorted(set(got) - set(expected), key=str)
            return f"{path} (keys lost {missing}, keys added {added})"
        for key in expected:
            where = _difference(expected[key], got[key], f"{path}.{key}")
            if where is not None:
                return where
        return None
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return f"{path} (expected {_short(expected, 80)}, got {_short(got, 80)})"
        for index, (a, b) in enumerate(zip(expected, got, strict=True)):
            where = _difference(a, b, f"{path}[{index}]")
            if where is not None:
                return where
        return None
    if isinstance(expected, bool) or isinstance(got, bool):
        same = type(expected) is type(got) and expected == got
    elif isinstance(expected, float) and isinstance(got, float) and math.isnan(expected):
        same = math.isnan(got)
    elif isinstance(expected, str) and isinstance(got, str):  # a str enum member is its value
        same = expected == got or _same_formatted(expected, got)
    else:
        same = type(expected) is type(got) or (
            isinstance(expected, (int, float)) and isinstance(got, (int, float)) and not isinstance(expected, Decimal)
        )
        same = same and expected == got
    return None if same else f"{path} (expected {_short(expected, 80)}, got {_short(got, 80)})"


_FORMATTED = [TypeAdapter(kind) for kind in (datetime, date, time, UUID, IPv4Address, IPv6Address)]


def _same_formatted(expected: str, got: str) -> bool:
    """A date-time, date, time, uuid, IP address or e-mail address that pydantic spells its own way ("Z" for
    "+00:00", lower-case hex, IPv6 compressed, the e-mail domain in lower case): the same value, with the
    same UTC offset, counts as given back."""
    if (
        "@" in expected
        and expected.rpartition("@")[0] == got.rpartition("@")[0]
        and expected.rpartition("@")[2].lower() == got.rpartition("@")[2]
    ):
        return True
    for adapter in _FORMATTED:
        try:
            a, b = adapter.validate_python(expected), adapter.validate_python(got)
        except ValidationError:
            continue
        if a == b and getattr(a, "utcoffset", lambda: None)() == getattr(b, "utcoffset", lambda: None)():
            return True
    return False


_PRIMITIVE_TYPES = {
    "string": str,
    "bytes": bytes,
    "int": int,
    "long": int,
    "float": float,
    "double": float,
    "boolean": bool,
    "array": list,
    "map": dict,
}


def _wrong_branch(subject: Subject, body: Any, instance: BaseModel) -> str | None:
    """Avro: the first union whose branch in the model is not the one the body names ({"Name": value}):
    the validator unwraps unions, so the model picks a branch by the value's shape alone."""
    import fastavro

    named: dict[str, Any] = {}
    parsed = fastavro.parse_schema(subject.schema_file.document, named_schemas=named, _write_hint=False)
    value = instance.root if isinstance(instance, RootModel) else instance
    return _check_branch(parsed, body, value, named, "$")


def _check_branch(schema: Any, body: Any, value: Any, named: dict, path: str) -> str | None:
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        if body is None:
            return None if value is None else path
        ((label, inner),) = body.items()
        branch = next(b for b in schema if _union_label(b) == label)
        if isinstance(branch, str) and branch in named:
            branch = named[branch]
        if isinstance(branch, dict) and "logicalType" in branch:
            pass  # a Decimal, datetime, UUID ...: the round trip has compared the value
        elif isinstance(branch, dict) and branch.get("type") in ("record", "error", "enum", "fixed"):
            short = branch["name"].rsplit(".", 1)[-1]
            collapsed = branch["type"] == "fixed" and type(value) is bytes  # collapse_root_models
            if not collapsed and type(value).__name__.rstrip("0123456789") != _pascal_class(short):
                return f"{path} (body names {label}, the model holds {type(value).__name__})"
        elif label in _PRIMITIVE_TYPES:
            wanted = _PRIMITIVE_TYPES[label]
            if (
                not isinstance(value, wanted)
                or (wanted is int and isinstance(value, bool))
                or (wanted is str and isinstance(value, Enum))
            ):
                return f"{path} (body names {label}, the model holds {type(value).__name__})"
        return _check_branch(branch, inner, value, named, path)
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind in ("record", "error") and isinstance(value, BaseModel) and isinstance(body, dict):
        by_alias = {(info.alias or name): getattr(value, name) for name, info in type(value).model_fields.items()}
        for item in schema["fields"]:
            if item["name"] in body and item["name"] in by_alias:
                where = _check_branch(
                    item["type"], body[item["name"]], by_alias[item["name"]], named, f"{path}.{item['name']}"
                )
                if where is not None:
                    return where
    elif kind == "array" and isinstance(body, list) and isinstance(value, list):
        for index, (b, v) in enumerate(zip(body, value, strict=False)):
            where = _check_branch(schema["items"], b, v, named, f"{path}[{index}]")
            if where is not None:
                return where
    elif kind == "map" and isinstance(body, dict) and isinstance(value, dict):
        for key in body:
            where = _check_branch(schema["values"], body[key], value.get(key), named, f"{path}[{key!r}]")
            if where is not None:
                return where
    elif isinstance(kind, (list, dict)) or (isinstance(kind, str) and kind in named):
        return _check_branch(kind, body, value, named, path)
    return None


def _pascal_class(name: str) -> str:
    return name[:1].upper() + name[1:]


# ---------------------------------------------------------------- mutants


def mutants(body: Any, rng: random.Random) -> list[Any]:
    """Edge bodies around a valid one: an extra key in the root object and in a nested one, a key dropped,
    a leaf replaced by a value of another type."""
    out = []
    objects = [path for path, node in _walk(body) if isinstance(node, dict)]
    for path in ([()] if () in objects else []) + ([rng.choice(objects)] if objects else []):
        mutant = copy.deepcopy(body)
        _at(mutant, path)[EXTRA_KEY] = "extra"
        out.append(mutant)
    keyed = [(path, key) for path, node in _walk(body) if isinstance(node, dict) for key in node]
    if keyed:
        path, key = rng.choice(keyed)
        mutant = copy.deepcopy(body)
        del _at(mutant, path)[key]
        out.append(mutant)
    leaves = [path for path, node in _walk(body) if not isinstance(node, (dict, list)) and path]
    if leaves:
        path = rng.choice(leaves)
        mutant = copy.deepcopy(body)
        parent, last = _at(mutant, path[:-1]), path[-1]
        parent[last] = _other_type(parent[last])
        out.append(mutant)
    return out


def _walk(node: Any, path: tuple = ()):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, index))


def _at(node: Any, path: tuple) -> Any:
    for step in path:
        node = node[step]
    return node


def _other_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 12345
    return False


# ---------------------------------------------------------------- valid bodies


@contextlib.contextmanager
def hypothesis_jsonschema_compat() -> Iterator[None]:
    """While drawing from :func:`valid_bodies`: hypothesis-jsonschema 0.23.1 (its latest release) drives
    Hypothesis's private ``hypothesis.internal.conjecture.utils.many`` with ``while elements.more():``;
    Hypothesis 6.150+ replaced ``more()`` with a context manager and iteration. Inside this block ``many``
    has ``more()`` again, on top of the new protocol (enter on the first call, one step of the iterator per
    call, exit when it stops); on leaving, ``many`` is as it was. The versions it was written for are pinned
    in pyproject.toml's dev extra. With a Hypothesis that still has ``more()`` it does nothing."""
    from hypothesis.internal.conjecture import utils as cu

    if hasattr(cu.many, "more"):  # an older Hypothesis, or an enclosing block
        yield
        return

    def more(self: Any) -> bool:
        if getattr(self, "_compat_iter", None) is None:
            self.__enter__()
            self._compat_iter = iter(self)
        try:
            next(self._compat_iter)
        except StopIteration:
            self.__exit__(None, None, None)
            return False
        return True

    cu.many.more = more
    try:
        yield
    finally:
        del cu.many.more


def valid_bodies(schema_file: SchemaFile) -> st.SearchStrategy:
    """Bodies the schema accepts: hypothesis-jsonschema for JSON Schema, the Avro JSON encoding for Avro.
    Draw from it inside :func:`hypothesis_jsonschema_compat`."""
    if schema_file.format == SchemaFormat.JSON:
        from hypothesis_jsonschema import from_schema

        return from_schema(schema_file.document, allow_x00=False)
    return avro_bodies(schema_file.document)


def avro_bodies(document: Any) -> st.SearchStrategy:
    import fastavro

    named: dict[str, Any] = {}
    parsed = fastavro.parse_schema(document, named_schemas=named, _write_hint=False)
    return _AvroStrategies(named).build(parsed)


_INT = (-(2**31), 2**31 - 1)
_LONG = (-(2**63), 2**63 - 1)
# Python's datetime/date range, as Avro values (days, milliseconds, microseconds since the epoch).
_DAYS = (-719162, 2932896)
_MILLIS = (-62135596800000, 253402300799999)


def _latin1(data: bytes) -> str:
    return data.decode("iso-8859-1")


def _varint(number: int) -> bytes:
    zigzag = (number << 1) ^ (number >> 63)
    out = bytearray()
    while zigzag & ~0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def _signed_bytes(number: int, size: int | None = None) -> bytes:
    length = size or max(1, (number.bit_length() + 8) // 8)
    return number.to_bytes(length, "big", signed=True)


def big_decimal_bytes(value: Decimal) -> bytes:
    """Avro's ``big-decimal`` encoding (Java's BigDecimalConversion): the unscaled value as Avro ``bytes``
    (length, two's complement big-endian), then the scale as an Avro ``int``."""
    sign, digits, exponent = value.as_tuple()
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    payload = _signed_bytes(unscaled)
    return _varint(len(payload)) + payload + _varint(-int(exponent))


class _AvroStrategies:
    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.cache: dict[str, st.SearchStrategy] = {}

    def build(self, schema: Any) -> st.SearchStrategy:
        if isinstance(schema, list):
            return self._union(schema)
        if isinstance(schema, str):
            if schema in self.named:
                if schema not in self.cache:
                    self.cache[schema] = st.deferred(lambda name=schema: self._named(self.named[name]))
                return self.cache[schema]
            return self._primitive(schema)
        kind = schema["type"]
        if isinstance(kind, (dict, list)):
            return self.build(kind)
        if kind in ("record", "error", "enum", "fixed"):
            return self.build(schema["name"]) if schema["name"] in self.named else self._named(schema)
        if kind == "array":
            return st.lists(self.build(schema["items"]), max_size=3)
        if kind == "map":
            return st.dictionaries(st.text(max_size=6), self.build(schema["values"]), max_size=3)
        if kind not in self.named and kind not in _PRIMITIVE_KINDS:
            return self.build(kind)
        logical = self._logical(schema)
        return logical if logical is not None else self._primitive(kind)

    def _named(self, schema: dict) -> st.SearchStrategy:
        kind = schema["type"]
        if kind == "enum":
            return st.sampled_from(schema["symbols"])
        if kind == "fixed":
            logical = self._logical(schema)
            return (
                logical
                if logical is not None
                else st.binary(min_size=schema["size"], max_size=schema["size"]).map(_latin1)
            )
        required, optional = {}, {}
        for item in schema["fields"]:
            (optional if "default" in item else required)[item["name"]] = self.build(item["type"])
        return st.fixed_dictionaries(required, optional=optional)

    def _union(self, branches: list) -> st.SearchStrategy:
        options = []
        for branch in branches:
            label = _union_label(branch)
            if label == "null":
                options.append(st.none())
            else:
                options.append(self.build(branch).map(lambda value, label=label: {label: value}))
        return st.one_of(options)

    @staticmethod
    def _primitive(kind: str) -> st.SearchStrategy:
        return {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(*_INT),
            "long": st.integers(*_LONG),
            "float": st.floats(allow_nan=False, allow_infinity=False, width=32),
            "double": st.floats(allow_nan=False, allow_infinity=False),
            "string": st.text(max_size=10),
            "bytes": st.binary(max_size=10).map(_latin1),
        }[kind]

    @staticmethod
    def _logical(schema: dict) -> st.SearchStrategy | None:
        logical, kind = schema.get("logicalType"), schema["type"]
        if logical == "decimal" and kind in ("bytes", "fixed"):
            precision = schema.get("precision", 1)
            size = schema.get("size")
            limit = 10**precision - 1
            if size is not None:
                limit = min(limit, 2 ** (8 * size - 1) - 1)
            return st.integers(-limit, limit).map(lambda n: _latin1(_signed_bytes(n, size)))
        if logical == "big-decimal" and kind == "bytes":
            return (
                st.decimals(allow_nan=False, allow_infinity=False, places=None)
                .filter(lambda d: abs(d.as_tuple().exponent) < 30)
                .map(lambda d: _latin1(big_decimal_bytes(d)))
            )
        if logical == "uuid" and kind == "string":
            return st.uuids().map(str)
        if logical == "date" and kind == "int":
            return st.integers(*_DAYS)
        if logical == "time-millis" and kind == "int":
            return st.integers(0, 86_399_999)
        if logical == "time-micros" and kind == "long":
            return st.integers(0, 86_399_999_999)
        if logical in ("timestamp-millis", "local-timestamp-millis") and kind == "long":
            return st.integers(*_MILLIS)
        if logical in ("timestamp-micros", "local-timestamp-micros") and kind == "long":
            return st.integers(_MILLIS[0] * 1000, _MILLIS[1] * 1000)
        return None


_PRIMITIVE_KINDS = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _union_label(branch: Any) -> str:
    if isinstance(branch, str):
        return branch
    if isinstance(branch, dict):
        kind = branch["type"]
        if kind in ("record", "error", "enum", "fixed"):
            return branch["name"]
        if isinstance(kind, str):
            return kind
    return "union"
