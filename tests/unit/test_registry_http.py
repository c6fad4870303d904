"""ConfluentHttpRegistry against httpx.MockTransport: the error translation, retries, auth and secrecy."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from toolkit.errors import ConfigError, RegistryError, RegistryRejected, RegistryUnavailable, SchemaNotFound
from toolkit.layout import Compatibility, SchemaFormat
from toolkit.registry import ConfluentHttpRegistry, SchemaRegistry, registry_from_settings
from toolkit.registry.http import Registration
from toolkit.settings import RegistrySettings

URL = "http://registry.test/apis/ccompat/v7"
PASSWORD = "pa55-w0rd-s3cret"
TOKEN = "t0ken-s3cret-value"
AVRO = '{"type": "record", "name": "R", "fields": [{"name": "id", "type": "string"}]}'


def version_body(subject: str = "orders", version: int = 1, schema_type: str | None = None) -> dict:
    body = {"subject": subject, "version": version, "id": 42, "schema": AVRO, "references": []}
    if schema_type:
        body["schemaType"] = schema_type
    return body


class Server:
    """Answers from a list of canned responses (or exceptions) and records every request."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)


def client(server: Server, sleeps: list[float] | None = None, **options) -> ConfluentHttpRegistry:
    options.setdefault("max_attempts", 3)
    return ConfluentHttpRegistry(
        URL,
        transport=httpx.MockTransport(server),
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        **options,
    )


def test_it_is_a_registry():
    assert isinstance(client(Server((200, {}))), SchemaRegistry)


def test_get_reads_a_version_and_omitted_schema_type_means_avro():
    server = Server((200, version_body()))
    schema = client(server).get("orders", 1)
    assert (schema.subject, schema.version, schema.format, schema.text, schema.schema_id) == (
        "orders",
        1,
        SchemaFormat.AVRO,
        AVRO,
        42,
    )
    assert server.requests[0].url == f"{URL}/subjects/orders/versions/1"


def test_json_schema_type_and_latest():
    server = Server((200, version_body(version=3, schema_type="JSON")))
    schema = client(server).latest("orders")
    assert schema.format == SchemaFormat.JSON and schema.version == 3
    assert server.requests[0].url.path.endswith("/subjects/orders/versions/latest")


def test_subject_names_are_escaped_in_the_path():
    server = Server((200, version_body(subject="a/b c")))
    client(server).get("a/b c", 1)
    assert server.requests[0].url.raw_path.endswith(b"/subjects/a%2Fb%20c/versions/1")


@pytest.mark.parametrize("code", [40401, 40402])
def test_not_found_is_permanent_and_not_retried(code):
    server = Server((404, {"error_code": code, "message": "No such thing"}))
    with pytest.raises(SchemaNotFound) as raised:
        client(server).get("orders", 9)
    assert raised.value.subject == "orders" and raised.value.version == 9
    assert "No such thing" in str(raised.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize("version", [0, -1, True, "1"])
def test_a_version_that_is_not_positive_is_not_found_without_asking(version):
    server = Server((200, version_body()))
    with pytest.raises(SchemaNotFound):
        client(server).get("orders", version)  # the registry would read -1 as latest
    assert server.requests == []


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
        (503, {"error_code": 50301, "message": "busy"}),
        (500, "<html>oops</html>"),
        (429, {"message": "slow down"}),
    ],
)
def test_transient_failures_are_retried_then_unavailable_never_not_found(failure):
    server, sleeps = Server(failure), []
    with pytest.raises(RegistryUnavailable) as raised:
        client(server, sleeps, max_attempts=4, backoff_initial_s=0.1, backoff_max_s=0.25).get("orders", 1)
    assert not isinstance(raised.value, SchemaNotFound)
    assert raised.value.attempts == 4 and len(server.requests) == 4
    assert "4 time(s)" in str(raised.value) and raised.value.subject == "orders"
    assert len(sleeps) == 3  # between attempts, none after the last
    assert all(0 <= delay <= cap for delay, cap in zip(sleeps, [0.1, 0.2, 0.25], strict=True))


def test_backoff_is_exponential_with_full_jitter_and_capped():
    registry = client(Server((200, {})), backoff_initial_s=0.5, backoff_max_s=3.0, rng=lambda: 1.0)
    assert [registry._delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    registry = client(Server((200, {})), backoff_initial_s=0.5, backoff_max_s=3.0, rng=lambda: 0.25)
    assert registry._delay(2) == 0.25


def test_a_retry_that_succeeds_returns_the_answer():
    server = Server(httpx.ConnectError("refused"), (502, "bad gateway"), (200, version_body()))
    assert client(server).get("orders", 1).version == 1
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    "answer, fix",
    [
        ((404, {"detail": "RESTEASY003210: Could not find resource"}), "API root"),
        ((401, {"message": "Unauthorized"}), "credentials"),
        ((403, {"message": "Forbidden"}), "credentials"),
        ((200, "<html>a proxy login page</html>"), "API root"),
        # JSON, but no subject version: another API's or a gateway's answer
        ((200, {"status": "ok"}), "not a subject version"),
        ((200, [1, 2]), "not a subject version"),
        ((200, {"subject": "orders", "version": 1, "id": 1}), "not a subject version"),  # no schema
        ((200, {**version_body(), "schema": None}), "not a subject version"),
        ((200, {**version_body(), "version": "one"}), "not a subject version"),
        ((200, {**version_body(), "id": "42"}), "not a subject version"),
        ((200, {**version_body(), "references": "address"}), "not a subject version"),
    ],
)
def test_misconfiguration_pauses_the_consumer_instead_of_dead_lettering(answer, fix):
    server = Server(answer)
    with pytest.raises(RegistryUnavailable) as raised:
        client(server).get("orders", 1)
    assert fix in str(raised.value)
    assert len(server.requests) == 1  # retrying would not fix it


@pytest.mark.parametrize("status, code", [(409, 409), (422, 42201)])
def test_register_refused_carries_the_registry_message(status, code):
    message = "Incompatible artifact: orders [AVRO], list of diff types: [n at /fields/1]"
    server = Server((status, {"error_code": code, "message": message}))
    with pytest.raises(RegistryRejected) as raised:
        client(server).register("orders", AVRO, SchemaFormat.AVRO)
    assert raised.value.reasons == [message] and raised.value.subject == "orders"


def test_register_posts_then_looks_up_the_version_and_omits_avro_schema_type():
    server = Server((200, {"id": 42}), (200, {"subject": "orders", "version": 2, "id": 42, "schema": AVRO}))
    schema = client(server).register("orders", AVRO, SchemaFormat.AVRO)
    assert schema.version == 2 and schema.schema_id == 42 and schema.format == SchemaFormat.AVRO
    post, lookup = server.requests
    assert post.url.path.endswith("/subjects/orders/versions")
    assert lookup.url.path.endswith("/subjects/orders")
    assert json.loads(post.content) == {"schema": AVRO}
    assert post.headers["content-type"] == "application/vnd.schemaregistry.v1+json"


def test_lookup_of_json_keeps_the_asked_format_when_the_answer_omits_it():
    server = Server((200, {"subject": "o", "version": 1, "id": 1, "schema": "{}"}))
    assert client(server).lookup("o", "{}", SchemaFormat.JSON).format == SchemaFormat.JSON
    assert json.loads(server.requests[0].content) == {"schema": "{}", "schemaType": "JSON"}


@pytest.mark.parametrize("code", [40401, 40403])
def test_lookup_of_an_unknown_schema_is_none(code):
    registry = client(Server((404, {"error_code": code, "message": "no"})))
    assert registry.lookup("o", "{}", SchemaFormat.JSON) is None


def test_check_compatibility_is_verbose_and_a_new_subject_is_compatible():
    server = Server((200, {"is_compatible": False, "messages": ["field n has no default"]}))
    result = client(server).check_compatibility("orders", AVRO, SchemaFormat.AVRO)
    assert not result.compatible and result.messages == ("field n has no default",)
    assert server.requests[0].url.params["verbose"] == "true"
    assert server.requests[0].url.path.endswith("/compatibility/subjects/orders/versions/latest")
    new = client(Server((404, {"error_code": 40401, "message": "no subject"})))
    assert new.check_compatibility("new", AVRO, SchemaFormat.AVRO).compatible


def test_an_unsupported_schema_type_is_a_registry_error():
    with pytest.raises(RegistryError, match="PROTOBUF"):
        client(Server((200, version_body(schema_type="PROTOBUF")))).get("orders", 1)


def test_basic_auth_and_bearer_token_headers():
    server = Server((200, ["a"]))
    client(server, username="svc", password=PASSWORD).subjects()
    assert server.requests[-1].headers["authorization"] == httpx.BasicAuth("svc", PASSWORD)._auth_header
    client(server, bearer_token=TOKEN).subjects()
    assert server.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
    client(server).subjects()
    assert "authorization" not in server.requests[-1].headers


def test_credentials_in_the_url_become_basic_auth_and_leave_the_url():
    server = Server((200, []))
    registry = ConfluentHttpRegistry(
        f"http://svc:{PASSWORD}@registry.test/apis/ccompat/v7/", transport=httpx.MockTransport(server)
    )
    registry.subjects()
    assert registry.url == URL and PASSWORD not in repr(registry)
    assert server.requests[0].headers["authorization"] == httpx.BasicAuth("svc", PASSWORD)._auth_header
    assert PASSWORD not in str(server.requests[0].url)


@pytest.mark.parametrize("options", [dict(username="u", password="p", bearer_token="t"), dict(password="p")])
def test_inconsistent_credentials_are_a_config_error(options):
    with pytest.raises(ConfigError):
        ConfluentHttpRegistry(URL, **options)


def test_unreadable_tls_files_are_a_config_error(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="PEM"):
        ConfluentHttpRegistry("https://registry.test", ca_bundle=bad)


def test_secrets_never_leak_into_reprs_errors_or_logs(caplog, monkeypatch):
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", URL)
    monkeypatch.setenv("SCHEMA_REGISTRY_USERNAME", "svc")
    monkeypatch.setenv("SCHEMA_REGISTRY_PASSWORD", PASSWORD)
    settings = RegistrySettings(_env_file=None)
    caplog.set_level(logging.DEBUG)
    # The registry echoes the secret back (a hostile or careless proxy); we still never show it.
    server = Server(
        httpx.ConnectError(f"refused for svc:{PASSWORD}"),
        (500, {"message": f"bad {PASSWORD}"}),
        (404, {"error_code": 40401, "message": f"no subject (auth {PASSWORD})"}),
    )
    registry = registry_from_settings(
        settings,
        schemas_dir=None,  # type: ignore[arg-type]
        transport=httpx.MockTransport(server),
        sleep=lambda s: None,
    )
    errors: list[Exception] = []
    with pytest.raises(SchemaNotFound) as not_found:
        registry.get("orders", 1)
    errors.append(not_found.value)
    server.answers = [(503, {"message": f"down {PASSWORD}"})]
    with pytest.raises(RegistryUnavailable) as unavailable:
        registry.get("orders", 1)
    errors.append(unavailable.value)
    server.answers = [(409, {"error_code": 409, "message": f"incompatible {PASSWORD}"})]
    with pytest.raises(RegistryRejected) as rejected:
        registry.register("orders", AVRO, SchemaFormat.AVRO)
    errors.append(rejected.value)
    shown = [
        repr(settings),
        str(settings),
        repr(registry),
        str(registry),
        caplog.text,
        *(str(e) for e in errors),
        *(repr(e) for e in errors),
        *(str(r) for e in errors for r in getattr(e, "reasons", [])),
    ]
    assert caplog.records, "the retries were logged"
    for text in shown:
        assert PASSWORD not in text
    bearer = ConfluentHttpRegistry(URL, bearer_token=TOKEN, transport=httpx.MockTransport(server))
    assert TOKEN not in repr(bearer) and "bearer" in repr(bearer)


def test_the_factory_picks_the_local_folder_for_an_empty_url(tmp_path):
    from toolkit.registry import LocalFolderRegistry

    local = registry_from_settings(RegistrySettings(_env_file=None, url=""), tmp_path)
    assert isinstance(local, LocalFolderRegistry) and local.schemas_dir == tmp_path
    remote = registry_from_settings(RegistrySettings(_env_file=None, url=URL), tmp_path)
    assert isinstance(remote, ConfluentHttpRegistry) and remote.url == URL


def test_event_hooks_see_every_attempt():
    seen: list[str] = []
    server = Server(httpx.ConnectError("refused"), (200, []))
    registry = ConfluentHttpRegistry(
        URL,
        transport=httpx.MockTransport(server),
        sleep=lambda s: None,
        event_hooks={"request": [lambda request: seen.append(request.url.path)]},
    )
    registry.subjects()
    assert seen == ["/apis/ccompat/v7/subjects"] * 2


def test_try_register_answers_an_incompatible_schema_with_the_registry_messages():
    message = "Incompatible artifact: orders [AVRO], list of diff types: [n at /fields/1]"
    server = Server((409, {"error_code": 409, "message": message, "messages": ["n: no default"]}))
    answer = client(server).try_register("orders", AVRO, SchemaFormat.AVRO)
    assert answer == Registration(None, (message, "n: no default")) and not answer.accepted
    assert len(server.requests) == 1 and json.loads(server.requests[0].content) == {"schema": AVRO}


def test_try_register_returns_the_schema_id_without_a_lookup():
    server = Server((200, {"id": 42}))
    answer = client(server).try_register("orders", '{"type": "object"}', SchemaFormat.JSON)
    assert answer == Registration(42) and answer.accepted
    (post,) = server.requests
    assert post.method == "POST" and post.url.path.endswith("/subjects/orders/versions")
    assert json.loads(post.content)["schemaType"] == "JSON"


@pytest.mark.parametrize(
    "answer, error, words",
    [
        (
            (422, {"error_code": 42201, "message": "Failed to discover artifact type"}),
            RegistryRejected,
            ["HTTP 422", "42201", "Failed to discover artifact type", "'orders'"],
        ),
        ((200, {"version": 1}), RegistryError, ["no schema id", "'orders'"]),
    ],
)
def test_try_register_raises_for_an_invalid_schema_or_an_answer_without_an_id(answer, error, words):
    with pytest.raises(error) as raised:
        client(Server(answer)).try_register("orders", AVRO, SchemaFormat.AVRO)
    assert raised.value.subject == "orders"
    for word in words:
        assert word in str(raised.value)


def test_try_register_retries_a_server_error_then_is_unavailable():
    server = Server((503, {"message": "Apicurio is restarting"}))
    with pytest.raises(RegistryUnavailable) as raised:
        client(server, max_attempts=3).try_register("orders", AVRO, SchemaFormat.AVRO)
    assert raised.value.attempts == 3 and len(server.requests) == 3 and raised.value.subject == "orders"
    assert raised.value.status == 503  # the last answer's status (None when there was no answer)
    assert "POST /subjects/orders/versions" in str(raised.value) and "HTTP 503 Apicurio is restarting" in str(
        raised.value
    )


def test_set_compatibility_puts_the_mode_on_the_escaped_subject():
    server = Server((200, {"compatibility": "FULL"}))
    client(server).set_compatibility("orders/eu", Compatibility.FULL_TRANSITIVE)
    (put,) = server.requests
    assert put.method == "PUT" and put.url.raw_path.endswith(b"/config/orders%2Feu")
    assert json.loads(put.content) == {"compatibility": "FULL_TRANSITIVE"}


def test_delete_subject_soft_then_permanent():
    soft = Server((200, [1, 2]))
    assert client(soft).delete_subject("orders") == [1, 2]
    assert [(r.method, dict(r.url.params)) for r in soft.requests] == [("DELETE", {})]
    hard = Server((200, [1, 2]), (200, [1, 2]))
    assert client(hard).delete_subject("orders", permanent=True) == [1, 2]
    assert [(r.method, dict(r.url.params)) for r in hard.requests] == [
        ("DELETE", {}),
        ("DELETE", {"permanent": "true"}),
    ]
    assert all(r.url.path.endswith("/subjects/orders") for r in hard.requests)


def test_delete_subject_that_is_already_soft_deleted_or_unknown():
    soft_deleted = (404, {"error_code": 40404, "message": "Subject orders is in soft deleted state."})
    server = Server(soft_deleted, (200, [1]))
    assert client(server).delete_subject("orders", permanent=True) == [1]
    assert len(server.requests) == 2
    with pytest.raises(SchemaNotFound) as raised:
        client(Server(soft_deleted)).delete_subject("orders")
    assert "soft-deleted" in str(raised.value) and raised.value.subject == "orders"
    unknown = Server((404, {"error_code": 40401, "message": "No artifact with ID 'orders'"}))
    with pytest.raises(SchemaNotFound):
        client(unknown).delete_subject("orders", permanent=True)
    assert len(unknown.requests) == 1  # not found is permanent: not retried, no second delete


def test_delete_subject_with_an_answer_that_is_not_version_numbers():
    with pytest.raises(RegistryError) as raised:
        client(Server((200, {"deleted": True}))).delete_subject("orders")
    assert "not a list of version numbers" in str(raised.value) and raised.value.subject == "orders"


def test_get_by_id_reads_the_schema_and_the_subjects_it_is_registered_as():
    server = Server(
        (200, {"schema": AVRO, "references": []}),
        (200, [{"subject": "orders", "version": 2}, {"subject": "orders-value", "version": 1}]),
    )
    found = client(server).get_by_id(42)
    assert (found.schema_id, found.format, found.text) == (42, SchemaFormat.AVRO, AVRO)
    assert found.versions == (("orders", 2), ("orders-value", 1))
    assert [r.url.path.removeprefix("/apis/ccompat/v7") for r in server.requests] == [
        "/schemas/ids/42",
        "/schemas/ids/42/versions",
    ]


def test_get_by_id_of_an_unknown_id_is_not_found():
    server = Server((404, {"error_code": 40403, "message": "No content with ID '7' was found."}))
    with pytest.raises(SchemaNotFound) as info:
        client(server).get_by_id(7)
    assert str(info.value) == (
        "schema id 7 is not in the registry: schema not found (40403: No content with ID '7' was found.)"
    )
    with pytest.raises(SchemaNotFound):
        client(server).get_by_id(-1)
    assert len(server.requests) == 1  # a negative id is not asked for


def test_get_by_id_finds_the_subjects_by_lookup_where_the_versions_endpoint_is_missing():
    server = Server(
        (200, {"schema": AVRO, "schemaType": "JSON"}),
        (404, "Not Found"),
        (200, ["a", "b"]),
        (404, {"error_code": 40403, "message": "no"}),
        (200, {"subject": "b", "version": 3, "id": 42, "schema": AVRO}),
    )
    found = client(server).get_by_id(42)
    assert found.format == SchemaFormat.JSON and found.versions == (("b", 3),)
    assert [r.method for r in server.requests] == ["GET", "GET", "GET", "POST", "POST"]


def test_get_by_id_is_unavailable_while_the_registry_is_down():
    with pytest.raises(RegistryUnavailable):
        client(Server((503, "down"))).get_by_id(1)


def _tls_error(error: Exception) -> httpx.ConnectError:
    """An httpx transport error with the ``ssl`` error as its cause, as httpx raises it."""
    try:
        raise httpx.ConnectError(str(error)) from error
    except httpx.ConnectError as exc:
        return exc


def test_an_untrusted_certificate_is_not_retried_and_names_the_ca_setting():
    import ssl

    server = Server(_tls_error(ssl.SSLCertVerificationError(1, "certificate verify failed")))
    with pytest.raises(RegistryUnavailable) as raised:
        client(server).subjects()
    assert raised.value.attempts == 1 and len(server.requests) == 1
    assert "SCHEMA_REGISTRY_CA_BUNDLE" in str(raised.value) and "TLS handshake" in str(raised.value)


def test_a_refused_client_certificate_names_the_client_certificate_settings():
    import ssl

    refused = ssl.SSLError(1, "tlsv13 alert certificate required")
    refused.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    with pytest.raises(RegistryUnavailable) as raised:
        client(Server(_tls_error(refused))).subjects()
    assert raised.value.attempts == 1 and "SCHEMA_REGISTRY_CLIENT_CERT" in str(raised.value)


@pytest.mark.parametrize("reason", ["TLSV13_ALERT_CERTIFICATE_REQUIRED", "TLSV1_ALERT_UNKNOWN_CA"])
def test_a_refused_client_certificate_names_the_client_certificate_settings_whatever_the_alert(reason):
    import ssl

    refused = ssl.SSLError(1, reason.lower())
    refused.reason = reason
    with pytest.raises(RegistryUnavailable) as raised:
        client(Server(_tls_error(refused))).subjects()
    assert raised.value.attempts == 1 and "SCHEMA_REGISTRY_CLIENT_CERT" in str(raised.value)


def test_a_tls_connection_closed_mid_handshake_is_retried_as_transient():
    import ssl

    server = Server(_tls_error(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")), (200, []))
    assert client(server).subjects() == []
    assert len(server.requests) == 2


# --- a subject name the registry refuses ----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 414, 431])
@pytest.mark.parametrize("lookup", ["get", "latest", "versions"])
def test_a_lookup_refused_for_its_name_while_the_registry_answers_is_a_name_that_cannot_exist(status, lookup):
    from toolkit.errors import SchemaCannotExist

    server = Server((status, {"error_code": status, "message": "Artifact ID is invalid. " + "x" * 500}))
    server.answers.append((404, {"error_code": 40401, "message": "Subject not found"}))  # the probe: answered
    registry = client(server)
    call = {"get": lambda: registry.get("o" * 600, 1), "latest": lambda: registry.latest("o" * 600)}
    call["versions"] = lambda: registry.versions("o" * 600)
    with pytest.raises(SchemaCannotExist) as raised:
        call[lookup]()
    text = str(raised.value)
    assert f"the registry refuses the name (HTTP {status}: Artifact ID is invalid." in text
    assert "(600 characters)" in text and len(text) < 500
    assert server.requests[-1].url.path == "/apis/ccompat/v7/subjects/epistle-probe/versions/latest"
    assert len(server.requests) == 2  # not retried


def test_a_refused_lookup_while_every_request_is_refused_stays_unavailable():
    """A proxy or a wrong URL that answers 400 to everything is the configuration's fault, not the record's:
    the consumer must wait (RegistryUnavailable), never dead-letter."""
    from toolkit.errors import SchemaCannotExist

    registry = client(Server((400, "Bad Request")))
    with pytest.raises(RegistryUnavailable) as raised:
        registry.get("orders", 1)
    assert not isinstance(raised.value, SchemaCannotExist)
    assert raised.value.status == 400


@pytest.mark.parametrize("probe", [(403, {"error_code": 40301, "message": "no permission"}), (404, "Not Found")])
def test_a_refused_lookup_whose_probe_is_refused_or_uncoded_stays_unavailable(probe, caplog):
    """No permission to look other subjects up (RBAC), or a bare 404 (not the API root): nothing shows the
    name is at fault, so the consumer waits; the log says why."""
    from toolkit.errors import SchemaCannotExist

    server = Server((400, {"error_code": 400, "message": "bad name"}))
    server.answers.append(probe)
    with caplog.at_level(logging.WARNING, logger="toolkit.registry.http"), pytest.raises(RegistryUnavailable) as raised:
        client(server).get("orders", 1)
    assert not isinstance(raised.value, SchemaCannotExist)
    assert "refused a lookup of subject 'orders' (HTTP 400), and one of 'epistle-probe' too" in caplog.text


def test_a_name_refused_once_is_remembered_as_one_that_cannot_exist():
    """Through CachedRegistry: the second record naming it costs no request and is still SchemaCannotExist
    (not a plain miss, which would make it wait out the unknown-schema grace)."""
    from toolkit.errors import SchemaCannotExist
    from toolkit.registry import CachedRegistry

    server = Server((414, ""))
    server.answers.append((404, {"error_code": 40401, "message": "Subject not found"}))
    cache = CachedRegistry(client(server), lambda schema: schema)
    for _ in range(2):
        with pytest.raises(SchemaCannotExist):
            cache.resolve("x" * 9_000, 1)
    assert len(server.requests) == 2


def test_a_refused_lookup_while_the_registry_is_down_stays_unavailable():
    from toolkit.errors import SchemaCannotExist

    server = Server((414, ""))
    server.answers.append(httpx.ConnectError("refused"))  # GET /config, every attempt
    with pytest.raises(RegistryUnavailable) as raised:
        client(server).get("orders", 1)
    assert not isinstance(raised.value, SchemaCannotExist)


@pytest.mark.parametrize("name, raw", [(".", b"%2E"), ("..", b"%2E%2E"), ("...", b"..."), ("a/..", b"a%2F..")])
def test_dot_segment_subjects_are_sent_as_the_subjects_they_are(name, raw):
    server = Server((404, {"error_code": 40401, "message": "Subject not found"}))
    with pytest.raises(SchemaNotFound):
        client(server).get(name, 1)
    assert server.requests[0].url.raw_path == b"/apis/ccompat/v7/subjects/" + raw + b"/versions/1"


def test_a_lookup_answer_without_the_schema_is_the_schema_looked_up():
    # Confluent's POST /subjects/{subject} answer repeats the schema; one that does not is read with ours.
    server = Server((200, {"subject": "orders", "version": 3, "id": 7}))
    found = client(server).lookup("orders", AVRO, SchemaFormat.AVRO)
    assert found is not None and (found.version, found.schema_id, found.text) == (3, 7, AVRO)
    with pytest.raises(RegistryUnavailable, match="not a subject version"):
        client(Server((200, {"subject": "orders", "id": 7}))).lookup("orders", AVRO, SchemaFormat.AVRO)


def test_get_by_id_answers_of_another_shape_are_a_misconfiguration_or_skipped():
    # references that are not a list of objects: not a schema (wait, as for a proxy's page)
    with pytest.raises(RegistryUnavailable, match="not a schema"):
        client(Server((200, {"schema": AVRO, "references": "address"}))).get_by_id(5)
    # a subject/version pair that is not one is left out, the others kept
    pairs = [
        {"subject": "orders", "version": "x"},
        {"subject": 7, "version": 1},
        "orders",
        {"subject": "orders", "version": 2},
    ]
    found = client(Server((200, {"schema": AVRO}), (200, pairs))).get_by_id(5)
    assert found.versions == (("orders", 2),)
