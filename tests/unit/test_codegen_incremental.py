"""Incremental codegen: only modules whose inputs changed are rendered; the manifest keeps --check honest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import toolkit.codegen.build as build
from toolkit.cli import app
from toolkit.codegen import check_models, generate_models, render_package, run_codegen

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
COMMITTED = ROOT / "generated_models"
MODULES = ["orders/v1.py", "orders/v2.py", "shipments/v1.py", "shipments/v2.py"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of schemas/ and of the committed generated_models/ (with its manifest)."""
    schemas, out = tmp_path / "schemas", tmp_path / "generated_models"
    shutil.copytree(SCHEMAS, schemas)
    shutil.copytree(COMMITTED, out, ignore=shutil.ignore_patterns("__pycache__"))
    return schemas, out


@pytest.fixture
def no_rendering(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the modules rendered; the generator itself is replaced, so nothing may depend on its output."""
    calls: list[str] = []

    def render(schema_file, class_name):
        calls.append(f"{schema_file.subject}/{schema_file.path.name}")
        raise AssertionError(f"rendered {schema_file.path}")

    monkeypatch.setattr(build, "render_module", render)
    return calls


def test_unchanged_tree_renders_nothing_and_writes_nothing(workspace, no_rendering) -> None:
    schemas, out = workspace
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    run = run_codegen(schemas, out)
    assert (run.build.rendered, run.build.reused, run.written) == ([], MODULES, False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert check_models(schemas, out) == []
    assert no_rendering == []


def test_one_changed_schema_renders_one_module(workspace) -> None:
    schemas, out = workspace
    path = schemas / "orders" / "2.json"
    path.write_text(path.read_text().replace('"PHONE"', '"PHONE", "MARKETPLACE"'))
    assert [(d.path, d.kind) for d in check_models(schemas, out)] == [
        ("_manifest.json", "stale"),
        ("orders/v2.py", "stale"),
    ]
    run = run_codegen(schemas, out)
    assert run.build.rendered == ["orders/v2.py"] and run.written
    assert "MARKETPLACE" in (out / "orders" / "v2.py").read_text()
    assert _tree(out) == {k: v.encode() for k, v in render_package(schemas).items()}  # same as a full render
    assert check_models(schemas, out) == []


def test_a_removed_subject_leaves_no_output(workspace, no_rendering) -> None:
    schemas, out = workspace
    shutil.rmtree(schemas / "shipments")
    generate_models(schemas, out)
    assert not (out / "shipments").exists()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert sorted(manifest["modules"]) == ["orders/v1.py", "orders/v2.py"]
    assert "shipments" not in (out / "_index.py").read_text()


def test_a_hand_edited_module_is_stale_and_regenerated(workspace) -> None:
    schemas, out = workspace
    committed = (out / "orders" / "v1.py").read_text()
    (out / "orders" / "v1.py").write_text(committed + "# edited by hand\n")
    result = CliRunner().invoke(app, ["codegen", "--check", "--schemas", str(schemas), "--out", str(out)])
    assert result.exit_code == 1 and "orders/v1.py is stale" in result.output
    run = run_codegen(schemas, out)
    assert run.build.rendered == ["orders/v1.py"]
    assert (out / "orders" / "v1.py").read_text() == committed


def test_a_new_generator_version_renders_everything(workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    schemas, out = workspace
    monkeypatch.setattr(build, "generator_version", lambda: "datamodel-code-generator 99.0")
    assert {d.path for d in check_models(schemas, out)} == {"_manifest.json"}  # same bytes, new hashes
    assert run_codegen(schemas, out, workers=1).build.rendered == MODULES


def test_input_hash_covers_the_schema_bytes_and_the_renderer(workspace) -> None:
    from toolkit.layout import load_schemas

    schema_file = load_schemas(workspace[0])["orders"].versions[0]
    reference = build.input_hash(schema_file, "Order")
    assert build.input_hash(schema_file, "Order") == reference
    assert build.input_hash(schema_file, "Other") != reference
    assert build.input_hash(schema_file, "Order", renderer="0" * 64) != reference
    edited = type(schema_file)(**{**schema_file.__dict__, "text": schema_file.text + " "})
    assert build.input_hash(edited, "Order") != reference


def test_a_damaged_manifest_means_a_full_render(workspace) -> None:
    schemas, out = workspace
    (out / "_manifest.json").write_text("{not json")
    run = run_codegen(schemas, out)
    assert run.build.rendered == MODULES
    assert _tree(out) == _tree(COMMITTED)


def test_parallel_and_serial_output_are_identical(tmp_path: Path) -> None:
    serial = run_codegen(SCHEMAS, tmp_path / "serial", workers=1)
    parallel = run_codegen(SCHEMAS, tmp_path / "parallel", workers=2)
    assert serial.build.rendered == parallel.build.rendered == MODULES
    assert _tree(tmp_path / "serial") == _tree(tmp_path / "parallel") == _tree(COMMITTED)


def test_a_dying_worker_is_reported_with_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from toolkit.errors import CodegenError

    parent = os.getpid()
    real = build.render_module

    def render(schema_file, class_name):
        if os.getpid() != parent:  # in a forked worker: die as an out-of-memory kill would
            os._exit(137)
        return real(schema_file, class_name)

    monkeypatch.setattr(build, "render_module", render)
    with pytest.raises(CodegenError) as caught:
        run_codegen(SCHEMAS, tmp_path / "out", workers=2)
    assert "worker process died" in str(caught.value) and "--jobs 1" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_job_the_broken_pool_refuses_is_reported_with_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a worker died the pool refuses new jobs (BrokenProcessPool from submit): that job's file is
    reported as the running ones are, not a bare BrokenProcessPool."""
    import concurrent.futures
    import concurrent.futures.process

    from toolkit.errors import CodegenError

    real = concurrent.futures.ProcessPoolExecutor.submit
    submitted: list[object] = []

    def submit(pool, fn, /, *args, **kwargs):
        submitted.append(args[0])
        if len(submitted) > 1:  # the first worker died meanwhile
            raise concurrent.futures.process.BrokenProcessPool("A child process terminated abruptly")
        return real(pool, fn, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "submit", submit)
    with pytest.raises(CodegenError) as caught:
        run_codegen(SCHEMAS, tmp_path / "out", workers=2)
    refused = submitted[1].path  # type: ignore[attr-defined]
    assert str(refused) in str(caught.value) and "worker process died" in str(caught.value)
    assert "--jobs 1" in str(caught.value) and not (tmp_path / "out").exists()


def test_a_worker_never_finalizes_garbage_of_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage waiting here for a full collection (the Kafka clients of a consumer that ran in this process,
    say) must not be finalized in a forked worker: librdkafka's threads are not there, the worker aborts or
    crashes, and the pool breaks."""
    import gc
    import os

    parent = os.getpid()

    class Unclosed:
        def __init__(self) -> None:
            self.cycle = self  # only the garbage collector frees it

        def __del__(self) -> None:
            if os.getpid() != parent:  # finalized in a worker: die as librdkafka's assertion does
                os._exit(134)

    real = build.render_module

    def render(schema_file, class_name):
        if os.getpid() != parent:
            gc.collect()  # a full collection in the worker, as a long render may start
        return real(schema_file, class_name)

    monkeypatch.setattr(build, "render_module", render)
    gc.disable()  # the garbage stays until the workers are forked
    try:
        Unclosed()
        run = run_codegen(SCHEMAS, tmp_path / "out", workers=2)
    finally:
        gc.enable()
        gc.collect()
    assert run.build.rendered == MODULES
    assert _tree(tmp_path / "out") == _tree(COMMITTED)


def test_codegen_leaves_what_the_caller_froze_frozen(tmp_path: Path) -> None:
    """A pre-fork server that froze its objects (gc.freeze) and runs codegen in-process keeps them frozen;
    codegen's own freeze is undone when nobody had frozen anything."""
    import gc

    assert gc.get_freeze_count() == 0
    run_codegen(SCHEMAS, tmp_path / "a", workers=2)
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        run_codegen(SCHEMAS, tmp_path / "b", workers=2)
        assert gc.get_freeze_count() >= frozen > 0
    finally:
        gc.unfreeze()


def test_a_reused_module_is_validated_under_the_current_rules(workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    # Generated while the rules allowed a root without "type"; the rule came after: the module is intact and
    # its input hash unchanged (the hash does not cover the checks), yet --check and codegen must refuse it.
    from toolkit.errors import UnsupportedSchema
    from toolkit.formats import JSON_SCHEMA

    schemas, out = workspace
    (schemas / "events").mkdir()
    (schemas / "events" / "subject.toml").write_text('compatibility = "BACKWARD"\ntopics = ["events"]\n')
    (schemas / "events" / "1.json").write_text(json.dumps({"title": "Event", "properties": {"id": {"type": "string"}}}))
    with monkeypatch.context() as old_rules:
        old_rules.setattr(JSON_SCHEMA, "unsupported", lambda path, document: [])
        run_codegen(schemas, out, workers=1)
    assert (out / "events" / "v1.py").is_file()

    def render(schema_file, class_name):
        raise AssertionError(f"rendered {schema_file.path}")

    monkeypatch.setattr(build, "render_module", render)  # every module is reused: only validation may refuse
    with pytest.raises(UnsupportedSchema, match='the root has no "type"'):
        check_models(schemas, out)
    result = CliRunner().invoke(app, ["codegen", "--check", "--schemas", str(schemas), "--out", str(out)])
    assert result.exit_code != 0 and "events" in result.output and 'no "type"' in result.output
    with pytest.raises(UnsupportedSchema):
        run_codegen(schemas, out)
