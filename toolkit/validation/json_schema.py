"""JSON Schema: validate bodies with a validator built once per version (whether a schema is valid:
:mod:`toolkit.formats.json_schema`)."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import email_validator
import jsonschema
import jsonschema_rs
from jsonschema.exceptions import ValidationError, best_match, relevance
from jsonschema.protocols import Validator

from toolkit.errors import MessageError
from toolkit.formats import JSON_SCHEMA
from toolkit.formats.json_schema import (
    reference_registry,
    validator_class,  # noqa: F401 - the earlier home of this function
)
from toolkit.layout import SchemaFormat
from toolkit.references import Referenced, json_resources
from toolkit.validation.base import MAX_DETAILS, STAGE, CompiledSchema, shorten, unexpected

log = logging.getLogger("toolkit.validation")
DEFAULT_DRAFT = jsonschema.Draft202012Validator
# Errors looked at to rank and report; a hostile body may produce millions.
_MAX_ERRORS_SCANNED = 200


def _check_email(value: object) -> bool:
    # jsonschema's own "email" check only looks for an "@"; email-validator's is a real one. The generated
    # models take any str for an e-mail (toolkit.codegen.prepare), so this check alone decides.
    if not isinstance(value, str):
        return True
    try:
        email_validator.validate_email(value, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return True


def _format_checker() -> jsonschema.FormatChecker:
    """Every format jsonschema knows (date-time, uuid, ...), e-mail addresses checked by email-validator, and
    the formats in :data:`_LINEAR_FORMATS` by jsonschema-rs."""
    checker = jsonschema.FormatChecker()
    for name in _LINEAR_FORMATS:
        checker.checks(name)(_rs_format(name))
    checker.checks("email", raises=ValueError)(_check_email)
    checker.checks("idn-email", raises=ValueError)(_check_email)
    return checker


# Formats whose jsonschema check takes minutes over a long hostile value (Python regexes and parsers that
# backtrack or go quadratic: "iri" 65 s over 120,000 characters, "uri-template" 14 s over 100,000), checked by
# jsonschema-rs instead, in linear time. A rejected body is run through the checker to explain why, and
# jsonschema-rs calls it for every body of a schema whose draft lacks the format (draft-07 has no
# "uri-template"). jsonschema-rs follows RFC 3987 and RFC 6570 to the letter (a space in a URI template is
# refused), as it already did for schemas of drafts that have these formats.
_LINEAR_FORMATS = ("iri", "iri-reference", "uri-template")


@functools.cache
def _rs_format(name: str) -> Any:
    """jsonschema-rs's check of format ``name`` (2020-12's vocabulary), True for a value that is no string."""
    return jsonschema_rs.Draft202012Validator({"format": name}, validate_formats=True).is_valid


def check_json_schema(path: Path | str, document: Any, references: Referenced = ()) -> type[Validator]:
    """The one validity check (:meth:`toolkit.formats.json_schema.JsonSchemaFormat.invalid`); return the
    class. A valid schema using a construct codegen cannot express is not refused: bodies validate with it.

    Raises:
        SchemaFileError: the document is not a valid JSON Schema, naming the JSON path of the problem.
    """
    return JSON_SCHEMA.validator_class(path, document, codegen=False, references=references)


# The formats jsonschema-rs checks itself, per draft (the drafts' own format vocabularies).
_DRAFT4_FORMATS = frozenset({"date-time", "email", "hostname", "ipv4", "ipv6", "uri"})
_DRAFT6_FORMATS = _DRAFT4_FORMATS | {"uri-reference", "uri-template", "json-pointer"}
_DRAFT7_FORMATS = _DRAFT6_FORMATS | {
    "date",
    "time",
    "idn-email",
    "idn-hostname",
    "iri",
    "iri-reference",
    "relative-json-pointer",
    "regex",
}
_DRAFT2019_FORMATS = _DRAFT7_FORMATS | {"duration", "uuid"}
_NATIVE_FORMATS = {"draft-04": _DRAFT4_FORMATS, "draft-06": _DRAFT6_FORMATS, "draft-07": _DRAFT7_FORMATS}


def _native_formats(document: dict) -> frozenset[str]:
    declared = str(document.get("$schema", ""))
    return next((formats for draft, formats in _NATIVE_FORMATS.items() if draft in declared), _DRAFT2019_FORMATS)


def _fast_validator(document: Any, checker: jsonschema.FormatChecker, references: Referenced = ()) -> Any | None:
    """jsonschema-rs for the accept path: ~1.5 us per order body against ~210 us for jsonschema alone.

    jsonschema-rs checks the formats of the document's draft itself. A format outside that vocabulary
    (draft-07 has no "uuid", for one) is checked by the FormatChecker jsonschema uses, so jsonschema-rs
    never accepts a format jsonschema would refuse. For ``email`` jsonschema-rs's RFC 5321 check is kept
    (it accepts ``a@b`` and ``ops@localhost``); the generated models take any str for an e-mail address,
    so an address accepted here binds and comes back as sent.
    None when jsonschema-rs cannot compile the document (logged: a warning the first time, then at debug level,
    since every body then pays the slow validator).
    """
    native = _native_formats(document)
    formats = {
        name: (lambda value, name=name: checker.conforms(value, name)) for name in _formats_used(document) - native
    }
    for _, referenced in references:
        formats.update(
            {
                name: (lambda value, name=name: checker.conforms(value, name))
                for name in _formats_used(referenced) - native
            }
        )
    options: dict[str, Any] = {}
    if references:
        # Referenced schemas by their reference names; jsonschema-rs asks for them as absolute URIs (a
        # relative name under its default base json-schema:///).
        by_uri = dict(json_resources(document, references))

        def retrieve(uri: str) -> Any:
            for key in (uri, uri.removeprefix("json-schema:///")):
                if key in by_uri:
                    return by_uri[key]
            raise KeyError(f"{uri} is not a declared reference")

        options["retriever"] = retrieve
    try:
        return jsonschema_rs.validator_for(document, validate_formats=True, formats=formats or None, **options)
    except Exception as exc:  # noqa: BLE001 - an exotic schema: the jsonschema validator alone decides
        global _fast_unavailable_logged
        level = logging.DEBUG if _fast_unavailable_logged else logging.WARNING
        _fast_unavailable_logged = True
        log.log(
            level,
            "jsonschema-rs cannot compile a schema (%s: %s); its bodies are validated by jsonschema alone (slower)",
            type(exc).__name__,
            " ".join(str(exc).split())[:300],
        )
        return None


_fast_unavailable_logged = False


def _objects(node: Any) -> Iterator[dict]:
    """Every JSON object in ``node``, itself included."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _formats_used(node: Any) -> set[str]:
    return {item["format"] for item in _objects(node) if isinstance(item.get("format"), str)}


def _finite(base: Any, name: str) -> Any:
    def is_type(_checker: Any, instance: Any) -> bool:
        # JSON has no infinity or NaN: a number beyond the double range (1e400) decodes to inf, and a
        # decoder that lets NaN/Infinity tokens through gives non-finite floats. No number can hold them.
        if type(instance) is float and not math.isfinite(instance):
            return False
        return base.is_type(instance, name)

    return is_type


def _with_finite_numbers(cls: type[Validator]) -> type[Validator]:
    """``cls`` whose ``number`` and ``integer`` types refuse non-finite floats, and whose ``pattern`` and
    ``patternProperties`` match as jsonschema-rs does (:func:`_matcher`)."""
    base = cls.TYPE_CHECKER
    finite = base.redefine_many({name: _finite(base, name) for name in ("number", "integer")})
    keywords = {"pattern": _pattern, "patternProperties": _pattern_properties}
    return jsonschema.validators.extend(cls, validators=keywords, type_checker=finite)


@functools.lru_cache(maxsize=1024)
def _matcher(regex: str) -> Any:
    """Whether a string matches ``regex``, as jsonschema-rs decides it: in linear time (Rust's ``regex``;
    fancy-regex, with a bound on backtracking, for a lookaround or a backreference), in JSON Schema's
    dialect. jsonschema would use Python's ``re``, which backtracks without bound: explaining why a body
    was rejected could take hours for ``^(a+)+$`` and 40 characters, holding its partition. Python's
    ``re`` only for a regex jsonschema-rs cannot compile (then it validates no body of that schema, and
    ``epistle check`` refuses such a regex); one neither compiles fails every match, remembered."""
    try:
        fast = jsonschema_rs.validator_for({"pattern": regex})
    except Exception:  # noqa: BLE001 - not one jsonschema-rs reads: Python's re, as jsonschema would
        try:
            return re.compile(regex).search
        except re.error as exc:
            error = exc

            def refuse(_: str) -> bool:
                raise error

            return refuse
    return fast.is_valid


def _pattern(validator: Any, regex: Any, instance: Any, schema: Any) -> Any:
    # jsonschema's own keyword (jsonschema._keywords.pattern) with _matcher for re.search
    if validator.is_type(instance, "string") and not _matcher(regex)(instance):
        yield ValidationError(f"{instance!r} does not match {regex!r}")


def _pattern_properties(validator: Any, pattern_properties: Any, instance: Any, schema: Any) -> Any:
    # jsonschema's own keyword (jsonschema._keywords.patternProperties) with _matcher for re.search
    if not validator.is_type(instance, "object"):
        return
    for regex, subschema in pattern_properties.items():
        matches = _matcher(regex)
        for key, value in instance.items():
            if matches(key):
                yield from validator.descend(value, subschema, path=key, schema_path=regex)


def _non_finite_message(error: ValidationError) -> str | None:
    instance = error.instance
    if error.validator != "type" or type(instance) is not float or math.isfinite(instance):
        return None
    sign = "-" if instance < 0 else ""
    what = "NaN" if math.isnan(instance) else f"beyond the double range, e.g. {sign}1e400, decoded as {sign}inf"
    return f"non-finite number ({what}): JSON has no infinity or NaN, so type {error.validator_value!r} cannot hold it"


class JsonSchema(CompiledSchema):
    """A JSON Schema version with its validators (format checking on) built once.

    Two validators, one verdict: jsonschema-rs answers "valid?" on the hot path; a body it rejects (or any
    body when it could not compile the schema) goes through jsonschema, which decides and explains every
    error with its JSON path. A body jsonschema-rs rejects is never accepted, so its stricter format checks
    win. The generated models take any str for an e-mail address, so no address accepted here is refused by
    the model.
    """

    format = SchemaFormat.JSON

    def __init__(
        self,
        subject: str,
        version: int,
        document: Any,
        validator: Validator,
        fast: Any | None = None,
        explain_fast: bool = False,
    ) -> None:
        super().__init__(subject, version, document)
        self.validator = validator
        self.fast = fast
        # jsonschema's additionalProperties and unevaluatedProperties match patternProperties with Python's
        # re (no keyword of theirs to replace): with patternProperties, jsonschema-rs explains a rejection
        self.explain_fast = explain_fast and fast is not None

    @classmethod
    def compile(cls, label: str, subject: str, version: int, document: Any, references: Referenced = ()) -> JsonSchema:
        """Raises: SchemaFileError naming ``label`` when the document is not a valid JSON Schema (never
        UnsupportedSchema: a valid schema codegen cannot express validates bodies all the same).

        ``references`` (``(name, document)``, :mod:`toolkit.references`) are the schemas its ``$ref`` s to
        other subjects resolve to, held in a ``referencing.Registry`` under their reference names."""
        validator_cls = _with_finite_numbers(check_json_schema(label, document, references))
        checker = _format_checker()
        options: dict[str, Any] = {"registry": reference_registry(document, references)} if references else {}
        return cls(
            subject,
            version,
            document,
            validator_cls(document, format_checker=checker, **options),
            _fast_validator(document, checker, references),
            explain_fast=any(_has_pattern_properties(doc) for doc in (document, *(d for _, d in references))),
        )

    def decode(self, body: Any) -> Any:
        """Validate ``body``; return it unchanged. See :meth:`CompiledSchema.decode`."""
        fast_verdict = None
        if self.fast is not None:
            try:
                fast_verdict = self.fast.is_valid(body)
            except Exception:  # noqa: BLE001 - e.g. a number beyond its range: let jsonschema decide
                fast_verdict = None
        try:
            if fast_verdict is False and self.explain_fast:
                raise _fast_error(self.fast, body)
            errors = (
                list(itertools.islice(self.validator.iter_errors(body), _MAX_ERRORS_SCANNED))
                if fast_verdict is not True
                else []
            )
            if errors:
                raise _message_error(errors)
            if fast_verdict is False:
                raise _fast_error(self.fast, body)
            return body
        except MessageError:
            raise
        except Exception as exc:  # noqa: BLE001 - the contract: a body never crashes the validator
            explained = None
            if fast_verdict is False:  # jsonschema cannot follow the schema (a regex Python's re refuses, as
                try:  # \p{L}): jsonschema-rs's errors say why, if it can list them
                    explained = _fast_error(self.fast, body)
                except Exception:  # noqa: BLE001 - e.g. too deep for it too: the first failure is reported
                    explained = None
            raise (explained or unexpected(exc)) from None


def _has_pattern_properties(node: Any) -> bool:
    return any(isinstance(item.get("patternProperties"), dict) and item["patternProperties"] for item in _objects(node))


def _fast_error(fast: Any, body: Any) -> MessageError:
    """jsonschema-rs rejected what jsonschema accepts (a stricter format check) or cannot evaluate: report
    its errors."""
    details = []
    for error in itertools.islice(fast.iter_errors(body), MAX_DETAILS):
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.instance_path)
        keyword = str(error.schema_path[-1]) if error.schema_path else "unknown"
        details.append({"path": path, "message": shorten(error.message), "keyword": keyword})
    if not details:
        details = [{"path": "$", "message": "rejected by the schema", "keyword": "unknown"}]
    return MessageError(STAGE, f"{details[0]['path']}: {details[0]['message']}", details=details)


def _message_error(errors: list[ValidationError]) -> MessageError:
    best = best_match(errors)
    ordered = [best] + [e for e in sorted(errors, key=relevance, reverse=True) if e is not best]
    details = [
        {"path": e.json_path, "message": _non_finite_message(e) or shorten(e.message), "keyword": str(e.validator)}
        for e in ordered[:MAX_DETAILS]
    ]
    more = len(errors) - 1
    reason = f"{best.json_path}: {_non_finite_message(best) or shorten(best.message, 200)}"
    if more:
        reason += f" (and {more}{'+' if len(errors) == _MAX_ERRORS_SCANNED else ''} more)"
    return MessageError(STAGE, reason, details=details)
