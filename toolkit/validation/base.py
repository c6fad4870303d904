"""What both formats share: the compiled-schema base class and the error helpers (``shorten`` is
:func:`toolkit.formats.base.shorten`)."""

from __future__ import annotations

from typing import Any, ClassVar

from toolkit.errors import MessageError
from toolkit.formats.base import shorten
from toolkit.layout import SchemaFormat

STAGE = "validation"
MAX_DETAILS = 20


class CompiledSchema:
    """One schema version, compiled once. Subclasses implement :meth:`decode` for their format."""

    format: ClassVar[SchemaFormat]

    def __init__(self, subject: str, version: int, document: Any) -> None:
        self.subject = subject
        self.version = version
        self.document = document  # the schema as parsed JSON (for codegen, compatibility checks, logs)

    def decode(self, body: Any) -> Any:
        """Validate ``body`` (a value from ``json.loads``) and return the value to build the model from.

        Raises:
            MessageError: stage ``"validation"``; ``details`` is a list of ``{"path", "message"}``.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.subject}/{self.version}>"


def unexpected(exc: BaseException) -> MessageError:
    """A body that made the validator itself fail is still the message's fault, never a crash."""
    if isinstance(exc, RecursionError):
        return MessageError(
            STAGE,
            "body is nested too deeply to validate",
            details=[{"path": "$", "message": "maximum nesting depth exceeded"}],
        )
    return MessageError(
        STAGE,
        f"body could not be validated ({type(exc).__name__})",
        details=[{"path": "$", "message": shorten(str(exc))}],
    )
