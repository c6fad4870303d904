"""Schema references against the real Apicurio (Confluent API, ccompat/v7) and confluent-kafka's serializers.

The folder is tests/fixtures/references/schemas (parcel uses address's Avro record Address, invoice's
``$ref: "money.json"`` is money's JSON Schema), copied with unique subject names because the registry is
shared. What Apicurio's ccompat API does with references, as met here:

- it stores ``references`` as sent and answers them in ``GET /subjects/{s}/versions/{v}``, in
  ``GET /schemas/ids/{id}`` and in the lookup ``POST /subjects/{s}`` (which must carry the same references to
  find the version);
- an Avro schema naming a type it does not define, registered without its references, is refused with HTTP
  422 "Failed to discover artifact type from content" (it cannot even tell the format);
- a referenced subject cannot be deleted while a version references it, not even permanently (HTTP 422,
  error code 42206 "There are subjects referencing ..."): the referencing subjects are deleted first here.
"""

from __future__ import annotations

import re
import shutil
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import DeserializingConsumer, SerializingProducer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry import SchemaReference as ConfluentReference
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import StringSerializer

from toolkit.codegen import load_model_index, run_codegen
from toolkit.consumer.handlers import HandlerRegistry
from toolkit.consumer.pipeline import Pipeline
from toolkit.consumer.testing import read_topic
from toolkit.errors import RegistryRejected
from toolkit.layout import SchemaFormat, load_schemas
from toolkit.producer import EnvelopeProducer
from toolkit.registry import CachedRegistry, ConfluentHttpRegistry
from toolkit.registry.commands import register_schemas, verify_schemas

FIXTURE = Path(__file__).parents[1] / "fixtures" / "references" / "schemas"
NAMES = ("address", "parcel", "money", "invoice")

PARCEL = {
    "parcelId": "p-1",
    "sender": {"street": "Main St 1", "city": "Utrecht", "country": "NL"},
    "recipient": {"street": "Rue 2", "city": "Paris", "country": "FR"},
    "origin": "DE",
}
INVOICE = {
    "invoiceId": "i-1",
    "total": {"amount": "12.50", "currency": "EUR"},
    "lines": [{"sku": "a", "price": {"amount": "12.50", "currency": "EUR"}}],
}


class Folder:
    """The fixture under unique subject names (folder = registry subject), registered by ``epistle register``,
    with its generated models."""

    def __init__(self, root: Path, url: str) -> None:
        self.uid = uuid.uuid4().hex[:8]
        self.names = {name: f"refs-{name}-{self.uid}" for name in NAMES}
        self.schemas = root / "schemas"
        for name, unique in self.names.items():
            shutil.copytree(FIXTURE / name, self.schemas / unique)
            toml = self.schemas / unique / "subject.toml"
            text = re.sub(r'subject = "(\w+)"', lambda m: f'subject = "{self.names[m.group(1)]}"', toml.read_text())
            toml.write_text(text)
        self.subjects = load_schemas(self.schemas)
        self.http = ConfluentHttpRegistry(url)
        self.package = f"refs_models_{self.uid}"
        run_codegen(self.schemas, root / self.package, workers=1)
        sys.path.insert(0, str(root))
        self.models = load_model_index(self.package)
        self.root = root

    def model(self, name: str):
        return self.models.get(self.names[name], 1)

    def close(self) -> None:
        sys.path.remove(str(self.root))
        for name in ("parcel", "invoice", "address", "money"):  # the referencing subjects first
            try:
                self.http.delete_subject(self.names[name], permanent=True)
            except Exception:  # noqa: BLE001 - cleanup of a shared registry: best effort
                pass
        self.http.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, registry_url):
    made = Folder(tmp_path_factory.mktemp("references"), registry_url)
    steps = register_schemas(made.http, made.subjects)
    assert not any(step.failed for step in steps), [str(step) for step in steps]
    yield made
    made.close()


@pytest.fixture
def confluent_client(registry_url) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry_url})


def serialize(kafka_bootstrap: str, topic: str, serializer, values: list) -> None:
    producer = SerializingProducer(
        {"bootstrap.servers": kafka_bootstrap, "key.serializer": StringSerializer(), "value.serializer": serializer}
    )
    for index, value in enumerate(values):
        producer.produce(topic, key=str(index), value=value)
    assert producer.flush(30) == 0


def read_with_pipeline(folder: Folder, kafka_bootstrap: str, topic: str, expected: int, strategy=None) -> list:
    router = HandlerRegistry()
    router.register(topic, lambda message: True)
    pipeline = Pipeline(
        CachedRegistry(ConfluentHttpRegistry(folder.http.url)),
        router,
        folder.models,
        subject_strategy=strategy or (lambda ctx: ctx.schema_name),
        value_formats={topic: "confluent"},
    )
    return [
        pipeline.prepare(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=record.headers,
            timestamp=record.timestamp,
        ).message
        for record in read_topic(kafka_bootstrap, topic, expected=expected)
    ]


def read_with_confluent(kafka_bootstrap: str, topic: str, deserializer, expected: int) -> list:
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "value.deserializer": deserializer,
        }
    )
    consumer.subscribe([topic])
    received = []
    try:
        for _ in range(300):
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                received.append(msg.value())
            if len(received) == expected:
                break
    finally:
        consumer.close()
    return received


def test_register_sends_the_references_and_reads_them_back(folder: Folder) -> None:
    parcel, address = folder.names["parcel"], folder.names["address"]
    held = folder.http.get(parcel, 1)
    assert held.references == ({"name": "com.epistle.common.Address", "subject": address, "version": 1},)
    assert folder.http.get_by_id(held.schema_id).references == held.references
    invoice = folder.http.get(folder.names["invoice"], 1)
    assert invoice.format is SchemaFormat.JSON
    assert invoice.references == ({"name": "money.json", "subject": folder.names["money"], "version": 1},)
    assert verify_schemas(folder.http, folder.subjects).drifts == []
    assert {step.action for step in register_schemas(folder.http, folder.subjects)} == {"unchanged", "compatibility"}
    # Apicurio: without its references the schema is not even recognised as Avro
    with pytest.raises(RegistryRejected, match="Failed to discover artifact type"):
        folder.http.register(parcel, held.text, SchemaFormat.AVRO)
    # the consumer side resolves them from the registry
    _, compiled = CachedRegistry(folder.http).resolve(parcel, 1)
    assert compiled.decode({**PARCEL, "recipient": {"com.epistle.common.Address": PARCEL["recipient"]}})


def test_our_avro_references_serve_confluents_serializer_and_deserializer(
    folder: Folder, kafka_bootstrap, make_topic, confluent_client
) -> None:
    topic = make_topic("refs-avro")
    parcel = folder.names["parcel"]
    serializer = AvroSerializer(
        confluent_client,
        None,
        conf={"auto.register.schemas": False, "use.latest.version": True, "subject.name.strategy": lambda *_: parcel},
    )
    serialize(kafka_bootstrap, topic, serializer, [PARCEL])
    (message,) = read_with_pipeline(folder, kafka_bootstrap, topic, 1)
    model, address = folder.model("parcel"), folder.model("address")
    assert type(message.body) is model and type(message.body.sender) is address  # the one shared class
    assert (message.subject, message.header.version) == (parcel, 1)
    assert message.body.model_dump(by_alias=True, mode="json") == PARCEL
    # and our producer's records are read by confluent's deserializer, references resolved
    with EnvelopeProducer(
        kafka_bootstrap, registry=CachedRegistry(folder.http), models=folder.models, confluent_topics=[topic]
    ) as producer:
        producer.send(topic, message.body).result(30)
    received = read_with_confluent(kafka_bootstrap, topic, AvroDeserializer(confluent_client), 2)
    assert received == [PARCEL, PARCEL]


def test_our_json_schema_references_serve_confluents_serializer_and_deserializer(
    folder: Folder, kafka_bootstrap, make_topic, confluent_client
) -> None:
    topic = make_topic("refs-json")
    invoice = folder.names["invoice"]
    serializer = JSONSerializer(
        None,
        confluent_client,
        conf={"auto.register.schemas": False, "use.latest.version": True, "subject.name.strategy": lambda *_: invoice},
    )
    serialize(kafka_bootstrap, topic, serializer, [INVOICE])
    (message,) = read_with_pipeline(folder, kafka_bootstrap, topic, 1)
    assert type(message.body) is folder.model("invoice") and type(message.body.total) is folder.model("money")
    assert message.body.model_dump(by_alias=True, mode="json") == INVOICE
    received = read_with_confluent(
        kafka_bootstrap, topic, JSONDeserializer(None, schema_registry_client=confluent_client), 1
    )
    assert received == [INVOICE]


def test_references_registered_by_confluents_client_are_resolved_by_our_pipeline(
    folder: Folder, kafka_bootstrap, make_topic, confluent_client, unique_name
) -> None:
    """The reverse: confluent's SchemaRegistryClient registers the referenced schemas and its serializers
    register the referencing ones with their references; our pipeline reads the records into our models."""
    subjects = {name: unique_name(f"c-{name}") for name in NAMES}
    texts = {
        name: (FIXTURE / name / f"1.{'avsc' if name in ('address', 'parcel') else 'json'}").read_text()
        for name in NAMES
    }
    try:
        confluent_client.register_schema(subjects["address"], Schema(texts["address"], "AVRO"))
        confluent_client.register_schema(subjects["money"], Schema(texts["money"], "JSON"))
        avro_topic, json_topic = make_topic("c-refs-avro"), make_topic("c-refs-json")
        parcel_schema = Schema(
            texts["parcel"], "AVRO", [ConfluentReference("com.epistle.common.Address", subjects["address"], 1)]
        )
        invoice_schema = Schema(texts["invoice"], "JSON", [ConfluentReference("money.json", subjects["money"], 1)])
        by_subject = {
            "subject.name.strategy": lambda ctx, name: subjects["parcel" if "Parcel" in str(name) else "invoice"]
        }
        serialize(
            kafka_bootstrap, avro_topic, AvroSerializer(confluent_client, parcel_schema, conf=by_subject), [PARCEL]
        )
        serialize(
            kafka_bootstrap, json_topic, JSONSerializer(invoice_schema, confluent_client, conf=by_subject), [INVOICE]
        )
        registered = ConfluentHttpRegistry(folder.http.url).get(subjects["parcel"], 1)
        assert registered.references == (
            {"name": "com.epistle.common.Address", "subject": subjects["address"], "version": 1},
        )

        ours = {folder.names[name]: subjects[name] for name in NAMES}

        def strategy(ctx):  # our schemaNames (the folders) are registered under confluent's subjects here
            return ours.get(ctx.schema_name, ctx.schema_name)

        (parcel,) = read_with_pipeline(folder, kafka_bootstrap, avro_topic, 1, strategy)
        assert type(parcel.body) is folder.model("parcel") and type(parcel.body.recipient) is folder.model("address")
        assert parcel.header.schema_name == folder.names["parcel"] and parcel.subject == subjects["parcel"]
        assert parcel.body.model_dump(by_alias=True, mode="json") == PARCEL
        (invoice,) = read_with_pipeline(folder, kafka_bootstrap, json_topic, 1, strategy)
        assert type(invoice.body) is folder.model("invoice") and type(invoice.body.lines[0].price) is folder.model(
            "money"
        )
        assert invoice.body.model_dump(by_alias=True, mode="json") == INVOICE
    finally:
        http = ConfluentHttpRegistry(folder.http.url)
        for name in ("parcel", "invoice", "address", "money"):
            try:
                http.delete_subject(subjects[name], permanent=True)
            except Exception:  # noqa: BLE001 - cleanup of a shared registry: best effort
                pass
        http.close()
