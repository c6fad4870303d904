"""Codegen of versions with references: the shared types are generated once, in the referenced version's
module, and imported by the modules that use them (not copied); a clash of names is refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from toolkit.codegen import load_model_index, run_codegen
from toolkit.errors import CodegenError, SchemaFileError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "references" / "schemas"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("refs")
    run = run_codegen(FIXTURE, root / "ref_models", workers=1)
    sys.path.insert(0, str(root))
    try:
        yield run.files, load_model_index("ref_models")
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name == "ref_models" or name.startswith("ref_models.")]:
            del sys.modules[name]


def test_the_referencing_module_imports_the_shared_classes(generated):
    files, _ = generated
    parcel = files["parcel/v1.py"]
    assert "from ..address.v1 import Address, Country" in parcel
    assert "class Address" not in parcel and "class Country" not in parcel
    assert "from ..money.v1 import Money" in files["invoice/v1.py"] and "class Money" not in files["invoice/v1.py"]
    assert "class Address(BaseModel)" in files["address/v1.py"]


def test_the_models_share_one_class(generated):
    _, index = generated
    parcel, address, invoice, money = (
        index.get(*key) for key in (("parcel", 1), ("address", 1), ("invoice", 1), ("money", 1))
    )
    assert parcel.model_fields["sender"].annotation is address
    assert invoice.model_fields["total"].annotation is money
    body = {
        "invoiceId": "i-1",
        "total": {"amount": "3", "currency": "EUR"},
        "lines": [{"sku": "a", "price": {"amount": "3", "currency": "EUR"}}],
    }
    model = invoice.model_validate(body)
    assert isinstance(model.total, money) and model.model_dump(by_alias=True, exclude_unset=True, mode="json") == body


def test_a_referenced_schema_change_regenerates_the_referencing_module(tmp_path: Path):
    schemas = tmp_path / "schemas"
    shutil.copytree(FIXTURE, schemas)
    out = tmp_path / "models"
    run_codegen(schemas, out, workers=1)
    address = json.loads((schemas / "address" / "1.avsc").read_text())
    address["doc"] = "Edited."
    (schemas / "address" / "1.avsc").write_text(json.dumps(address))
    again = run_codegen(schemas, out, workers=1)
    assert again.build.rendered == ["address/v1.py", "parcel/v1.py"]


def test_a_type_of_the_same_name_as_a_referenced_one_is_a_clash(tmp_path: Path):
    schemas = tmp_path / "schemas"
    shutil.copytree(FIXTURE, schemas)
    parcel = json.loads((schemas / "parcel" / "1.avsc").read_text())
    parcel["fields"].append(
        {
            "name": "billing",
            "type": {
                "type": "record",
                "name": "Address",
                "namespace": "com.other",
                "fields": [{"name": "x", "type": "int"}],
            },
        }
    )
    (schemas / "parcel" / "1.avsc").write_text(json.dumps(parcel))
    with pytest.raises(CodegenError) as info:
        run_codegen(schemas, tmp_path / "models", workers=1)
    assert info.value.path == schemas / "parcel" / "1.avsc"
    assert info.value.field == "$.fields[4].type" and "'Address' would be both defined here and imported" in str(
        info.value
    )
    assert "rename the type defined here" in info.value.fix


def test_a_json_definition_clashing_with_a_referenced_class(tmp_path: Path):
    schemas = tmp_path / "schemas"
    shutil.copytree(FIXTURE, schemas)
    invoice = json.loads((schemas / "invoice" / "1.json").read_text())
    invoice["$defs"]["Money"] = {"type": "object", "properties": {"cents": {"type": "integer"}}}
    (schemas / "invoice" / "1.json").write_text(json.dumps(invoice))
    with pytest.raises(CodegenError) as info:
        run_codegen(schemas, tmp_path / "models", workers=1)
    assert info.value.field == "$.properties.total.$ref" and "'Money'" in info.value.problem


def test_a_bad_reference_fails_codegen_naming_the_subject_toml(tmp_path: Path):
    schemas = tmp_path / "schemas"
    shutil.copytree(FIXTURE, schemas)
    (schemas / "invoice" / "subject.toml").write_text(
        '[references]\n1 = [{ name = "money.json", subject = "money", version = 2 }]\n'
    )
    with pytest.raises(SchemaFileError) as info:
        run_codegen(schemas, tmp_path / "models", workers=1)
    assert info.value.path == schemas / "invoice" / "subject.toml" and info.value.field == "references.1[0].version"


def test_a_ref_to_a_definition_of_the_referenced_schema_imports_that_class(tmp_path: Path):
    schemas = tmp_path / "schemas"
    shutil.copytree(FIXTURE, schemas)
    invoice = json.loads((schemas / "invoice" / "1.json").read_text())
    invoice["properties"]["currency"] = {"$ref": "money.json#/$defs/Currency"}
    (schemas / "invoice" / "1.json").write_text(json.dumps(invoice))
    files = run_codegen(schemas, tmp_path / "models", workers=1).files
    assert "from ..money.v1 import Currency, Money" in files["invoice/v1.py"]
    assert "class Currency" not in files["invoice/v1.py"]


def test_a_ref_deeper_into_the_referenced_schema_is_refused_with_the_fix(tmp_path: Path):
    schemas = tmp_path / "schemas"
    shutil.copytree(FIXTURE, schemas)
    invoice = json.loads((schemas / "invoice" / "1.json").read_text())
    invoice["properties"]["amount"] = {"$ref": "money.json#/properties/amount"}
    (schemas / "invoice" / "1.json").write_text(json.dumps(invoice))
    with pytest.raises(SchemaFileError) as info:
        run_codegen(schemas, tmp_path / "models", workers=1)
    assert info.value.field == "$.properties.amount.$ref" and "money.json#/$defs/<Name>" in info.value.fix
    from toolkit.compat.check import run_check  # epistle check refuses it the same way

    (finding,) = [f for f in run_check(schemas).errors if f.subject == "invoice"]
    assert finding.rule == "UNSUPPORTED_SCHEMA" and finding.path == "$.properties.amount.$ref"


def _write(folder: Path, name: str, document: dict | str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")


def test_only_the_referenced_types_used_are_imported_and_a_same_named_own_type_is_no_clash(tmp_path: Path):
    schemas = tmp_path / "schemas"
    shutil.copytree(FIXTURE / "address", schemas / "address")
    own_address = {"type": "record", "name": "Address", "fields": [{"name": "x", "type": "string"}]}
    person = {
        "type": "record",
        "name": "Person",
        "namespace": "com.other",
        "fields": [{"name": "c", "type": "com.epistle.common.Country"}, {"name": "a", "type": own_address}],
    }
    _write(schemas / "person", "1.avsc", person)
    _write(
        schemas / "person",
        "subject.toml",
        '[references]\n1 = [{ name = "com.epistle.common.Country", subject = "address", version = 1 }]\n',
    )
    module = run_codegen(schemas, tmp_path / "models", workers=1).files["person/v1.py"]
    assert "from ..address.v1 import Country\n" in module and "class Address(BaseModel)" in module


def test_two_referenced_types_of_one_short_name_are_both_imported(tmp_path: Path):
    schemas = tmp_path / "schemas"
    for subject, namespace in (("a", "com.a"), ("b", "com.b")):
        address = {
            "type": "record",
            "name": "Address",
            "namespace": namespace,
            "fields": [{"name": "x", "type": "int"}],
        }
        _write(schemas / subject, "1.avsc", address)
    person = {
        "type": "record",
        "name": "Person",
        "namespace": "com.p",
        "fields": [{"name": "home", "type": "com.a.Address"}, {"name": "work", "type": "com.b.Address"}],
    }
    _write(schemas / "person", "1.avsc", person)
    _write(
        schemas / "person",
        "subject.toml",
        '[references]\n1 = [{ name = "com.a.Address", subject = "a", version = 1 }, '
        '{ name = "com.b.Address", subject = "b", version = 1 }]\n',
    )
    module = run_codegen(schemas, tmp_path / "models", workers=1).files["person/v1.py"]
    assert "from ..a.v1 import Address as ComAAddress" in module
    assert "from ..b.v1 import Address as ComBAddress" in module
    assert "class ComAAddress" not in module and "class ComBAddress" not in module
