"""What every schema language provides: the :class:`Format` protocol and the helpers its two
implementations share.

A format owns one schema language end to end, so that ``epistle check``, ``epistle codegen`` and the
runtime's registry load apply the *same* rules (the runtime the validity ones only):

- :meth:`Format.problems` / :meth:`Format.validate`: is this document a valid schema of the language
  (:meth:`Format.invalid`), and one the toolkit can generate a model for that follows the validator
  (:meth:`Format.unsupported`)? Every problem is a :class:`~toolkit.errors.SchemaFileError` (or its
  :class:`~toolkit.errors.UnsupportedSchema` subclass) naming the file, the JSON path and the fix.
  ``epistle check`` and codegen refuse both kinds; the runtime only invalid schemas.
- :meth:`Format.compile`: the body validator (delegates to :mod:`toolkit.validation`); refuses an invalid
  schema only (a consumer validates bodies with a schema codegen cannot express all the same).
- :meth:`Format.compatibility`: reader/writer issues (delegates to :mod:`toolkit.compat`).
- :attr:`Format.codegen_input`: what datamodel-code-generator is told the input is.

Heavy libraries (jsonschema, fastavro, avro) are imported inside the methods, by the formats in use only
(``epistle codegen`` validates every schema file on every run, even on an unchanged tree).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from toolkit.errors import SchemaFileError, UnsupportedSchema
from toolkit.layout import SchemaFormat, parse_json_file

if TYPE_CHECKING:
    from toolkit.compat.findings import Issue
    from toolkit.references import Referenced
    from toolkit.validation.base import CompiledSchema

_MAX_TEXT = 300
_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")


@runtime_checkable
class Format(Protocol):
    """One schema language (JSON Schema, Avro)."""

    schema_format: SchemaFormat
    suffix: str  # the version file suffix, ".json" or ".avsc"
    label: str  # for messages: "JSON Schema", "Avro"
    codegen_input: str  # datamodel_code_generator.InputFileType value: "jsonschema" or "avro"

    def parse(self, path: Path | str, text: str) -> Any:
        """The file's text as its JSON value. Raises SchemaFileError (not UTF-8 / not JSON)."""
        ...

    def invalid(self, path: Path | str, document: Any, references: Referenced = ()) -> list[SchemaFileError]:
        """Why ``document`` is not a valid schema of the language (one problem); empty when it is valid.
        ``references``: what it references, ``(name, document)`` dependencies first (:mod:`toolkit.references`)."""
        ...

    def unsupported(self, path: Path | str, document: Any, references: Referenced = ()) -> list[UnsupportedSchema]:
        """One :class:`~toolkit.errors.UnsupportedSchema` per construct of a *valid* ``document`` that codegen
        cannot express (or whose generated model cannot follow the validator); empty when there is none."""
        ...

    def problems(self, path: Path | str, document: Any, references: Referenced = ()) -> list[SchemaFileError]:
        """Every reason ``document`` is refused by ``epistle check`` and codegen, most fundamental first; empty
        when it is fine: :meth:`invalid` when there is such a problem, else :meth:`unsupported`."""
        ...

    def validate(self, path: Path | str, document: Any, *, codegen: bool = True, references: Referenced = ()) -> None:
        """Raises the first of :meth:`problems` (the same message ``epistle check`` shows first); with
        ``codegen=False`` the first of :meth:`invalid` only (the runtime: a valid schema validates bodies
        whether or not a model can be generated for it)."""
        ...

    def compile(
        self, label: str, subject: str, version: int, document: Any, references: Referenced = ()
    ) -> CompiledSchema:
        """The body validator for one schema version. Raises SchemaFileError naming ``label`` when the
        document is not a valid schema (:meth:`invalid`); a valid one codegen cannot express compiles."""
        ...

    def compatibility(self, reader: Any, writer: Any) -> list[Issue]:
        """Why a consumer holding ``reader`` cannot read what ``writer`` allows (raw documents)."""
        ...


class BaseFormat:
    """Shared plumbing: :meth:`parse` and :meth:`validate` in terms of :meth:`problems`."""

    schema_format: SchemaFormat
    suffix: str
    label: str
    codegen_input: str

    def parse(self, path: Path | str, text: str) -> Any:
        return parse_json_file(Path(path), text)

    def invalid(self, path: Path | str, document: Any, references: Referenced = ()) -> list[SchemaFileError]:
        raise NotImplementedError

    def unsupported(self, path: Path | str, document: Any, references: Referenced = ()) -> list[UnsupportedSchema]:
        raise NotImplementedError

    def problems(self, path: Path | str, document: Any, references: Referenced = ()) -> list[SchemaFileError]:
        extra = (references,) if references else ()  # without references: the two-argument calls
        return self.invalid(path, document, *extra) or list(self.unsupported(path, document, *extra))

    def validate(self, path: Path | str, document: Any, *, codegen: bool = True, references: Referenced = ()) -> None:
        extra = (references,) if references else ()
        found = self.problems(path, document, *extra) if codegen else self.invalid(path, document, *extra)
        if found:
            raise found[0]

    def __repr__(self) -> str:
        return f"<Format {self.label}>"


def shorten(text: str, limit: int = _MAX_TEXT) -> str:
    """One line, at most ``limit`` characters (library messages may quote a whole schema)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def child(json_path: str, key: str | int) -> str:
    """``$.a`` + ``b`` -> ``$.a.b``; a key that is not a plain name is bracketed: ``$.$defs['a.b']``."""
    if isinstance(key, int):
        return f"{json_path}[{key}]"
    return f"{json_path}.{key}" if _IDENTIFIER.match(key) else f"{json_path}[{key!r}]"
