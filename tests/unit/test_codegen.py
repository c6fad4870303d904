"""epistle codegen: deterministic output, committed package fresh, atomic writes, --check, the index."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import toolkit.codegen.output as output
from toolkit.cli import app
from toolkit.codegen import check_models, generate_models, load_model_index, render_package
from toolkit.errors import CodegenError

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
COMMITTED = ROOT / "generated_models"


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return render_package(SCHEMAS)


def test_layout_of_the_package(rendered: dict[str, str]) -> None:
    assert list(rendered) == [
        "__init__.py",
        "_index.py",
        "_manifest.json",
        "orders/__init__.py",
        "orders/v1.py",
        "orders/v2.py",
        "shipments/__init__.py",
        "shipments/v1.py",
        "shipments/v2.py",
    ]
    assert '("orders", 2): "orders.v2:Order"' in rendered["_index.py"]
    assert '("shipments", 1): "shipments.v1:Shipment"' in rendered["_index.py"]
    for text in rendered.values():
        assert "timestamp" not in text.lower().split("\n", 3)[0]


def test_codegen_twice_gives_identical_bytes(tmp_path: Path, rendered: dict[str, str]) -> None:
    generate_models(SCHEMAS, tmp_path / "a")
    generate_models(SCHEMAS, tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert _tree(tmp_path / "a") == {k: v.encode() for k, v in rendered.items()}


def test_committed_generated_models_are_fresh() -> None:
    """What `make codegen-check` checks: run `make codegen` and commit when this fails."""
    assert [str(d) for d in check_models(SCHEMAS, COMMITTED)] == []


def test_check_names_stale_missing_and_extra_files(tmp_path: Path) -> None:
    out = tmp_path / "generated_models"
    generate_models(SCHEMAS, out)
    (out / "orders" / "v1.py").write_text("# edited by hand\n")
    (out / "shipments" / "v2.py").unlink()
    (out / "orders" / "v3.py").write_text("")
    (out / "orders" / "__pycache__").mkdir()
    (out / "orders" / "__pycache__" / "v1.cpython-311.pyc").write_bytes(b"")
    found = {(d.path, d.kind) for d in check_models(SCHEMAS, out)}
    assert found == {("orders/v1.py", "stale"), ("shipments/v2.py", "missing"), ("orders/v3.py", "extra")}

    result = CliRunner().invoke(app, ["codegen", "--check", "--schemas", str(SCHEMAS), "--out", str(out)])
    assert result.exit_code == 1
    for name in ("orders/v1.py", "shipments/v2.py", "orders/v3.py"):
        assert name in result.output


def test_check_fails_after_a_schema_edit_until_codegen_runs(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    out = tmp_path / "out"
    runner = CliRunner()
    where = ["--schemas", str(schemas), "--out", str(out)]
    assert runner.invoke(app, ["codegen", *where]).exit_code == 0
    assert runner.invoke(app, ["codegen", "--check", *where]).exit_code == 0
    text = (schemas / "orders" / "2.json").read_text().replace('"PHONE"', '"PHONE", "MARKETPLACE"')
    (schemas / "orders" / "2.json").write_text(text)
    result = runner.invoke(app, ["codegen", "--check", *where])
    assert result.exit_code == 1 and "orders/v2.py" in result.output
    assert runner.invoke(app, ["codegen", *where]).exit_code == 0
    assert runner.invoke(app, ["codegen", "--check", *where]).exit_code == 0


def test_failure_part_way_leaves_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "generated_models"
    generate_models(SCHEMAS, out)
    (out / "marker.txt").write_text("previous output")
    before = _tree(out)
    writes = []
    real_open = open

    def failing_open(path, *args, **kwargs):
        writes.append(path)
        if len(writes) == 3:
            raise OSError(28, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(output, "open", failing_open, raising=False)
    with pytest.raises(CodegenError, match="No space left"):
        generate_models(SCHEMAS, out)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generated_models"]  # no staging left behind


def test_failed_swap_restores_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "generated_models"
    generate_models(SCHEMAS, out)
    (out / "marker.txt").write_text("previous output")  # an extra file: the next run must write
    before = _tree(out)
    real_rename = output.os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # moving the new tree in
            raise OSError(18, "Invalid cross-device link")
        return real_rename(src, dst)

    monkeypatch.setattr(output.os, "rename", rename)
    with pytest.raises(CodegenError):
        generate_models(SCHEMAS, out)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generated_models"]


def test_model_index_loads_lazily_and_caches() -> None:
    index = load_model_index()
    assert ("orders", 1) in index and len(index) == 4
    order = index.get("orders", 2)
    assert order is not None and order.__name__ == "Order"
    assert order.__module__ == "generated_models.orders.v2"
    assert index.get("orders", 2) is order
    assert index.get("orders", 99) is None and index.get("nope", 1) is None
    field = order.model_fields["order_id"]
    assert field.alias == "orderId"


def test_model_index_of_a_missing_package() -> None:
    with pytest.raises(CodegenError, match="make codegen"):
        load_model_index("no_such_generated_package")


def test_model_index_with_a_stale_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "stale_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_index.py").write_text('MODELS = {("orders", 1): "orders.v1:Order"}\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    index = load_model_index("stale_models")
    with pytest.raises(CodegenError, match="cannot load generated model"):
        index.get("orders", 1)


def test_public_api() -> None:
    import toolkit.codegen

    assert sorted(toolkit.codegen.__all__) == [
        "CodegenRun",
        "Difference",
        "ModelIndex",
        "check_models",
        "generate_models",
        "load_model_index",
        "render_package",
        "run_codegen",
    ]
