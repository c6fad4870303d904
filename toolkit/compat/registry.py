"""Ask a Confluent-compatible registry for its verdict, in throw-away scratch subjects (the only I/O here).

For "would version N be accepted?" the earlier versions are registered in a fresh subject with
compatibility NONE, the subject's mode is set, and version N is registered: HTTP 409 means the registry
refuses it. The scratch subject is deleted afterwards (soft, then permanently).

All HTTP goes through :class:`~toolkit.registry.http.ConfluentHttpRegistry`: its credentials, TLS, retries
and error translation apply here too.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from toolkit.errors import RegistryError, RegistryRejected
from toolkit.layout import Compatibility, SchemaFormat
from toolkit.registry.base import CompatibilityResult
from toolkit.registry.http import ConfluentHttpRegistry
from toolkit.settings import RegistrySettings

# A verdict may need a registry to compare a long chain of versions: 30 s per request unless
# SCHEMA_REGISTRY_TIMEOUT_S (or ``timeout``) says otherwise.
_URL_TIMEOUT_S = 30.0


class ScratchRegistry:
    """A registry used only through scratch subjects.

    ``registry`` is the API root URL (``.../apis/ccompat/v7`` for Apicurio; credentials in it become basic
    auth), :class:`~toolkit.settings.RegistrySettings` (its URL, credentials, TLS, timeout and retries), or a
    :class:`~toolkit.registry.http.ConfluentHttpRegistry` that the caller keeps and closes.

    Transport errors, 429 and 5xx answers are retried with backoff, at most ``max_attempts`` requests (the
    settings' ``SCHEMA_REGISTRY_MAX_ATTEMPTS``, 4 for a URL), and then raised as
    :class:`~toolkit.errors.RegistryUnavailable`. A registry that keeps answering 5xx (Apicurio 3.0.9 does
    for a draft 2020-12 JSON Schema) is therefore unavailable, where this class used to raise a plain
    :class:`~toolkit.errors.RegistryError` at the first 5xx (``epistle check`` then goes on with the next
    subject; with no answer at all it stops asking). ``timeout`` (seconds per request) defaults to the
    settings' ``timeout_s`` when ``SCHEMA_REGISTRY_TIMEOUT_S`` was set, else 30. Deleting a scratch subject
    is best effort: its failures are ignored, after the same retries.

    Raises:
        ConfigError: inconsistent credentials, or a TLS file that cannot be loaded.
    """

    def __init__(
        self,
        registry: str | RegistrySettings | ConfluentHttpRegistry,
        *,
        prefix: str = "epistle-check",
        timeout: float | None = None,
    ) -> None:
        self.prefix = prefix
        self._owned = not isinstance(registry, ConfluentHttpRegistry)
        if isinstance(registry, ConfluentHttpRegistry):
            self.http = registry
        elif isinstance(registry, RegistrySettings):
            if timeout is None and "timeout_s" not in registry.model_fields_set:
                timeout = _URL_TIMEOUT_S  # the lookup default (5 s) is short for registering long chains
            overrides: dict[str, Any] = {"timeout_s": timeout} if timeout is not None else {}
            self.http = ConfluentHttpRegistry.from_settings(registry, **overrides)
        else:
            self.http = ConfluentHttpRegistry(registry, timeout_s=_URL_TIMEOUT_S if timeout is None else timeout)

    @property
    def url(self) -> str:
        """The registry's URL, without credentials."""
        return self.http.url

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def __enter__(self) -> ScratchRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verdict(
        self, schema_format: SchemaFormat, mode: Compatibility, versions: list[Any], label: str = "subject"
    ) -> CompatibilityResult:
        """Would the registry accept the last of ``versions`` (raw documents, oldest first) under ``mode``?

        Raises:
            RegistryUnavailable: the registry cannot be reached, or still answers 5xx after the retries.
            RegistryError: it refused an earlier version, found a version invalid (422, as
                :class:`~toolkit.errors.RegistryRejected`) or answered something unexpected; the message
                names the scratch subject, the HTTP status and the registry's own messages.
        """
        subject = f"{self.prefix}-{label}-{uuid.uuid4().hex[:10]}"
        try:
            earlier_ids = set()
            for index, document in enumerate(versions[:-1]):
                earlier_ids.add(self._register_earlier(subject, schema_format, document, index + 1))
                if index == 0:  # a subject-level config needs an existing subject on Apicurio
                    self.http.set_compatibility(subject, Compatibility.NONE)
            if len(versions) == 1:
                return CompatibilityResult(True)
            self.http.set_compatibility(subject, mode)
            answer = self.http.try_register(subject, json.dumps(versions[-1]), schema_format)
            if not answer.accepted:
                return CompatibilityResult(False, answer.reasons)
            if answer.schema_id in earlier_ids:
                return CompatibilityResult(
                    True,
                    ("identical to an earlier version: the registry returned that version's id and checked nothing",),
                )
            return CompatibilityResult(True)
        finally:
            self._delete(subject)

    def _register_earlier(self, subject: str, schema_format: SchemaFormat, document: Any, number: int) -> int:
        answer = self.http.try_register(subject, json.dumps(document), schema_format)
        # Apicurio reads a subject mode NONE as "no subject rule", so its global rule still checks these.
        if answer.schema_id is None:
            raise RegistryRejected(
                f"registry answered 409 registering version {number} of {subject!r}: {'; '.join(answer.reasons)}",
                reasons=list(answer.reasons),
                subject=subject,
                version=number,
            )
        return answer.schema_id

    def _delete(self, subject: str) -> None:
        try:
            self.http.delete_subject(subject, permanent=True)
        except RegistryError:  # cleanup is best effort; the subject name is unique
            pass
