"""Ask a Confluent-compatible registry for its verdict, in throw-away scratch subjects (the only I/O here).

For "would version N be accepted?" the earlier versions are registered in a fresh subject with
compatibility NONE, the subject's mode is set, and version N is registered: HTTP 409 means the registry
refuses it. The scratch subject is deleted afterwards (soft, then permanently).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from toolkit.errors import RegistryError, RegistryUnavailable
from toolkit.layout import Compatibility, SchemaFormat

_JSON = {"Content-Type": "application/vnd.schemaregistry.v1+json"}


@dataclass(frozen=True)
class RegistryVerdict:
    compatible: bool
    messages: tuple[str, ...] = ()


class ScratchRegistry:
    """A registry URL (``.../apis/ccompat/v7`` for Apicurio) used only through scratch subjects."""

    def __init__(self, url: str, *, prefix: str = "epistle-check", timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.prefix = prefix
        self.client = httpx.Client(timeout=timeout, headers=_JSON)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ScratchRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verdict(self, schema_format: SchemaFormat, mode: Compatibility, versions: list[Any],
                label: str = "subject") -> RegistryVerdict:
        """Would the registry accept the last of ``versions`` (raw documents, oldest first) under ``mode``?

        Raises:
            RegistryUnavailable: the registry cannot be reached.
            RegistryError: it refused an earlier version or answered something unexpected.
        """
        subject = f"{self.prefix}-{label}-{uuid.uuid4().hex[:10]}"
        try:
            earlier_ids = set()
            for index, document in enumerate(versions[:-1]):
                _, body = self._register(subject, schema_format, document, expect_ok=True)
                earlier_ids.add(body.get("id") if isinstance(body, dict) else None)
                if index == 0:  # a subject-level config needs an existing subject on Apicurio
                    self._set_mode(subject, Compatibility.NONE)
            if len(versions) == 1:
                return RegistryVerdict(True)
            self._set_mode(subject, mode)
            status, body = self._register(subject, schema_format, versions[-1], expect_ok=False)
            if status == 409:
                return RegistryVerdict(False, tuple(_messages(body)))
            if isinstance(body, dict) and body.get("id") in earlier_ids:
                return RegistryVerdict(True, ("identical to an earlier version: the registry returned that "
                                              "version's id and checked nothing",))
            return RegistryVerdict(True)
        finally:
            self._delete(subject)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.client.request(method, f"{self.url}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"schema registry at {self.url} unreachable: "
                                      f"{type(exc).__name__}") from None

    def _register(self, subject: str, schema_format: SchemaFormat, document: Any, *, expect_ok: bool
                  ) -> tuple[int, Any]:
        payload: dict[str, Any] = {"schema": json.dumps(document)}
        if schema_format is SchemaFormat.JSON:
            payload["schemaType"] = "JSON"
        response = self._request("POST", f"/subjects/{subject}/versions", json=payload)
        body = _body(response)
        if response.status_code == 200 or (response.status_code == 409 and not expect_ok):
            return response.status_code, body
        raise RegistryError(f"registry answered {response.status_code} registering a version of {subject}: "
                            f"{'; '.join(_messages(body))}", subject=subject)

    def _set_mode(self, subject: str, mode: Compatibility) -> None:
        response = self._request("PUT", f"/config/{subject}", json={"compatibility": mode.value})
        if response.status_code != 200:
            raise RegistryError(f"registry answered {response.status_code} setting {mode} on {subject}: "
                                f"{'; '.join(_messages(_body(response)))}", subject=subject)

    def _delete(self, subject: str) -> None:
        try:
            self.client.delete(f"{self.url}/subjects/{subject}")
            self.client.delete(f"{self.url}/subjects/{subject}", params={"permanent": "true"})
        except httpx.HTTPError:  # cleanup is best effort; the subject name is unique
            pass


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _messages(body: Any) -> list[str]:
    if isinstance(body, dict):
        found = [str(body.get("message", ""))] if body.get("message") else []
        found += [str(m) for m in body.get("messages", []) or []]
        return found or [json.dumps(body)]
    return [str(body)[:500]]
