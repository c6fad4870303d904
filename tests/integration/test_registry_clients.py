"""The registry clients against the real Apicurio (ccompat/v7) our scripts run; unique subjects per test.

Requests are counted on the real server through the client's httpx ``request`` event hook.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.errors import MessageError, RegistryRejected, RegistryUnavailable, SchemaNotFound
from toolkit.layout import Compatibility, SchemaFormat, load_schemas
from toolkit.registry import CachedRegistry, ConfluentHttpRegistry, LocalFolderRegistry, canonical_schema
from toolkit.registry.commands import register_schemas

ROOT = Path(__file__).resolve().parents[2]
# Closed content model: adding an optional property is then BACKWARD compatible (in Apicurio too; with an
# open model it is "OBJECT_TYPE_PROPERTY_SCHEMAS_NARROWED", as in Confluent).
ORDER_V1 = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "additionalProperties": False,
    "properties": {"orderId": {"type": "string"}},
    "required": ["orderId"],
}
ORDER_V2 = {**ORDER_V1, "properties": {"orderId": {"type": "string"}, "note": {"type": "string"}}}
SHIPMENT_V1 = {
    "type": "record",
    "name": "Shipment",
    "namespace": "test.shipments",
    "fields": [{"name": "id", "type": "string"}],
}
SHIPMENT_V2 = {
    **SHIPMENT_V1,
    "fields": [*SHIPMENT_V1["fields"], {"name": "weightKg", "type": "double", "default": 0.0}],
}
SHIPMENT_BREAKING = {**SHIPMENT_V1, "fields": [*SHIPMENT_V1["fields"], {"name": "carrier", "type": "string"}]}


class RequestCounter:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, request) -> None:
        self.paths.append(f"{request.method} {request.url.path}")

    def __len__(self) -> int:
        return len(self.paths)


@pytest.fixture
def counter() -> RequestCounter:
    return RequestCounter()


@pytest.fixture
def http(registry_url, counter):
    with ConfluentHttpRegistry(
        registry_url, max_attempts=2, backoff_initial_s=0.05, event_hooks={"request": [counter]}
    ) as registry:
        yield registry


def write_folder(root: Path, subjects: dict[str, list[tuple[str, dict]]]) -> Path:
    for name, versions in subjects.items():
        (root / name).mkdir(parents=True)
        for number, (suffix, document) in enumerate(versions, start=1):
            (root / name / f"{number}{suffix}").write_text(json.dumps(document, indent=2))
    return root


@pytest.fixture
def folder(tmp_path, unique_name):
    orders, shipments = unique_name("orders"), unique_name("shipments")
    root = write_folder(
        tmp_path / "schemas",
        {
            orders: [(".json", ORDER_V1), (".json", ORDER_V2)],
            shipments: [(".avsc", SHIPMENT_V1), (".avsc", SHIPMENT_V2)],
        },
    )
    return root, orders, shipments


def test_lookup_by_version_and_latest_for_json_schema_and_avro(http, folder):
    root, orders, shipments = folder
    steps = register_schemas(http, load_schemas(root))
    assert [s.action for s in steps if s.version] == ["registered"] * 4, [str(s) for s in steps]
    for subject, fmt, versions in (
        (orders, SchemaFormat.JSON, [ORDER_V1, ORDER_V2]),
        (shipments, SchemaFormat.AVRO, [SHIPMENT_V1, SHIPMENT_V2]),
    ):
        assert http.versions(subject) == [1, 2]
        for number, document in enumerate(versions, start=1):
            schema = http.get(subject, number)
            assert (schema.subject, schema.version, schema.format) == (subject, number, fmt)
            assert json.loads(schema.text) == document and schema.schema_id is not None
        latest = http.latest(subject)
        assert latest.version == 2 and json.loads(latest.text) == versions[1]


def test_unknown_subject_and_version_are_not_found_without_retries(http, folder, counter):
    _, orders, shipments = folder
    http.register(shipments, json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)
    counter.paths.clear()
    with pytest.raises(SchemaNotFound) as raised:
        http.get(orders, 1)  # never registered
    assert raised.value.subject == orders and "40401" in str(raised.value)
    with pytest.raises(SchemaNotFound) as raised:
        http.get(shipments, 7)
    assert raised.value.version == 7 and "40402" in str(raised.value)
    with pytest.raises(SchemaNotFound):
        http.latest(orders)
    with pytest.raises(SchemaNotFound):
        http.versions(orders)
    assert len(counter) == 4  # one request each: not found is permanent


def test_names_from_records_that_the_registry_cannot_take_as_given(http, counter):
    """Subject names come from records (schemaName): "." and ".." are sent as the subjects they are (not as
    dot segments that would take the request to another path, whose bare 404 reads as a misconfigured
    URL: a partition waiting for ever), and names the real Apicurio refuses (over 512 characters: 400; longer
    than a URL may be: 414; a newline: 400) are names that cannot exist, not an unavailable registry."""
    from toolkit.errors import SchemaCannotExist

    for name in (".", "..", "./x", "a/../b"):
        counter.paths.clear()
        with pytest.raises(SchemaNotFound) as raised:
            http.get(name, 1)
        assert not isinstance(raised.value, SchemaCannotExist) and "40401" in str(raised.value), name
        assert len(counter) == 1
    for name, status in (("n" * 600, 400), ("n" * 6_000, 414), ("orders\n", 400)):
        counter.paths.clear()
        with pytest.raises(SchemaCannotExist) as refused:
            http.latest(name)
        assert f"the registry refuses the name (HTTP {status}" in str(refused.value)
        assert counter.paths[1:] == ["GET /apis/ccompat/v7/subjects/epistle-probe/versions/latest"]


def test_registering_twice_is_a_no_op(http, folder, counter):
    root, orders, shipments = folder
    register_schemas(http, load_schemas(root))
    first = http.get(shipments, 2)
    counter.paths.clear()
    again = register_schemas(http, load_schemas(root))
    assert [s.action for s in again if s.version] == ["unchanged"] * 4
    assert not [p for p in counter.paths if p.startswith("POST")]  # no registration was even attempted
    assert http.versions(orders) == [1, 2] and http.versions(shipments) == [1, 2]
    # The client's register of an identical (re-indented) schema answers the existing version.
    same = http.register(shipments, json.dumps(SHIPMENT_V2), SchemaFormat.AVRO)
    assert (same.version, same.schema_id) == (2, first.schema_id)
    assert http.versions(shipments) == [1, 2]


def test_an_incompatible_version_is_refused_with_the_registry_reason(http, tmp_path, unique_name):
    subject = unique_name("shipments")
    root = write_folder(tmp_path / "schemas", {subject: [(".avsc", SHIPMENT_V1), (".avsc", SHIPMENT_BREAKING)]})
    steps = register_schemas(http, load_schemas(root))
    assert [(s.version, s.action) for s in steps] == [(1, "registered"), (None, "compatibility"), (2, "refused")]
    assert "Incompatible" in steps[-1].detail and "carrier" in steps[-1].detail  # Apicurio's own words
    assert http.versions(subject) == [1]
    with pytest.raises(RegistryRejected) as raised:
        http.register(subject, json.dumps(SHIPMENT_BREAKING), SchemaFormat.AVRO)
    assert raised.value.reasons and raised.value.subject == subject
    # Apicurio 3.0.9 gives no messages on the compatibility endpoint, even with verbose=true.
    verdict = http.check_compatibility(subject, json.dumps(SHIPMENT_BREAKING), SchemaFormat.AVRO)
    assert not verdict.compatible
    assert http.check_compatibility(subject, json.dumps(SHIPMENT_V2), SchemaFormat.AVRO).compatible


def test_a_cached_lookup_makes_no_http_request(http, folder, counter):
    root, orders, shipments = folder
    register_schemas(http, load_schemas(root))
    cache = CachedRegistry(http)  # compiles with toolkit.validation.compile_schema
    counter.paths.clear()
    first = cache.resolve(orders, 2)
    latest = cache.resolve(shipments, "latest")
    assert len(counter) == 2
    for _ in range(50):
        assert cache.resolve(orders, 2) is first
        assert cache.resolve(shipments, "latest") is latest
        assert cache.resolve(shipments, 2) is latest
    assert len(counter) == 2
    with pytest.raises(SchemaNotFound):
        cache.resolve(orders, 9)
    with pytest.raises(SchemaNotFound):
        cache.resolve(orders, 9)  # remembered for not_found_ttl_s
    assert len(counter) == 3


def _copy_with_unique_names(source: Path, target: Path, unique_name) -> dict[str, str]:
    names = {}
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        names[folder.name] = unique_name(folder.name)
        shutil.copytree(folder, target / names[folder.name])
    return names


def _same_lookups(local, remote, subjects: dict[str, str], samples_root: Path) -> int:
    """Assert both backends answer alike (and decode the golden samples alike); return samples compared."""
    compared = 0
    local_cache, remote_cache = CachedRegistry(local), CachedRegistry(remote)
    for subject in subjects.values():
        assert local.versions(subject) == remote.versions(subject)
        for version in [*local.versions(subject), "latest"]:
            (mine, mine_compiled), (theirs, theirs_compiled) = (
                local_cache.resolve(subject, version),
                remote_cache.resolve(subject, version),
            )
            assert (mine.subject, mine.version) == (theirs.subject, theirs.version)
            assert mine.format == theirs.format
            assert canonical_schema(mine.text) == canonical_schema(theirs.text)
            for sample in sorted((samples_root / subject / "samples" / str(mine.version)).rglob("*.json")):
                body = json.loads(sample.read_text())
                outcomes = []
                for compiled in (mine_compiled, theirs_compiled):
                    try:
                        outcomes.append(("ok", compiled.decode(body)))
                    except MessageError as exc:
                        outcomes.append(("invalid", exc.stage))
                assert outcomes[0] == outcomes[1], sample
                compared += 1
    for unknown in ((next(iter(subjects.values())), 99), ("no-such-subject-anywhere", 1)):
        for backend in (local, remote):
            with pytest.raises(SchemaNotFound):
                backend.get(*unknown)
    return compared


def test_local_folder_and_http_answer_alike_on_tmp_schemas(http, folder):
    root, orders, shipments = folder
    register_schemas(http, load_schemas(root))
    _same_lookups(LocalFolderRegistry(root), http, {orders: orders, shipments: shipments}, root)


def test_register_and_verify_commands(registry_url, folder, monkeypatch):
    root, orders, shipments = folder
    monkeypatch.delenv("SCHEMA_REGISTRY_URL", raising=False)
    runner = CliRunner()
    args = ["--schemas", str(root), "--registry-url", registry_url]
    dry = runner.invoke(app, ["register", *args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"{orders} v2: would register" in dry.output
    verify = runner.invoke(app, ["verify", *args])
    assert verify.exit_code == 1 and f"{orders}: subject missing in the registry" in verify.output
    done = runner.invoke(app, ["register", *args])
    assert done.exit_code == 0 and "registered 4, unchanged 0" in done.output, done.output
    again = runner.invoke(app, ["register", *args])
    assert again.exit_code == 0 and "registered 0, unchanged 4" in again.output
    assert runner.invoke(app, ["verify", *args]).exit_code == 0
    (root / shipments / "2.avsc").write_text(json.dumps({**SHIPMENT_V2, "doc": "edited after publishing"}))
    (root / orders / "3.json").write_text(json.dumps({**ORDER_V2, "title": "not registered yet"}))
    drift = runner.invoke(app, ["verify", *args])
    assert drift.exit_code == 1
    assert f"{shipments} v2: content differs from 2.avsc" in drift.output
    assert f"{orders} v3: missing in the registry" in drift.output


def test_credentials_never_leak(registry_url, unique_name, caplog, monkeypatch):
    password = "integration-s3cret-pw"
    monkeypatch.setenv("SCHEMA_REGISTRY_PASSWORD", password)
    from toolkit.settings import RegistrySettings

    settings = RegistrySettings(_env_file=None, url=registry_url, username="svc")
    assert settings.password is not None and settings.password.get_secret_value() == password  # it is in use
    caplog.set_level(logging.DEBUG)
    shown: list[str] = [repr(settings), str(settings)]
    with ConfluentHttpRegistry.from_settings(settings) as registry:  # Apicurio ignores the credentials
        shown.append(repr(registry))
        with pytest.raises(SchemaNotFound) as raised:
            registry.get(unique_name("missing"), 1)
        shown += [str(raised.value), repr(raised.value)]
    dead = settings.model_copy(
        update={"url": "http://127.0.0.1:9/apis/ccompat/v7", "max_attempts": 2, "backoff_initial_s": 0.01}
    )
    with ConfluentHttpRegistry.from_settings(dead) as registry:
        with pytest.raises(RegistryUnavailable) as unavailable:
            registry.get("orders", 1)
        shown += [str(unavailable.value), repr(unavailable.value), repr(registry)]
    shown.append(caplog.text)
    assert unavailable.value.attempts == 2
    for text in shown:
        assert password not in text


def _listed(registry_url: str, subject: str, *, deleted: bool) -> bool:
    """Whether ``GET /subjects`` lists the subject (``deleted``: soft-deleted ones too), asked without our client."""
    answer = httpx.get(f"{registry_url}/subjects", params={"deleted": "true"} if deleted else None, timeout=10)
    answer.raise_for_status()
    return subject in answer.json()


def test_set_compatibility_governs_the_next_registration(http, unique_name):
    # Apicurio reads a subject mode of NONE as "no subject rule" (its global BACKWARD then applies), so the
    # modes used here are FORWARD and BACKWARD. Each added field has no default: backward-incompatible,
    # forward-compatible.
    subject = unique_name("shipments")
    http.register(subject, json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)
    http.set_compatibility(subject, Compatibility.FORWARD)  # the global BACKWARD would refuse this one
    assert http.register(subject, json.dumps(SHIPMENT_BREAKING), SchemaFormat.AVRO).version == 2
    http.set_compatibility(subject, Compatibility.BACKWARD)  # FORWARD, still in force otherwise, accepts it
    depot = {**SHIPMENT_BREAKING, "fields": [*SHIPMENT_BREAKING["fields"], {"name": "depot", "type": "string"}]}
    with pytest.raises(RegistryRejected) as raised:
        http.register(subject, json.dumps(depot), SchemaFormat.AVRO)
    assert raised.value.subject == subject and "409" in str(raised.value) and "depot" in str(raised.value)
    assert http.versions(subject) == [1, 2]
    http.set_compatibility(subject, Compatibility.FORWARD)
    assert http.register(subject, json.dumps(depot), SchemaFormat.AVRO).version == 3


def test_try_register_answers_an_incompatible_schema_with_the_registry_reasons(http, unique_name):
    subject = unique_name("shipments")
    first = http.try_register(subject, json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)
    assert first.accepted and first.schema_id == http.get(subject, 1).schema_id
    again = http.try_register(subject, json.dumps(SHIPMENT_V1, indent=2), SchemaFormat.AVRO)
    assert again.schema_id == first.schema_id and http.versions(subject) == [1]
    http.set_compatibility(subject, Compatibility.BACKWARD)
    refused = http.try_register(subject, json.dumps(SHIPMENT_BREAKING), SchemaFormat.AVRO)
    assert not refused.accepted and refused.schema_id is None
    assert any("Incompatible" in reason and "carrier" in reason for reason in refused.reasons), refused.reasons
    assert http.versions(subject) == [1]
    added = http.try_register(subject, json.dumps(SHIPMENT_V2), SchemaFormat.AVRO)
    assert added.accepted and added.schema_id == http.get(subject, 2).schema_id != first.schema_id
    with pytest.raises(RegistryRejected) as invalid:  # 422 is an error, not a verdict
        http.try_register(subject, json.dumps({"type": "recordx"}), SchemaFormat.AVRO)
    assert invalid.value.subject == subject and "422" in str(invalid.value) and invalid.value.reasons


def test_delete_subject_soft_then_permanent(http, registry_url, unique_name, counter):
    soft, hard = unique_name("soft"), unique_name("hard")
    for subject in (soft, hard):
        http.register(subject, json.dumps(SHIPMENT_V1), SchemaFormat.AVRO)
        http.register(subject, json.dumps(SHIPMENT_V2), SchemaFormat.AVRO)
    assert http.delete_subject(soft) == [1, 2]
    for read in (lambda: http.versions(soft), lambda: http.get(soft, 1), lambda: http.latest(soft)):
        with pytest.raises(SchemaNotFound):
            read()
    assert not _listed(registry_url, soft, deleted=False) and _listed(registry_url, soft, deleted=True)
    with pytest.raises(SchemaNotFound) as twice:
        http.delete_subject(soft)
    assert "40404" in str(twice.value)
    assert http.delete_subject(soft, permanent=True) == [1, 2]  # already soft-deleted: straight on
    assert not _listed(registry_url, soft, deleted=True)

    counter.paths.clear()
    assert http.delete_subject(hard, permanent=True) == [1, 2]
    assert [p.split(" ")[0] for p in counter.paths] == ["DELETE", "DELETE"]
    with pytest.raises(SchemaNotFound):
        http.versions(hard)
    assert not _listed(registry_url, hard, deleted=True)
    with pytest.raises(SchemaNotFound) as gone:
        http.delete_subject(hard, permanent=True)
    assert gone.value.subject == hard and "40401" in str(gone.value)
