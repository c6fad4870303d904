"""A Confluent Schema Registry REST API client over httpx (Confluent, Apicurio ccompat, Karapace, Redpanda).

Every HTTP outcome is translated in one place, :meth:`ConfluentHttpRegistry._call`:

- 2xx: the JSON body;
- 404 with ``error_code`` 40401 (subject), 40402 (version), 40403 (schema) or 40404 (subject
  soft-deleted): :class:`SchemaNotFound`, permanent, never retried;
- 409 and 422 (incompatible, invalid schema): :class:`RegistryRejected` with the registry's own messages
  (:meth:`ConfluentHttpRegistry.try_register` answers a 409 as a value instead: it asks a question);
- connect errors, timeouts, other transport errors, 429 and 5xx: retried with exponential backoff and full
  jitter, at most ``max_attempts`` requests, then :class:`RegistryUnavailable` (never *not found*);
- 401/403, a 404 without a Confluent error code (the URL is not the API root), a 2xx that is not JSON and
  any other status: :class:`RegistryUnavailable` at once, not retried. These are configuration problems,
  not the message's fault: a consumer must pause on them, never dead-letter (the message says the fix);
- except a 400, 414 or 431 answer to a lookup naming a subject (:meth:`~ConfluentHttpRegistry.get`,
  ``latest``, ``versions``) while the registry answers the same lookup for a plain name
  (``epistle-probe``: found, or not found with Confluent's error code): the registry refuses that name (too
  long, a character it does not accept), so no schema can ever be found under it:
  :class:`~toolkit.errors.SchemaCannotExist` (a record naming it is dead-lettered, not waited on).

Secrets (password, bearer token, credentials in the URL) go only into the ``Authorization`` header; reprs,
log records and error messages show the URL without credentials, and any text we did not write (a
transport error, the registry's message) is scrubbed of the secret values before it is shown.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from toolkit import _args
from toolkit.backoff import exponential_delay
from toolkit.errors import (
    ConfigError,
    InvalidArgument,
    InvalidArgumentType,
    RegistryError,
    RegistryRejected,
    RegistryUnavailable,
    SchemaCannotExist,
    SchemaNotFound,
    quoted,
)
from toolkit.layout import SCHEMA_VERSION, Compatibility
from toolkit.registry.base import CompatibilityResult, RegisteredSchema, SchemaById, SchemaFormat

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_NAME_REFUSED = (400, 414, 431)  # the request itself refused: for a lookup, maybe only its subject's name
_PROBE_SUBJECT = "epistle-probe"  # a plain name, to tell a refused name from refused lookups


class _RequestRefused(RegistryUnavailable):
    """A 400, 414 or 431 answer (``detail``: the registry's message); see ``_subject_lookup``."""

    def __init__(self, message: str, *, detail: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.detail = detail


_NOT_FOUND = {
    40401: "subject not found",
    40402: "version not found",
    40403: "schema not found",
    40404: "subject soft-deleted",
}
_NO_SUCH_SUBJECT = 40401
_NO_SUCH_SCHEMA = 40403
_SOFT_DELETED = 40404  # Confluent: deleting again a subject that is already soft-deleted

EventHooks = Mapping[str, list[Callable[..., Any]]]


@dataclass(frozen=True)
class Registration:
    """What ``POST /subjects/{subject}/versions`` answered (:meth:`ConfluentHttpRegistry.try_register`).

    ``schema_id`` is the id the registry gave the schema (an identical schema already in the subject keeps
    its id); None when it refused the schema as incompatible with the subject's mode (HTTP 409), and
    ``reasons`` then holds the registry's own messages.
    """

    schema_id: int | None
    reasons: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.schema_id is not None


class _BearerAuth(httpx.Auth):
    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        yield request


class ConfluentHttpRegistry:
    """Talks to ``url`` (the API root, e.g. ``http://127.0.0.1:8081/apis/ccompat/v7``).

    ``transport`` and ``event_hooks`` are passed to :class:`httpx.Client` (tests count requests with a
    ``"request"`` hook; each retry attempt is one request). ``sleep`` and ``rng`` make the backoff testable.

    Raises:
        ConfigError: inconsistent credentials, or a TLS file that cannot be loaded.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: SecretStr | str | None = None,
        bearer_token: SecretStr | str | None = None,
        ca_bundle: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        timeout_s: float = 5.0,
        max_attempts: int = 4,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        event_hooks: EventHooks | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        _check_options(
            url,
            username,
            password,
            bearer_token,
            timeout_s,
            max_attempts,
            backoff_initial_s,
            backoff_max_s,
            ca_bundle,
            client_cert,
            client_key,
        )
        try:
            parsed = httpx.URL(url.rstrip("/"))
        except httpx.InvalidURL:
            # neither the URL nor httpx's message is shown: the URL may hold credentials
            raise InvalidArgument(
                "url is not a valid URL; use e.g. http://127.0.0.1:8081/apis/ccompat/v7", argument="url"
            ) from None
        if parsed.username and username is None:  # http://user:pass@host/ : credentials leave the URL
            username, password = parsed.username, password or parsed.password
        self.url = str(parsed.copy_with(username=None, password=None))
        password = SecretStr(password) if isinstance(password, str) else password
        token = SecretStr(bearer_token) if isinstance(bearer_token, str) else bearer_token
        self._secrets = [s.get_secret_value() for s in (password, token) if s and s.get_secret_value()]
        self._max_attempts = max(1, max_attempts)
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._sleep, self._rng = sleep, rng
        self._client = httpx.Client(
            base_url=self.url,
            auth=_auth(username, password, token),
            timeout=timeout_s,
            headers={"Accept": f"{CONTENT_TYPE}, application/json", "Content-Type": CONTENT_TYPE},
            transport=transport or httpx.HTTPTransport(verify=_tls(ca_bundle, client_cert, client_key)),
            event_hooks={name: list(hooks) for name, hooks in (event_hooks or {}).items()},
        )
        self._auth_kind = "bearer" if token else "basic" if username else "none"

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        transport: httpx.BaseTransport | None = None,
        event_hooks: EventHooks | None = None,
        **overrides: Any,
    ) -> ConfluentHttpRegistry:
        """Build from :class:`~toolkit.settings.RegistrySettings` (``overrides`` win, e.g. ``sleep``)."""
        options: dict[str, Any] = dict(
            username=settings.username,
            password=settings.password,
            bearer_token=settings.bearer_token,
            ca_bundle=settings.ca_bundle,
            client_cert=settings.client_cert,
            client_key=settings.client_key,
            timeout_s=settings.timeout_s,
            max_attempts=settings.max_attempts,
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
        )
        options.update(overrides)
        return cls(settings.url, transport=transport, event_hooks=event_hooks, **options)

    supports_schema_ids = True  # the registry assigns ids: Confluent's wire format can be read

    def __repr__(self) -> str:
        return f"ConfluentHttpRegistry({self.url!r}, auth={self._auth_kind!r})"

    # ------------------------------------------------------------------ the protocol

    def get(self, subject: str, version: int) -> RegisteredSchema:
        """``GET /subjects/{subject}/versions/{version}``.

        Raises:
            SchemaNotFound: no such subject or version (also for a version that is not a positive integer:
                the registry would read -1 as "latest").
            RegistryUnavailable: no answer after ``max_attempts``, or an answer that says the client is
                misconfigured (credentials refused, URL not a registry API root).
            RegistryError: the registry holds a schema type other than JSON and AVRO.
        """
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise SchemaNotFound(
                f"subject {subject!r}: version {version!r} is not a positive integer", subject=subject, version=version
            )
        path = f"{_subject_path(subject)}/versions/{version}"
        return self._version(self._subject_lookup(path, subject, version), subject, f"GET {path}")

    def latest(self, subject: str) -> RegisteredSchema:
        """``GET /subjects/{subject}/versions/latest``; raises as :meth:`get`."""
        path = f"{_subject_path(subject)}/versions/latest"
        return self._version(self._subject_lookup(path, subject, "latest"), subject, f"GET {path}")

    def get_by_id(self, schema_id: int) -> SchemaById:
        """``GET /schemas/ids/{id}``, then ``GET /schemas/ids/{id}/versions`` for the subjects and versions
        registered with it. A registry without that endpoint (older Confluent) answers a bare 404 there;
        the subjects are then found by looking the schema up in each (``POST /subjects/{subject}``).

        Raises:
            SchemaNotFound: no schema has this id (also for an id that is not an integer >= 0).
            RegistryUnavailable: as :meth:`get`.
            RegistryError: the registry holds a schema type other than JSON and AVRO.
        """
        if not isinstance(schema_id, int) or isinstance(schema_id, bool) or schema_id < 0:
            raise SchemaNotFound(f"schema id {schema_id!r} is not an integer >= 0")
        try:
            body = self._call("GET", f"/schemas/ids/{schema_id}")
            pairs = self._call("GET", f"/schemas/ids/{schema_id}/versions", absent=(None,))
        except SchemaNotFound as exc:
            detail = str(exc).replace(": request (", " (", 1)  # no subject or version to name
            raise SchemaNotFound(f"schema id {schema_id} is not in the registry: {detail}") from None
        references = body.get("references") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str) or not _is_references(references):
            raise RegistryUnavailable(
                f"schema registry {self.url}: GET /schemas/ids/{schema_id} answered "
                f"{self._scrub(str(body)[:200])!r}, not a schema; point "
                "SCHEMA_REGISTRY_URL at the API root"
            )
        raw_type = body.get("schemaType")
        try:
            schema_format = SchemaFormat(raw_type) if raw_type else SchemaFormat.AVRO
        except ValueError:
            raise RegistryError(
                f"schema id {schema_id}: schemaType {raw_type!r} is not supported (JSON and AVRO are)"
            ) from None
        if pairs is None:
            versions = self._versions_by_lookup(schema_id, body["schema"], schema_format)
        else:
            versions = tuple(
                (str(p["subject"]), int(p["version"]))
                for p in (pairs if isinstance(pairs, list) else ())
                if isinstance(p, dict) and isinstance(p.get("subject"), str) and _is_version(p.get("version"))
            )
        return SchemaById(schema_id, schema_format, body["schema"], versions, tuple(body.get("references") or ()))

    def _versions_by_lookup(
        self, schema_id: int, text: str, schema_format: SchemaFormat
    ) -> tuple[tuple[str, int], ...]:
        found = []
        for subject in self.subjects():
            registered = self.lookup(subject, text, schema_format)
            if registered is not None and registered.schema_id in (None, schema_id):
                found.append((registered.subject, registered.version))
        return tuple(found)

    def subjects(self) -> list[str]:
        return list(self._call("GET", "/subjects"))

    def versions(self, subject: str) -> list[int]:
        """``GET /subjects/{subject}/versions``; raises SchemaNotFound for an unknown subject."""
        return [int(v) for v in self._subject_lookup(f"{_subject_path(subject)}/versions", subject, None)]

    def register(
        self, subject: str, text: str, schema_format: SchemaFormat, *, references: Sequence[Mapping[str, Any]] = ()
    ) -> RegisteredSchema:
        """``POST /subjects/{subject}/versions`` then a lookup for the version number.

        Registering a schema identical to an existing version of the subject creates nothing and returns
        that version (Confluent's and Apicurio's behaviour; the returned version may then be an older one).

        Raises:
            RegistryRejected: incompatible (409) or invalid (422), with the registry's messages.
            RegistryUnavailable: as :meth:`get`.
        """
        body = self._call(
            "POST",
            f"{_subject_path(subject)}/versions",
            json=_payload(text, schema_format, references),
            subject=subject,
        )
        found = self.lookup(subject, text, schema_format, references=references)
        if found is None:
            raise RegistryError(
                f"subject {subject!r}: registered (id {body.get('id')}) but the registry "
                "cannot find the schema it just accepted",
                subject=subject,
            )
        return found

    def try_register(
        self, subject: str, text: str, schema_format: SchemaFormat, *, references: Sequence[Mapping[str, Any]] = ()
    ) -> Registration:
        """``POST /subjects/{subject}/versions`` alone: the schema id, or the registry's reasons for refusing it.

        For asking "would the registry accept this?": a refusal as incompatible (409) is an answer, not an
        error. Unlike :meth:`register` there is no lookup of the version number afterwards.

        Raises:
            RegistryRejected: the registry finds the schema invalid (422), with its messages.
            RegistryUnavailable: as :meth:`get`.
            RegistryError: it accepted the schema but answered no schema id.
        """
        body = self._call(
            "POST",
            f"{_subject_path(subject)}/versions",
            json=_payload(text, schema_format, references),
            subject=subject,
            incompatible_answer=True,
        )
        if isinstance(body, Registration):
            return body
        schema_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(schema_id, int):
            raise RegistryError(
                f"subject {subject!r}: the registry accepted the schema but answered no schema "
                f"id ({self._scrub(str(body)[:200])})",
                subject=subject,
            )
        return Registration(schema_id)

    def lookup(
        self, subject: str, text: str, schema_format: SchemaFormat, *, references: Sequence[Mapping[str, Any]] = ()
    ) -> RegisteredSchema | None:
        """``POST /subjects/{subject}``: the version holding this schema (with these references), or None (no
        such subject/schema)."""
        body = self._call(
            "POST",
            _subject_path(subject),
            json=_payload(text, schema_format, references),
            subject=subject,
            absent=(_NO_SUCH_SUBJECT, _NO_SUCH_SCHEMA),
        )
        if body is None:
            return None
        # Apicurio's lookup answer has no schemaType; the format is the one we asked about.
        return self._version(body, subject, f"POST {_subject_path(subject)}", schema_format, text)

    def check_compatibility(
        self,
        subject: str,
        text: str,
        schema_format: SchemaFormat,
        version: int | str = "latest",
        *,
        references: Sequence[Mapping[str, Any]] = (),
    ) -> CompatibilityResult:
        """``POST /compatibility/subjects/{subject}/versions/{version}?verbose=true``.

        A subject that does not exist yet is compatible. Apicurio 3.0 answers ``{"is_compatible": false}``
        without messages even with ``verbose=true``; its reasons come only from a refused :meth:`register`.
        """
        body = self._call(
            "POST",
            f"/compatibility{_subject_path(subject)}/versions/{version}",
            json=_payload(text, schema_format, references),
            params={"verbose": "true"},
            subject=subject,
            version=version,
            absent=(_NO_SUCH_SUBJECT,),
        )
        if body is None:
            return CompatibilityResult(True, ("subject does not exist yet",))
        return CompatibilityResult(bool(body.get("is_compatible")), tuple(body.get("messages") or ()))

    def set_compatibility(self, subject: str, mode: Compatibility) -> None:
        """``PUT /config/{subject}``: the subject's compatibility mode, for the registrations that follow.

        Raises:
            SchemaNotFound: the registry answered 40401 (some configure a subject only once it has a
                version).
            RegistryUnavailable: as :meth:`get`.
        """
        self._call("PUT", f"/config/{_segment(subject)}", json={"compatibility": str(mode)}, subject=subject)

    def delete_subject(self, subject: str, *, permanent: bool = False) -> list[int]:
        """``DELETE /subjects/{subject}``: the versions deleted; the subject then answers *not found*.

        ``permanent`` follows the soft delete with ``DELETE /subjects/{subject}?permanent=true`` (Confluent
        deletes for good only what is already soft-deleted), so the name and its ids are gone for good; a
        subject that is already soft-deleted goes straight on to the permanent delete.

        Raises:
            SchemaNotFound: no such subject (or, without ``permanent``, one that is already soft-deleted).
            RegistryUnavailable: as :meth:`get`.
        """
        path = _subject_path(subject)
        deleted = self._call("DELETE", path, subject=subject, absent=(_SOFT_DELETED,) if permanent else ())
        if permanent:
            deleted = self._call("DELETE", path, params={"permanent": "true"}, subject=subject)
        if not isinstance(deleted, list) or not all(isinstance(v, int) for v in deleted):
            raise RegistryError(
                f"schema registry {self.url}: DELETE {path} answered {str(deleted)[:200]!r}, "
                "not a list of version numbers",
                subject=subject,
            )
        return deleted

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ConfluentHttpRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _subject_lookup(self, path: str, subject: str, version: int | str | None) -> Any:
        """``GET path`` (a lookup naming ``subject``). A request the registry refuses as such (400, 414, 431)
        while the same lookup for a plain name is answered (:data:`_PROBE_SUBJECT`: found, or not found with
        Confluent's error code) is the name's fault: :class:`SchemaCannotExist`. Otherwise (every lookup is
        refused: a proxy, a wrong URL, no permission) it stays :class:`RegistryUnavailable`."""
        try:
            return self._call("GET", path, subject=subject, version=version)
        except _RequestRefused as refused:
            probe = self._probe_lookup()
            if probe is not None:
                log.warning(
                    "schema registry %s refused a lookup of subject %s (HTTP %s), and one of %r too (%s): "
                    "waiting for the registry",
                    self.url,
                    quoted(subject),
                    refused.status,
                    _PROBE_SUBJECT,
                    probe,
                )
                raise
            detail = " ".join(refused.detail.split())[:200] or "no message"
            raise SchemaCannotExist(
                f"subject {quoted(subject)}: the registry refuses the name (HTTP {refused.status}: {detail}) "
                f"and answers the same lookup for {_PROBE_SUBJECT!r}; no schema can be registered under it",
                subject=subject,
                version=version,
            ) from None

    def _probe_lookup(self) -> str | None:
        """None when the registry answers a lookup of :data:`_PROBE_SUBJECT`'s latest version (found or not
        found), else why not."""
        try:
            self._call("GET", f"{_subject_path(_PROBE_SUBJECT)}/versions/latest", subject=_PROBE_SUBJECT)
        except SchemaNotFound:
            return None
        except RegistryError as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------------ the one place errors are translated

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        subject: str | None = None,
        version: int | str | None = None,
        absent: tuple[int | None, ...] = (),
        incompatible_answer: bool = False,
    ) -> Any:
        """The JSON answer, or None for a 404 whose error code is in ``absent``, or a refused
        :class:`Registration` for a 409 when ``incompatible_answer``."""
        what = f"{method} {path}"
        context = {"subject": subject, "version": version}
        attempt = 0
        while True:
            attempt += 1
            status = None
            try:
                response = self._client.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:  # refused, reset, timeouts, protocol errors
                problem = f"{type(exc).__name__}: {self._scrub(str(exc)) or 'no detail'}"
                tls = _tls_failure(exc)
                if tls is not None:  # the same certificates fail the same way: not retried
                    raise RegistryUnavailable(
                        f"schema registry {self.url}: {what}: the TLS handshake failed ({self._scrub(str(tls))}); "
                        + _TLS_FIX[isinstance(tls, ssl.SSLCertVerificationError)],
                        attempts=attempt,
                        status=None,
                        **context,
                    ) from None
            else:
                status = response.status_code
                if status < 500 and status != 429:
                    return self._answer(response, what, context, absent, attempt, incompatible_answer)
                problem = f"HTTP {status} {self._registry_message(response)}".rstrip()
            if attempt == self._max_attempts:
                raise RegistryUnavailable(
                    f"schema registry {self.url} unavailable: {what} failed {attempt} time(s), last: {problem}",
                    attempts=attempt,
                    status=status,
                    **context,
                )
            delay = self._delay(attempt)
            log.warning(
                "schema registry %s: %s failed (%s), attempt %d of %d, retrying in %.2fs",
                self.url,
                what,
                problem,
                attempt,
                self._max_attempts,
                delay,
            )
            self._sleep(delay)

    def _answer(
        self,
        response: httpx.Response,
        what: str,
        context: dict[str, Any],
        absent: tuple[int | None, ...],
        attempt: int,
        incompatible_answer: bool = False,
    ) -> Any:
        status = response.status_code
        misconfigured = {"attempts": attempt, **context}
        if status < 300:
            try:
                return response.json()
            except ValueError:
                raise RegistryUnavailable(
                    f"schema registry {self.url}: {what} answered HTTP {status} with "
                    "a body that is not JSON; point SCHEMA_REGISTRY_URL at the API "
                    "root",
                    **misconfigured,
                ) from None
        code, message = self._error(response)
        if status == 404 and code in absent:
            return None
        if status == 404 and code in _NOT_FOUND:
            raise SchemaNotFound(f"{_NOT_FOUND[code]}: {_describe(context)} ({code}: {message})", **context)
        if status == 404:
            raise RegistryUnavailable(
                f"schema registry {self.url}: {what} answered HTTP 404 without a "
                "Confluent error code; point SCHEMA_REGISTRY_URL at the API root (for "
                "Apicurio .../apis/ccompat/v7)",
                **misconfigured,
            )
        if status == 409 and incompatible_answer:
            return Registration(None, tuple(self._reasons(response)))
        if status in (409, 422):
            reasons = self._reasons(response)
            raise RegistryRejected(
                f"registry refused the schema for {_describe(context)} (HTTP {status}, {code}): {'; '.join(reasons)}",
                reasons=reasons,
                **context,
            )
        if status in (401, 403):
            raise RegistryUnavailable(
                f"schema registry {self.url} refused the credentials (HTTP {status}); "
                "check SCHEMA_REGISTRY_USERNAME/PASSWORD or "
                "SCHEMA_REGISTRY_BEARER_TOKEN",
                **misconfigured,
            )
        if status in _NAME_REFUSED:
            raise _RequestRefused(
                f"schema registry {self.url}: {what} answered HTTP {status} ({code}): {message}",
                detail=message,
                status=status,
                **misconfigured,
            )
        raise RegistryUnavailable(
            f"schema registry {self.url}: {what} answered HTTP {status} ({code}): {message}",
            status=status,
            **misconfigured,
        )

    def _error(self, response: httpx.Response) -> tuple[int | None, str]:
        try:
            body = response.json()
        except ValueError:
            return None, self._scrub(response.text[:200])
        if not isinstance(body, dict):
            return None, self._scrub(str(body)[:200])
        code = body.get("error_code")
        return (code if isinstance(code, int) else None), self._scrub(str(body.get("message", "")))

    def _reasons(self, response: httpx.Response) -> list[str]:
        """A refusal in the registry's own words: its ``message`` and any ``messages`` list."""
        message = self._error(response)[1]
        try:
            body = response.json()
        except ValueError:
            body = None
        more = body.get("messages") if isinstance(body, dict) else None
        reasons = [message] if message else []
        reasons += [self._scrub(str(m)) for m in more] if isinstance(more, list) else []
        return reasons or [self._scrub(response.text[:200]) or f"HTTP {response.status_code}, no message"]

    def _registry_message(self, response: httpx.Response) -> str:
        return self._error(response)[1][:200]

    def _delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, :func:`~toolkit.backoff.exponential_delay`]."""
        return self._rng() * exponential_delay(attempt, *self._backoff)

    def _version(
        self,
        body: Any,
        subject: str,
        asked: str,
        default_format: SchemaFormat = SchemaFormat.AVRO,
        text: str | None = None,
    ) -> RegisteredSchema:
        """The subject version a registry's answer describes (``text``: the schema looked up, for an answer
        that does not repeat it). A 2xx answer that is no subject version (a proxy's or another API's JSON)
        is a misconfiguration, as one that is not JSON: RegistryUnavailable, so records wait for a fix
        instead of being dead-lettered for the registry's answer."""
        if isinstance(body, dict) and text is not None and "schema" not in body:
            body = {**body, "schema": text}
        references = body.get("references") if isinstance(body, dict) else None
        schema_id = body.get("id") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("schema"), str)
            or not _is_version(body.get("version"))
            or not isinstance(body.get("subject", subject), str)
            or not _is_references(references)
            or not (schema_id is None or (isinstance(schema_id, int) and not isinstance(schema_id, bool)))
        ):
            raise RegistryUnavailable(
                f"schema registry {self.url}: {asked} answered {self._scrub(str(body)[:200])!r}, not a subject "
                "version (schema, version, id); point SCHEMA_REGISTRY_URL at the API root"
            )
        return _registered(body, subject, default_format)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


_TLS_FIX = {
    True: "the registry's certificate is not trusted: set SCHEMA_REGISTRY_CA_BUNDLE to the PEM file of the CA "
    "that signed it (or fix the URL's host name to one the certificate names)",
    False: "check SCHEMA_REGISTRY_CA_BUNDLE, and SCHEMA_REGISTRY_CLIENT_CERT / SCHEMA_REGISTRY_CLIENT_KEY if the "
    "registry asks for a client certificate",
}


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The certificate failure under an httpx transport error (httpx chains the ``ssl`` error as the cause):
    a certificate not trusted, or one refused by the server (an alert naming a certificate, or
    ``TLSV1_ALERT_UNKNOWN_CA``: the server does not trust the client certificate's CA). Other TLS errors
    (a connection closed mid-handshake by a restarting registry) are transient: None."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            reason = str(getattr(seen, "reason", "") or "").upper()
            if (
                isinstance(seen, ssl.SSLCertVerificationError)
                or "CERTIFICATE" in reason
                or reason.endswith("UNKNOWN_CA")
            ):
                return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _auth(username: str | None, password: SecretStr | None, token: SecretStr | None) -> httpx.Auth | None:
    if token and (username or password):
        raise ConfigError(
            "set either SCHEMA_REGISTRY_USERNAME/PASSWORD or SCHEMA_REGISTRY_BEARER_TOKEN, not both",
            setting="SCHEMA_REGISTRY_BEARER_TOKEN",
        )
    if token:
        return _BearerAuth(token)
    if password and not username:
        raise ConfigError(
            "SCHEMA_REGISTRY_PASSWORD is set without SCHEMA_REGISTRY_USERNAME; set both",
            setting="SCHEMA_REGISTRY_USERNAME",
        )
    if username:
        return httpx.BasicAuth(username, password.get_secret_value() if password else "")
    return None


def _tls(ca_bundle: Path | None, client_cert: Path | None, client_key: Path | None) -> ssl.SSLContext | bool:
    if not (ca_bundle or client_cert):
        if client_key:
            raise ConfigError(
                "SCHEMA_REGISTRY_CLIENT_KEY is set without SCHEMA_REGISTRY_CLIENT_CERT; set both",
                setting="SCHEMA_REGISTRY_CLIENT_CERT",
            )
        return True
    try:
        context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
        if client_cert:
            context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    except (OSError, ssl.SSLError) as exc:
        # The message names files, never their content or a key password.
        raise ConfigError(
            f"cannot load the registry TLS files ({type(exc).__name__}: "
            f"{exc.strerror or exc}); SCHEMA_REGISTRY_CA_BUNDLE, _CLIENT_CERT and _CLIENT_KEY "
            "must be PEM files",
            setting="SCHEMA_REGISTRY_CA_BUNDLE",
        ) from None
    return context


def _check_options(
    url: Any,
    username: Any,
    password: Any,
    token: Any,
    timeout_s: Any,
    max_attempts: Any,
    backoff_initial_s: Any,
    backoff_max_s: Any,
    *paths: Any,
) -> None:
    _args.text("url", url)
    if not url.strip().lower().startswith(("http://", "https://")) or len(url.strip()) <= len("https://"):
        raise InvalidArgument(
            "url is not an http(s) URL (not shown: it may hold credentials); use e.g. "
            "http://127.0.0.1:8081/apis/ccompat/v7",
            argument="url",
        )
    if username is not None:
        _args.text("username", username)
    for name, secret in (("password", password), ("bearer_token", token)):
        if secret is not None:
            if not isinstance(secret, str | SecretStr):  # the value is never shown: it may be the secret
                raise InvalidArgumentType(
                    f"{name}: expected a str or pydantic.SecretStr, got a {type(secret).__name__}", argument=name
                )
    _args.number("timeout_s", timeout_s, positive=True)
    _args.integer("max_attempts", max_attempts, low=1)
    _args.number("backoff_initial_s", backoff_initial_s, low=0)
    _args.number("backoff_max_s", backoff_max_s, low=0)
    for name, value in zip(("ca_bundle", "client_cert", "client_key"), paths, strict=True):
        if value is not None:
            _args.path(name, value)


def _segment(subject: str) -> str:
    """``subject`` as one URL path segment. "." and ".." are dot segments that URL handling removes
    (/subjects/../versions/1 is /versions/1, /config/. is /config): percent-encoded, they reach the registry as
    the subject they are."""
    segment = quote(subject, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def _subject_path(subject: str) -> str:
    return f"/subjects/{_segment(subject)}"


def _payload(text: str, schema_format: SchemaFormat, references: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    # schemaType omitted means AVRO; leaving it out keeps pre-5.5 Confluent registries working.
    payload: dict[str, Any] = {"schema": text}
    if schema_format != SchemaFormat.AVRO:
        payload["schemaType"] = str(schema_format)
    if references:  # {"name", "subject", "version"} each, as registered (Confluent 5.5+, Apicurio's ccompat)
        payload["references"] = [dict(ref) for ref in references]
    return payload


def _is_references(value: Any) -> bool:
    """A subject version's ``references`` as registries write them: absent, or a list of objects."""
    return value is None or (isinstance(value, list) and all(isinstance(item, dict) for item in value))


def _is_version(value: Any) -> bool:
    """A version number as registries write it: a positive int (or its digits, as some proxies re-encode it)."""
    if isinstance(value, str):
        return SCHEMA_VERSION.fullmatch(value) is not None
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _registered(
    body: dict[str, Any], subject: str, default_format: SchemaFormat = SchemaFormat.AVRO
) -> RegisteredSchema:
    raw_type = body.get("schemaType")
    try:
        schema_format = SchemaFormat(raw_type) if raw_type else default_format
    except ValueError:
        raise RegistryError(
            f"subject {subject!r} version {body.get('version')}: schemaType {raw_type!r} is "
            "not supported (JSON and AVRO are)",
            subject=subject,
            version=body.get("version"),
        ) from None
    return RegisteredSchema(
        subject=body.get("subject", subject),
        version=int(body["version"]),
        format=schema_format,
        text=body["schema"],
        schema_id=body.get("id"),
        references=tuple(body.get("references") or ()),
    )


def _describe(context: dict[str, Any]) -> str:
    parts = [f"subject {context['subject']!r}"] if context.get("subject") else []
    if context.get("version") is not None:
        parts.append(f"version {context['version']}")
    return " ".join(parts) or "request"
