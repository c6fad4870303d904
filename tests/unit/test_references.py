"""Schema references in schemas/: declared in subject.toml, resolved by the layout and by the validator; a bad
reference is an error naming the file, the field and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from toolkit.errors import MessageError, SchemaFileError
from toolkit.layout import load_schemas
from toolkit.references import SchemaReference, bundle_json, expand_avro, resolve
from toolkit.registry.cache import CachedRegistry
from toolkit.registry.local import LocalFolderRegistry

FIXTURE = Path(__file__).parents[1] / "fixtures" / "references" / "schemas"

PARCEL = {
    "parcelId": "p-1",
    "sender": {"street": "Main St 1", "city": "Utrecht", "country": "NL"},
    "recipient": {"com.epistle.common.Address": {"street": "Rue 2", "city": "Paris", "country": "FR"}},
    "origin": "NL",
}
INVOICE = {
    "invoiceId": "i-1",
    "total": {"amount": "12.50", "currency": "EUR"},
    "lines": [{"sku": "a", "price": {"amount": "12.50", "currency": "EUR"}}],
}


@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    """A writable copy of the fixture folder."""
    root = tmp_path / "schemas"
    shutil.copytree(FIXTURE, root)
    return root


def write_toml(folder: Path, text: str) -> None:
    (folder / "subject.toml").write_text(text, encoding="utf-8")


def error_of(root: Path) -> SchemaFileError:
    with pytest.raises(SchemaFileError) as info:
        load_schemas(root)
    return info.value


def test_the_layout_reads_the_references_per_version():
    subjects = load_schemas(FIXTURE)
    assert subjects["parcel"].version(1).references == (SchemaReference("com.epistle.common.Address", "address", 1),)
    assert subjects["invoice"].version(1).references == (SchemaReference("money.json", "money", 1),)
    assert subjects["address"].version(1).references == ()
    resolved = resolve(subjects["parcel"].version(1), subjects)
    assert [(name, f.subject, f.version) for name, f in resolved] == [("com.epistle.common.Address", "address", 1)]


def test_the_local_registry_answers_the_references_as_a_registry_does():
    schema = LocalFolderRegistry(FIXTURE).get("invoice", 1)
    assert schema.references == ({"name": "money.json", "subject": "money", "version": 1},)


def test_an_avro_schema_is_validated_with_the_named_types_it_references():
    _, compiled = CachedRegistry(LocalFolderRegistry(FIXTURE)).resolve("parcel", 1)
    decoded = compiled.decode(PARCEL)
    assert decoded["recipient"] == {"street": "Rue 2", "city": "Paris", "country": "FR"}
    with pytest.raises(MessageError) as info:
        compiled.decode({**PARCEL, "origin": "XX"})
    assert info.value.stage == "validation" and "$.origin" in info.value.reason


def test_a_json_schema_is_validated_with_the_schemas_its_refs_point_to():
    _, compiled = CachedRegistry(LocalFolderRegistry(FIXTURE)).resolve("invoice", 1)
    assert compiled.decode(INVOICE) == INVOICE
    bad = {**INVOICE, "lines": [{"sku": "a", "price": {"amount": "1", "currency": "GBP"}}]}
    with pytest.raises(MessageError) as info:
        compiled.decode(bad)
    assert "$.lines[0].price.currency" in info.value.reason
    # the fast validator resolves the references too: it is used, and agrees
    assert compiled.fast is not None and compiled.fast.is_valid(INVOICE) and not compiled.fast.is_valid(bad)


def test_expand_avro_defines_each_referenced_type_once_at_its_first_use():
    subjects = load_schemas(FIXTURE)
    parcel = subjects["parcel"].version(1)
    expanded = expand_avro(parcel.document, tuple((n, f.document) for n, f in resolve(parcel, subjects)))
    text = json.dumps(expanded)
    assert text.count('"com.epistle.common.Address"') == 2  # defined in sender, named in recipient
    assert expanded["fields"][1]["type"]["name"] == "com.epistle.common.Address"
    assert expanded["fields"][3]["type"] == "com.epistle.common.Country"  # defined inside Address


def test_bundle_json_points_the_refs_into_defs():
    subjects = load_schemas(FIXTURE)
    invoice = subjects["invoice"].version(1)
    bundled = bundle_json(invoice.document, (("money.json", subjects["money"].version(1).document),))
    assert bundled["properties"]["total"] == {"$ref": "#/$defs/ref_money_json"}
    money = bundled["$defs"]["ref_money_json"]
    assert money["properties"]["currency"] == {"$ref": "#/$defs/ref_money_json/$defs/Currency"}
    assert "$schema" not in money


# -- bad references: the file, the field and the fix ----------------------------------------------------------


def test_a_reference_to_a_missing_subject(schemas: Path):
    write_toml(
        schemas / "parcel",
        '[references]\n1 = [{ name = "com.epistle.common.Address", subject = "adress", version = 1 }]\n',
    )
    error = error_of(schemas)
    assert error.path == schemas / "parcel" / "subject.toml"
    assert error.field == "references.1[0].subject" and "'adress', which has no folder" in error.problem
    assert "schemas/adress/" in error.fix


def test_a_reference_to_a_missing_version(schemas: Path):
    write_toml(
        schemas / "parcel",
        '[references]\n1 = [{ name = "com.epistle.common.Address", subject = "address", version = 3 }]\n',
    )
    error = error_of(schemas)
    assert error.field == "references.1[0].version" and "address version 3, which does not exist" in error.problem
    assert "existing version" in error.fix


def test_a_cycle_of_references(schemas: Path):
    write_toml(
        schemas / "address",
        '[references]\n1 = [{ name = "com.epistle.parcels.Parcel", subject = "parcel", version = 1 }]\n',
    )
    error = error_of(schemas)
    assert "cycle" in error.problem and "address/1" in error.problem and "parcel/1" in error.problem
    assert error.field.startswith("references.1") and "references none of the others" in error.fix


def test_a_named_type_defined_again_is_a_clash(schemas: Path):
    parcel = json.loads((schemas / "parcel" / "1.avsc").read_text())
    parcel["fields"][1]["type"] = {
        "type": "record",
        "name": "Address",
        "namespace": "com.epistle.common",
        "fields": [{"name": "line", "type": "string"}],
    }
    (schemas / "parcel" / "1.avsc").write_text(json.dumps(parcel))
    error = error_of(schemas)
    assert error.path == schemas / "parcel" / "1.avsc"
    assert error.field == "$.fields[1].type" and "'com.epistle.common.Address' is defined here and by" in error.problem
    assert "instead of defining it again" in error.fix


def test_a_reference_name_the_referenced_schema_does_not_define(schemas: Path):
    write_toml(
        schemas / "parcel",
        '[references]\n1 = [{ name = "com.epistle.common.Adress", subject = "address", version = 1 }]\n',
    )
    error = error_of(schemas)
    assert "names no type that schema defines" in error.problem and "com.epistle.common.Address" in error.problem
    assert "full name" in error.fix


def test_one_name_declared_twice(schemas: Path):
    write_toml(
        schemas / "invoice",
        '[references]\n1 = [{ name = "money.json", subject = "money", version = 1 },'
        ' { name = "money.json", subject = "money", version = 1 }]\n',
    )
    error = error_of(schemas)
    assert error.field == "references.1[1].name" and "twice" in error.problem


def test_a_reference_to_the_other_format(schemas: Path):
    write_toml(schemas / "invoice", '[references]\n1 = [{ name = "money.json", subject = "address", version = 1 }]\n')
    error = error_of(schemas)
    assert error.field == "references.1[0].subject" and "AVRO" in error.problem and "same format" in error.fix


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('references = ["x"]\n', "references"),
        ("[references]\nfirst = []\n", "references.first"),
        ('[references]\n1 = { name = "a" }\n', "references.1"),
        ('[references]\n1 = [{ name = "a", subject = "money" }]\n', "references.1[0]"),
        ('[references]\n1 = [{ name = "a", subject = "money", version = 0 }]\n', "references.1[0]"),
        ('[references]\n2 = [{ name = "a", subject = "money", version = 1 }]\n', "references.2"),
    ],
)
def test_a_malformed_references_table(schemas: Path, toml: str, field: str):
    write_toml(schemas / "invoice", toml)
    error = error_of(schemas)
    assert error.path == schemas / "invoice" / "subject.toml" and error.field == field and error.fix


def test_a_json_ref_to_an_undeclared_file_says_to_declare_it(schemas: Path):
    write_toml(schemas / "invoice", "")
    from toolkit.formats import JSON_SCHEMA

    document = json.loads((schemas / "invoice" / "1.json").read_text())
    problems = JSON_SCHEMA.invalid(schemas / "invoice" / "1.json", document)
    assert problems and problems[0].field == "$.properties.total.$ref"
    assert "[references] in subject.toml" in problems[0].fix


# -- the compatibility check -----------------------------------------------------------------------------------


def add_version(folder: Path, number: int, document: dict, suffix: str) -> None:
    (folder / f"{number}{suffix}").write_text(json.dumps(document, indent=2), encoding="utf-8")


def test_a_referenced_change_that_breaks_a_referencing_schema_names_both(schemas: Path):
    from toolkit.compat.check import run_check

    address = json.loads((schemas / "address" / "1.avsc").read_text())
    address["fields"].append({"name": "postcode", "type": "string"})  # no default: v1 records lack it
    add_version(schemas / "address", 2, address, ".avsc")
    parcel = json.loads((schemas / "parcel" / "1.avsc").read_text())
    parcel["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    add_version(schemas / "parcel", 2, parcel, ".avsc")
    write_toml(
        schemas / "parcel",
        "[references]\n"
        '1 = [{ name = "com.epistle.common.Address", subject = "address", version = 1 }]\n'
        '2 = [{ name = "com.epistle.common.Address", subject = "address", version = 2 }]\n',
    )
    report = run_check(schemas)
    by_subject = {f.subject: f for f in report.errors}
    assert set(by_subject) == {"address", "parcel"}
    finding = by_subject["parcel"]
    assert finding.file == str(schemas / "parcel" / "2.avsc") and "postcode" in finding.message
    assert "'com.epistle.common.Address' is address v2 (" in finding.message  # the reader, and the writer:
    assert "and address v1 (" in finding.message
    assert (
        str(schemas / "address" / "2.avsc") in finding.message
        and str(schemas / "address" / "1.avsc") in finding.message
    )


def test_a_json_referenced_change_is_found_through_the_ref(schemas: Path):
    from toolkit.compat.check import run_check

    money = json.loads((schemas / "money" / "1.json").read_text())
    money["$defs"]["Currency"]["enum"] = ["EUR"]  # v1 records may say USD
    add_version(schemas / "money", 2, money, ".json")
    invoice = json.loads((schemas / "invoice" / "1.json").read_text())
    invoice["description"] = "v2"
    add_version(schemas / "invoice", 2, invoice, ".json")
    write_toml(
        schemas / "invoice",
        '[references]\n1 = [{ name = "money.json", subject = "money", version = 1 }]\n'
        '2 = [{ name = "money.json", subject = "money", version = 2 }]\n',
    )
    report = run_check(schemas)
    invoice_findings = [f for f in report.errors if f.subject == "invoice"]
    assert invoice_findings and all("'money.json' is money v2" in f.message for f in invoice_findings)
    assert any("USD" in f.message for f in invoice_findings)


def test_an_unchanged_reference_leaves_the_check_clean(schemas: Path):
    from toolkit.compat.check import run_check

    invoice = json.loads((schemas / "invoice" / "1.json").read_text())
    invoice["description"] = "v2"
    add_version(schemas / "invoice", 2, invoice, ".json")
    write_toml(
        schemas / "invoice",
        '[references]\n1 = [{ name = "money.json", subject = "money", version = 1 }]\n'
        '2 = [{ name = "money.json", subject = "money", version = 1 }]\n',
    )
    assert run_check(schemas).ok


def test_a_bad_reference_is_a_check_finding(schemas: Path):
    from toolkit.compat.check import run_check

    write_toml(schemas / "invoice", '[references]\n1 = [{ name = "money.json", subject = "money", version = 9 }]\n')
    findings = [f for f in run_check(schemas).errors if f.subject == "invoice"]
    assert [f.rule for f in findings] == ["INVALID_REFERENCE"]
    assert findings[0].path == "references.1[0].version" and "Fix:" in findings[0].message


# -- epistle register / verify -----------------------------------------------------------------------------------


def test_register_sends_the_references_after_the_referenced_subjects():
    from toolkit.registry.commands import register_schemas, verify_schemas
    from toolkit.testing import InMemoryRegistry

    subjects = load_schemas(FIXTURE)
    registry = InMemoryRegistry()
    steps = register_schemas(registry, subjects)
    order = [step.subject for step in steps if step.action == "registered"]
    assert order.index("address") < order.index("parcel") and order.index("money") < order.index("invoice")
    assert registry.get("parcel", 1).references == (
        {"name": "com.epistle.common.Address", "subject": "address", "version": 1},
    )
    assert registry.get("address", 1).references == ()
    assert [step.action for step in register_schemas(registry, subjects)] == ["unchanged"] * 4
    assert verify_schemas(registry, subjects).drifts == []
    # and what was registered is usable: the cache resolves the references from the registry
    _, compiled = CachedRegistry(registry).resolve("parcel", 1)
    assert compiled.decode(PARCEL)["sender"]["city"] == "Utrecht"


def test_register_sends_references_under_a_topic_strategy_to_the_referenced_folder_name():
    from toolkit.registry.commands import register_schemas
    from toolkit.testing import InMemoryRegistry

    registry = InMemoryRegistry()
    steps = register_schemas(registry, load_schemas(FIXTURE), strategy="topic_value")
    assert not any(step.failed for step in steps)
    assert set(registry.store) == {"address", "money", "parcels-value", "invoices-value"}
    assert registry.get("invoices-value", 1).references[0]["subject"] == "money"


def test_verify_and_register_report_references_that_differ():
    from toolkit.registry.commands import register_schemas, verify_schemas
    from toolkit.testing import InMemoryRegistry

    subjects = load_schemas(FIXTURE)
    registry = InMemoryRegistry()
    register_schemas(registry, subjects)
    held = registry.store["invoice"][0]
    other = {"name": "money.json", "subject": "money", "version": 2}
    registry.store["invoice"][0] = type(held)(
        held.subject, held.version, held.format, held.text, schema_id=held.schema_id, references=(other,)
    )
    drifts = [str(d) for d in verify_schemas(registry, subjects).drifts]
    assert drifts == ["invoice v1: references differ: local money.json -> money v1, registry money.json -> money v2"]
    steps = register_schemas(registry, subjects)
    assert steps[-1].action == "conflict" and "references money.json -> money v2" in steps[-1].detail


def test_a_registered_schema_whose_references_were_not_looked_up_is_refused_with_the_fix():
    from toolkit.validation import compile_schema

    schema = LocalFolderRegistry(FIXTURE).get("parcel", 1)
    with pytest.raises(SchemaFileError) as info:
        compile_schema(schema)
    assert info.value.field == "references" and "CachedRegistry" in info.value.fix


def test_the_same_text_with_other_references_is_a_new_version_not_a_duplicate(schemas: Path):
    from toolkit.compat.check import run_check

    address = json.loads((schemas / "address" / "1.avsc").read_text())
    address["fields"].append({"name": "postcode", "type": ["null", "string"], "default": None})
    add_version(schemas / "address", 2, address, ".avsc")
    shutil.copy(schemas / "parcel" / "1.avsc", schemas / "parcel" / "2.avsc")
    write_toml(
        schemas / "parcel",
        "[references]\n"
        '1 = [{ name = "com.epistle.common.Address", subject = "address", version = 1 }]\n'
        '2 = [{ name = "com.epistle.common.Address", subject = "address", version = 2 }]\n',
    )
    assert "DUPLICATE_VERSION" not in {f.rule for f in run_check(schemas).findings}
    write_toml(  # the same text and the same references: a registry returns v1's id
        schemas / "parcel",
        "[references]\n"
        '1 = [{ name = "com.epistle.common.Address", subject = "address", version = 1 }]\n'
        '2 = [{ name = "com.epistle.common.Address", subject = "address", version = 1 }]\n',
    )
    assert "DUPLICATE_VERSION" in {f.rule for f in run_check(schemas).findings}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_changing_a_published_versions_references_is_an_edit(tmp_path: Path):
    import subprocess

    from toolkit.compat.history import check_immutable, resolve_base

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    schemas = tmp_path / "schemas"
    shutil.copytree(FIXTURE, schemas)
    address = json.loads((schemas / "address" / "1.avsc").read_text())
    address["fields"].append({"name": "postcode", "type": ["null", "string"], "default": None})
    add_version(schemas / "address", 2, address, ".avsc")
    git("init", "-q", "-b", "main")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "published")
    base = resolve_base(schemas, "main")
    assert check_immutable(schemas, base) == []
    write_toml(
        schemas / "parcel",
        '[references]\n1 = [{ name = "com.epistle.common.Address", subject = "address", version = 2 }]\n',
    )
    [finding] = check_immutable(schemas, base)
    assert finding.rule == "VERSION_REFERENCES_EDITED" and finding.subject == "parcel"
    assert finding.file == "schemas/parcel/subject.toml" and finding.reader_version == 1
    assert "address/1 to com.epistle.common.Address = address/2" in finding.message
    assert "add the change as a new version" in finding.message
    (schemas / "parcel" / "subject.toml").unlink()  # dropping them is an edit too
    assert [f.rule for f in check_immutable(schemas, base)] == ["VERSION_REFERENCES_EDITED"]


def test_the_fast_json_validator_resolves_a_chain_of_references_each_with_its_own_id():
    from toolkit.validation.json_schema import JsonSchema

    draft = "https://json-schema.org/draft/2020-12/schema"
    common = {"$schema": draft, "$id": "https://s.example/common/1.json", "type": "string", "minLength": 2}
    address = {
        "$schema": draft,
        "$id": "https://s.example/address/1.json",
        "type": "object",
        "properties": {"street": {"type": "string"}, "country": {"$ref": "common.json"}},
    }
    person = {
        "$schema": draft,
        "$id": "https://s.example/person/1.json",
        "type": "object",
        "properties": {"home": {"$ref": "address.json"}},
    }
    compiled = JsonSchema.compile("person", "person", 1, person, (("common.json", common), ("address.json", address)))
    good, bad = {"home": {"street": "s", "country": "DE"}}, {"home": {"street": "s", "country": "D"}}
    assert compiled.fast is not None and compiled.fast.is_valid(good) and not compiled.fast.is_valid(bad)
    with pytest.raises(MessageError) as info:
        compiled.decode(bad)
    assert "$.home.country" in info.value.reason


def test_a_schema_the_fast_validator_cannot_compile_is_logged(caplog: pytest.LogCaptureFixture, monkeypatch):
    import jsonschema_rs

    from toolkit.validation import json_schema

    def refuse(*_args, **_kwargs):
        raise ValueError("unsupported")

    monkeypatch.setattr(jsonschema_rs, "validator_for", refuse)
    monkeypatch.setattr(json_schema, "_fast_unavailable_logged", False)
    with caplog.at_level("DEBUG", logger="toolkit.validation"):
        for _ in range(2):
            assert json_schema.JsonSchema.compile("s", "s", 1, {"type": "string"}).fast is None
    assert [r.levelname for r in caplog.records] == ["WARNING", "DEBUG"]
    assert "jsonschema-rs cannot compile" in caplog.records[0].getMessage()


def test_one_reference_name_for_two_versions_in_the_chain_is_refused_by_the_registry_side():
    from toolkit.errors import RegistryError
    from toolkit.layout import SchemaFormat
    from toolkit.testing import InMemoryRegistry

    def record(name: str, fields: list) -> str:
        return json.dumps({"type": "record", "name": name, "namespace": "com.ex", "fields": fields})

    registry = InMemoryRegistry()
    avro = SchemaFormat.AVRO
    registry.register("address", record("Address", [{"name": "street", "type": "string"}]), avro)
    registry.register(
        "address",
        record("Address", [{"name": "street", "type": "string"}, {"name": "zip", "type": "string", "default": ""}]),
        avro,
    )
    address = [{"name": "com.ex.Address", "subject": "address", "version": 1}]
    registry.register("a", record("A", [{"name": "addr", "type": "com.ex.Address"}]), avro, references=address)
    address_2 = [{**address[0], "version": 2}]
    registry.register("c", record("C", [{"name": "addr", "type": "com.ex.Address"}]), avro, references=address_2)
    top = record("Top", [{"name": "a", "type": "com.ex.A"}, {"name": "c", "type": "com.ex.C"}])
    refs = [{"name": "com.ex.A", "subject": "a", "version": 1}, {"name": "com.ex.C", "subject": "c", "version": 1}]
    registered = registry.register("top", top, avro, references=refs)
    with pytest.raises(RegistryError) as info:
        CachedRegistry(registry).resolve("top", registered.version)
    message = str(info.value)
    assert "'com.ex.Address' twice, as address version 1 and as address version 2" in message
    assert "one name means one version of one subject" in message


def test_a_json_ref_to_a_missing_part_of_a_declared_reference_says_so():
    from toolkit.formats import JSON_SCHEMA

    money = json.loads((FIXTURE / "money" / "1.json").read_text())
    document = {"type": "object", "properties": {"total": {"$ref": "money.json#/nope/x"}}}
    problems = JSON_SCHEMA.invalid("invoice/1.json", document, references=(("money.json", money),))
    assert problems and problems[0].field == "$.properties.total.$ref"
    assert "'money.json' exists but has nothing at #/nope/x" in problems[0].problem
    assert "[references]" not in problems[0].fix and '"money.json#/$defs/Name"' in problems[0].fix


def test_the_contracts_doc_says_the_consumer_reads_schema_references():
    text = " ".join((Path(__file__).parents[2] / "docs" / "contracts.md").read_text(encoding="utf-8").split())
    assert "Not read yet: schema references" not in text
    assert "Schema references (`references` of the id's schema) are read from the registry" in text
