"""ScratchRegistry over a ConfluentHttpRegistry on httpx.MockTransport: the request sequence and the errors.

The real registry's verdicts are compared in tests/integration/test_compat_registry.py.
"""

from __future__ import annotations

import json

import httpx
import pytest

from toolkit.compat.registry import ScratchRegistry
from toolkit.errors import ConfigError, RegistryError, RegistryRejected, RegistryUnavailable
from toolkit.layout import Compatibility, SchemaFormat
from toolkit.registry import CompatibilityResult, ConfluentHttpRegistry
from toolkit.settings import RegistrySettings

URL = "http://registry.test/apis/ccompat/v7"
OLD = {"type": "record", "name": "E", "fields": [{"name": "a", "type": "string"}]}
NEW = {"type": "record", "name": "E", "fields": [{"name": "a", "type": "int"}]}
REFUSAL = "Incompatible artifact: [reader type: INT not compatible with writer type: STRING at /fields/0/type]"


class Registry:
    """Answers by method: the i-th POST gets ``posts[i]`` (the last one repeats); PUT and DELETE get
    ``put`` and ``delete``. Records every request as (method, path, params, body)."""

    def __init__(self, *posts, put=(200, {"compatibility": "NONE"}), delete=(200, [1])) -> None:
        self.posts, self.put, self.delete = list(posts), put, delete
        self.seen: list[tuple[str, str, dict, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.path.removeprefix("/apis/ccompat/v7")
        self.seen.append((request.method, path, dict(request.url.params), body))
        if request.method == "POST":
            status, answer = self.posts.pop(0) if len(self.posts) > 1 else self.posts[0]
        else:
            status, answer = self.put if request.method == "PUT" else self.delete
        return httpx.Response(status, json=answer)

    def methods(self) -> list[str]:
        return [method for method, *_ in self.seen]


def scratch(server: Registry, max_attempts: int = 3) -> ScratchRegistry:
    http = ConfluentHttpRegistry(
        URL, transport=httpx.MockTransport(server), max_attempts=max_attempts, sleep=lambda s: None
    )
    return ScratchRegistry(http, prefix="t")


def test_a_refusal_is_an_incompatible_verdict_with_the_registry_messages_and_the_subject_is_deleted():
    server = Registry((200, {"id": 1}), (409, {"error_code": 409, "message": REFUSAL}))
    verdict = scratch(server).verdict(SchemaFormat.AVRO, Compatibility.BACKWARD, [OLD, NEW], label="orders")
    assert verdict == CompatibilityResult(False, (REFUSAL,))
    subject = server.seen[0][1].split("/")[2]
    assert subject.startswith("t-orders-")
    assert [(m, p, params) for m, p, params, _ in server.seen] == [
        ("POST", f"/subjects/{subject}/versions", {}),
        ("PUT", f"/config/{subject}", {}),
        ("PUT", f"/config/{subject}", {}),
        ("POST", f"/subjects/{subject}/versions", {}),
        ("DELETE", f"/subjects/{subject}", {}),
        ("DELETE", f"/subjects/{subject}", {"permanent": "true"}),
    ]
    assert [body for m, _, _, body in server.seen if m == "PUT"] == [
        {"compatibility": "NONE"},
        {"compatibility": "BACKWARD"},
    ]
    assert [json.loads(body["schema"]) for m, _, _, body in server.seen if m == "POST"] == [OLD, NEW]


def test_an_accepted_version_and_one_identical_to_an_earlier_version():
    accepted = scratch(Registry((200, {"id": 1}), (200, {"id": 2}))).verdict(
        SchemaFormat.AVRO, Compatibility.FORWARD, [OLD, NEW]
    )
    assert accepted == CompatibilityResult(True)
    same = scratch(Registry((200, {"id": 1}))).verdict(SchemaFormat.AVRO, Compatibility.FORWARD, [OLD, OLD])
    assert same.compatible and "identical to an earlier version" in same.messages[0]


def test_a_server_error_is_retried_then_unavailable_and_cleanup_is_still_tried():
    server = Registry((200, {"id": 1}), (500, {"message": "could not determine version"}))
    with pytest.raises(RegistryUnavailable) as raised:
        scratch(server, max_attempts=3).verdict(SchemaFormat.JSON, Compatibility.BACKWARD, [{}, {}], label="orders")
    message = str(raised.value)
    assert raised.value.attempts == 3 and "/subjects/t-orders-" in message
    assert "HTTP 500 could not determine version" in message
    assert server.methods() == ["POST", "PUT", "PUT", "POST", "POST", "POST", "DELETE", "DELETE"]


def test_an_invalid_version_is_an_error_naming_the_subject_status_and_message():
    server = Registry((200, {"id": 1}), (422, {"error_code": 42201, "message": "Failed to discover type"}))
    with pytest.raises(RegistryRejected) as raised:
        scratch(server).verdict(SchemaFormat.AVRO, Compatibility.BACKWARD, [OLD, {"type": "x"}], label="orders")
    assert raised.value.subject.startswith("t-orders-")
    assert "HTTP 422" in str(raised.value) and "Failed to discover type" in str(raised.value)
    assert server.methods()[-2:] == ["DELETE", "DELETE"]


def test_an_earlier_version_refused_is_an_error_not_a_verdict():
    server = Registry((200, {"id": 1}), (409, {"error_code": 409, "message": REFUSAL}))
    with pytest.raises(RegistryError) as raised:
        scratch(server).verdict(SchemaFormat.AVRO, Compatibility.BACKWARD, [OLD, NEW, NEW], label="orders")
    assert raised.value.version == 2 and "409" in str(raised.value) and REFUSAL in str(raised.value)
    assert raised.value.subject and raised.value.subject in str(raised.value)


@pytest.mark.parametrize("delete", [(500, {"message": "down"}), (404, {"error_code": 40401, "message": "gone"})])
def test_cleanup_is_best_effort(delete):
    server = Registry((200, {"id": 1}), (200, {"id": 2}), delete=delete)
    assert scratch(server).verdict(SchemaFormat.AVRO, Compatibility.BACKWARD, [OLD, NEW]).compatible
    assert "DELETE" in server.methods()


def test_built_from_a_url_or_settings_and_closes_only_what_it_built():
    with ScratchRegistry(URL.replace("://", "://svc:pw-s3cret@")) as from_url:
        assert from_url.url == URL and "basic" in repr(from_url.http) and "pw-s3cret" not in repr(from_url.http)
    settings = RegistrySettings(_env_file=None, url=URL, bearer_token="t0ken", max_attempts=2)
    with ScratchRegistry(settings) as from_settings:
        assert from_settings.url == URL and "bearer" in repr(from_settings.http)
    assert from_url.http._client.is_closed and from_settings.http._client.is_closed
    with pytest.raises(ConfigError):
        ScratchRegistry(RegistrySettings(_env_file=None, url=URL, password="pw"))
    server = Registry((200, {"id": 1}))
    http = ConfluentHttpRegistry(URL, transport=httpx.MockTransport(server))
    with ScratchRegistry(http):
        pass
    assert not http._client.is_closed  # the caller's client
    http.close()


def test_the_request_timeout_is_30_s_unless_the_settings_set_one():
    def read_timeout(registry: ScratchRegistry) -> float:
        with registry:
            return registry.http._client.timeout.read

    assert read_timeout(ScratchRegistry(URL)) == 30.0
    assert read_timeout(ScratchRegistry(RegistrySettings(_env_file=None, url=URL))) == 30.0
    assert read_timeout(ScratchRegistry(RegistrySettings(_env_file=None, url=URL, timeout_s=7))) == 7.0
    assert read_timeout(ScratchRegistry(URL, timeout=3)) == 3.0
