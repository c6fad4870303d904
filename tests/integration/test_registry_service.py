"""The registry our scripts start speaks the Confluent Schema Registry API (Apicurio's ccompat/v7)."""

from __future__ import annotations

import json

import httpx

CONTENT_TYPE = {"Content-Type": "application/vnd.schemaregistry.v1+json"}

ORDER_JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"orderId": {"type": "string", "format": "uuid"}, "total": {"type": "number"}},
    "required": ["orderId"],
}
SHIPMENT_AVRO = {
    "type": "record",
    "name": "Shipment",
    "namespace": "test.shipments",
    "fields": [{"name": "id", "type": "string"}, {"name": "weightKg", "type": "double"}],
}


def _register(client: httpx.Client, subject: str, schema: dict, schema_type: str | None) -> int:
    payload = {"schema": json.dumps(schema)}
    if schema_type:
        payload["schemaType"] = schema_type
    response = client.post(f"/subjects/{subject}/versions", json=payload, headers=CONTENT_TYPE)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_register_and_read_back_json_schema_and_avro(registry_url, unique_name):
    with httpx.Client(base_url=registry_url, timeout=10) as client:
        json_subject, avro_subject = unique_name("orders"), unique_name("shipments")
        _register(client, json_subject, ORDER_JSON_SCHEMA, "JSON")
        _register(client, avro_subject, SHIPMENT_AVRO, None)  # schemaType omitted means AVRO

        got = client.get(f"/subjects/{json_subject}/versions/1").json()
        assert got["subject"] == json_subject and got["version"] == 1
        assert got["schemaType"] == "JSON"
        assert json.loads(got["schema"]) == ORDER_JSON_SCHEMA

        got = client.get(f"/subjects/{avro_subject}/versions/1").json()
        assert got.get("schemaType", "AVRO") == "AVRO"
        assert json.loads(got["schema"]) == SHIPMENT_AVRO

        assert client.get(f"/subjects/{avro_subject}/versions").json() == [1]


def test_unknown_subject_and_version_use_confluent_error_codes(registry_url, unique_name):
    with httpx.Client(base_url=registry_url, timeout=10) as client:
        subject = unique_name("missing")
        response = client.get(f"/subjects/{subject}/versions/1")
        assert response.status_code == 404 and response.json()["error_code"] == 40401
        _register(client, subject, SHIPMENT_AVRO, None)
        response = client.get(f"/subjects/{subject}/versions/7")
        assert response.status_code == 404 and response.json()["error_code"] == 40402


def test_global_compatibility_is_backward(registry_url):
    with httpx.Client(base_url=registry_url, timeout=10) as client:
        assert client.get("/config").json()["compatibilityLevel"] == "BACKWARD"
