"""Incremental, parallel codegen: regenerate only the modules whose inputs changed, on every core.

Each generated module has an *input hash*: SHA-256 over the schema file's bytes, its format, its source
label and root class name, datamodel-code-generator's version, the sources of :mod:`toolkit.codegen.render`
and :mod:`toolkit.codegen.prepare` (the generator options and schema rewrites live there) and
:data:`CODEGEN_VERSION`. ``_manifest.json`` in the output package records, per module, that input hash and
the SHA-256 of the module's bytes:

    {"codegen": "2", "generator": "datamodel-code-generator 0.89.0",
     "modules": {"orders/v1.py": {"source": "orders/1.json", "input": "…", "output": "…"}, …}}

A module is reused as it is on disk when its recorded input hash equals the fresh one *and* the file on
disk still hashes to the recorded output (so a hand-edited module is regenerated, and ``--check`` reports
it). Everything else is rendered, in a process pool when there is more than one. Every schema file is
validated (:mod:`toolkit.formats`) on every run, reused or not: the module's bytes do not depend on the
checks, but whether it may exist does, so a check added or tightened refuses a schema whose module was
generated before it (and ``--check`` fails on it) without being part of the hash. The manifest is written
sorted and without timestamps, so the output stays deterministic and is committed with the models. Modules
of removed schemas disappear because the whole package is rebuilt from the schema folder (only unchanged
ones are copied).
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import gc
import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from toolkit import _args
from toolkit.codegen.index import INDEX_MODULE
from toolkit.codegen.render import (
    ReferencedModule,
    _index_module,
    _package_init,
    _subject_init,
    package_name,
    render_module,
    root_class_name,
)
from toolkit.errors import CodegenError, CodegenFailures, SchemaFileError
from toolkit.formats import format_for
from toolkit.layout import SchemaFile, SchemaFormat, Subject, load_subject

CODEGEN_VERSION = "2"
"""Bump when the package layout or the hash recipe changes: every module is then regenerated."""
MANIFEST = "_manifest.json"
GENERATOR = "datamodel-code-generator"


@dataclass(frozen=True)
class Job:
    """One schema version to turn into ``module`` (a path relative to the output package)."""

    schema_file: SchemaFile
    class_name: str
    module: str
    input_hash: str
    references: tuple[ReferencedModule, ...] = ()

    @property
    def source(self) -> str:
        return f"{self.schema_file.subject}/{self.schema_file.path.name}"


@dataclass
class Build:
    """The whole package in memory, and what it took: which modules were rendered, which reused."""

    files: dict[str, str]
    rendered: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def build_package(schemas_dir: Path | str, previous: Path | str | None = None, *, workers: int | None = None) -> Build:
    """Render the package for ``schemas_dir``, reusing modules of ``previous`` (an earlier output folder)
    whose inputs did not change; ``previous=None`` renders everything.

    Every schema file is looked at in one run: all failures are raised together.

    Raises:
        SchemaFileError: one file or subject failed (UnsupportedSchema, CodegenError, ... as raised).
        CodegenFailures: several failed; ``errors`` holds each one.
    """
    schemas_dir = _args.path("schemas_dir", schemas_dir)
    if previous is not None:
        _args.path("out", previous)
    if workers is not None:
        _args.integer("workers", workers, low=1, fix=" (processes rendering modules), or None for every core")
    subjects, errors = _load_subjects(schemas_dir)
    files: dict[str, str] = {"__init__.py": _package_init(subjects)}
    index: dict[tuple[str, int], str] = {}
    packages: dict[str, str] = {}
    jobs: list[Job] = []
    renderer = renderer_fingerprint()
    for name, subject in subjects.items():
        package = package_name(name)
        if package in packages:
            errors.append(
                SchemaFileError(
                    subject.folder,
                    f"subject {name!r} maps to the same Python package {package!r} as subject {packages[package]!r}",
                    fix="rename one of the subject folders",
                )
            )
            continue
        packages[package] = name
        files[f"{package}/__init__.py"] = _subject_init(subject)
        for schema_file in subject.versions:
            class_name = root_class_name(schema_file)
            module = f"{package}/v{schema_file.version}.py"
            try:
                references = _referenced_modules(schema_file, subjects)
            except SchemaFileError as exc:
                errors.append(exc)
                continue
            digest = input_hash(schema_file, class_name, renderer, references)
            jobs.append(Job(schema_file, class_name, module, digest, references))
            index[(name, schema_file.version)] = f"{package}.v{schema_file.version}:{class_name}"
    reused = _reusable(jobs, Path(previous)) if previous is not None else {}
    build = Build(files)
    todo = [job for job in jobs if job.module not in reused]
    errors += _validate_reused([job for job in jobs if job.module in reused])
    rendered, failures = _render_all(todo, workers)
    errors += failures
    if errors:
        raise errors[0] if len(errors) == 1 else CodegenFailures(schemas_dir, errors)
    for job in jobs:
        files[job.module] = reused.get(job.module) or rendered[job.module]
    errors += _check_imports(jobs, files)
    if errors:
        raise errors[0] if len(errors) == 1 else CodegenFailures(schemas_dir, errors)
    build.rendered = sorted(rendered)
    build.reused = sorted(reused)
    files[f"{INDEX_MODULE}.py"] = _index_module(index)
    files[MANIFEST] = _manifest(jobs, files)
    build.files = dict(sorted(files.items()))
    return build


def _referenced_modules(schema_file: SchemaFile, subjects: dict[str, Subject]) -> tuple[ReferencedModule, ...]:
    """What ``schema_file`` references (transitively, dependencies first) with the modules generated for them.

    Raises:
        SchemaFileError: a bad reference (toolkit.references.resolve).
    """
    if not schema_file.references:
        return ()
    from toolkit.references import resolve

    return tuple(
        ReferencedModule(name, target, f"{package_name(target.subject)}.v{target.version}", root_class_name(target))
        for name, target in resolve(schema_file, subjects)
    )


def _check_imports(jobs: list[Job], files: dict[str, str]) -> list[SchemaFileError]:
    """Every class a module imports from a referenced module is defined there (a ``$ref`` to a definition
    that codegen folded into a field type, for one, has no class to import)."""
    import ast

    errors: list[SchemaFileError] = []
    for job in jobs:
        if not job.references:
            continue
        for node in ast.parse(files[job.module]).body:
            if not (isinstance(node, ast.ImportFrom) and node.level == 2 and node.module):
                continue
            target = node.module.replace(".", "/") + ".py"
            defined = {
                item.name if isinstance(item, ast.ClassDef) else alias.asname or alias.name
                for item in ast.parse(files.get(target, "")).body
                if isinstance(item, ast.ClassDef | ast.ImportFrom)
                for alias in (item.names if isinstance(item, ast.ImportFrom) else [ast.alias(item.name)])
            }
            for alias in node.names:
                if alias.name not in defined:
                    errors.append(
                        CodegenError(
                            job.schema_file.path,
                            f"imports {alias.name} from the referenced module {node.module}, which defines no "
                            "class of that name",
                            field="$ref",
                            fix="reference the root of the other schema, or a definition of it that is an object "
                            "or an enum",
                        )
                    )
    return errors


def _load_subjects(root: Path) -> tuple[dict[str, Subject], list[SchemaFileError]]:
    """Every subject that loads, and the error of each one that does not (``load_schemas`` stops at the
    first)."""
    if not root.is_dir():
        raise SchemaFileError(
            root, "schemas folder not found", fix="create it, or point EPISTLE_SCHEMAS_DIR at your schemas folder"
        )
    subjects: dict[str, Subject] = {}
    errors: list[SchemaFileError] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        try:
            subject = load_subject(folder)
        except SchemaFileError as exc:
            errors.append(exc)
            continue
        subjects[subject.name] = subject
    return subjects, errors


RENDERER_SOURCES = ("render.py", "prepare.py")


def generator_version() -> str:
    try:
        return f"{GENERATOR} {metadata.version(GENERATOR)}"
    except metadata.PackageNotFoundError:  # pragma: no cover - it is a dependency
        return f"{GENERATOR} (unknown version)"


def renderer_fingerprint() -> str:
    """SHA-256 of the sources of :mod:`toolkit.codegen.render` and :mod:`toolkit.codegen.prepare` (line
    endings normalised): the generator options and the schema rewrites live there, so changing them
    regenerates every module."""
    digest = hashlib.sha256()
    for name in RENDERER_SOURCES:
        digest.update(Path(__file__).with_name(name).read_bytes().replace(b"\r\n", b"\n"))
    return digest.hexdigest()


def input_hash(
    schema_file: SchemaFile,
    class_name: str,
    renderer: str | None = None,
    references: tuple[ReferencedModule, ...] = (),
) -> str:
    """The hash of everything a module's bytes depend on (see the module docstring): with references, also
    their names, bytes, modules and classes."""
    recipe: dict[str, Any] = {
        "codegen": CODEGEN_VERSION,
        "generator": generator_version(),
        "renderer": renderer or renderer_fingerprint(),
        "format": schema_file.format.value,
        "source": f"{schema_file.subject}/{schema_file.path.name}",
        "class": class_name,
        "schema": hashlib.sha256(schema_file.text.encode("utf-8")).hexdigest(),
    }
    if references:
        recipe["references"] = [
            [ref.name, ref.module, ref.class_name, hashlib.sha256(ref.schema_file.text.encode("utf-8")).hexdigest()]
            for ref in references
        ]
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()


def _sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def _reusable(jobs: list[Job], previous: Path) -> dict[str, str]:
    """module -> text on disk, for the jobs whose recorded input hash matches and whose file is intact."""
    try:
        recorded = json.loads((previous / MANIFEST).read_text(encoding="utf-8"))["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # no manifest (first run, older codegen) or a damaged one: render everything
    reused = {}
    for job in jobs:
        entry = recorded.get(job.module) if isinstance(recorded, dict) else None
        if not isinstance(entry, dict) or entry.get("input") != job.input_hash:
            continue
        try:
            data = (previous / job.module).read_bytes()
        except OSError:
            continue
        if _sha256(data) == entry.get("output"):
            try:
                reused[job.module] = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return reused


def _validate_reused(jobs: list[Job]) -> list[SchemaFileError]:
    """The validity check (:meth:`toolkit.formats.base.Format.validate`) of the schema files whose module is
    reused: render_module runs it on the others. Cheap next to rendering (no generator), so done here."""
    errors: list[SchemaFileError] = []
    for job in jobs:
        try:
            references = tuple((ref.name, ref.schema_file.document) for ref in job.references)
            format_for(job.schema_file.format).validate(
                job.schema_file.path, job.schema_file.document, references=references
            )
        except SchemaFileError as exc:
            errors.append(exc)
    return errors


def _manifest(jobs: list[Job], files: dict[str, str]) -> str:
    modules = {
        job.module: {"source": job.source, "input": job.input_hash, "output": _sha256(files[job.module])}
        for job in sorted(jobs, key=lambda j: j.module)
    }
    document = {
        "about": "Written by `epistle codegen`: the input hash of each module (schema bytes, "
        "generator version and options, codegen version) and the hash of its bytes. "
        "Do not edit.",
        "codegen": CODEGEN_VERSION,
        "generator": generator_version(),
        "modules": modules,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _render_all(jobs: list[Job], workers: int | None) -> tuple[dict[str, str], list[SchemaFileError]]:
    """Render ``jobs``; with more than one job and more than one core, in a process pool.

    The smallest job of each format is rendered here first: that imports the generator's lazily loaded
    parts, jsonschema and the Avro libraries once (seconds on a cold start), and forked workers inherit
    them instead of each importing them again. The pool then takes the largest schemas first.

    The workers are forked with every object of this process frozen (:func:`gc.freeze`): a worker's
    garbage collector must never finalize what it inherited. Garbage of this process waiting for its next
    full collection, such as the Kafka clients of a consumer that ran here (a test suite's), would be
    finalized in the worker, without the threads librdkafka started here: the worker aborts or crashes and
    the pool breaks ("terminated abruptly").
    """
    workers = min(workers or default_workers(), len(jobs))
    results: list[tuple[Job, str | SchemaFileError]] = []
    if workers > 1:
        warm_up: dict[SchemaFormat, Job] = {}
        for job in sorted(jobs, key=lambda job: (len(job.schema_file.text), job.module)):
            warm_up.setdefault(job.schema_file.format, job)
        results += [(job, _render_one(*_render_args(job))) for job in warm_up.values()]
        jobs = [job for job in jobs if job not in warm_up.values()]
        workers = min(workers, len(jobs))
    jobs = sorted(jobs, key=lambda job: (-len(job.schema_file.text), job.module))
    if workers <= 1:
        results += [(job, _render_one(*_render_args(job))) for job in jobs]
    else:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        # The workers are forked in this block: their collector skips all they inherit. Objects the caller
        # froze itself (e.g. a pre-fork server) stay frozen: unfreeze() would release those too.
        frozen_by_caller = gc.get_freeze_count() > 0
        gc.freeze()
        try:
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [(job, _submit(pool, job)) for job in jobs]
                results += [(job, _result(job, future)) for job, future in futures]
        finally:
            if not frozen_by_caller:
                gc.unfreeze()
    rendered: dict[str, str] = {}
    errors: list[SchemaFileError] = []
    for job, result in results:
        if isinstance(result, SchemaFileError):
            errors.append(result)
        else:
            rendered[job.module] = result
    errors.sort(key=lambda error: str(error.path))
    return rendered, errors


def _submit(pool: concurrent.futures.ProcessPoolExecutor, job: Job) -> concurrent.futures.Future:
    """``job`` submitted to ``pool``; once a worker died the pool refuses more, and the job fails as the
    ones it was running did (reported by :func:`_result`, not raised from here)."""
    try:
        return pool.submit(_render_one, *_render_args(job))
    except concurrent.futures.process.BrokenProcessPool as exc:
        failed: concurrent.futures.Future = concurrent.futures.Future()
        failed.set_exception(exc)
        return failed


def _result(job: Job, future: concurrent.futures.Future) -> str | SchemaFileError:
    try:
        return future.result()
    except concurrent.futures.process.BrokenProcessPool as exc:  # a worker died (killed, out of memory ...)
        return CodegenError(
            job.schema_file.path,
            f"the codegen worker process died before finishing: {exc}",
            fix="run `epistle codegen --jobs 1` to generate in one process and see the failure",
        )


def _render_args(job: Job) -> tuple:
    """The arguments of :func:`_render_one` for ``job`` (references only when there are some)."""
    return (job.schema_file, job.class_name, job.references) if job.references else (job.schema_file, job.class_name)


def _render_one(
    schema_file: SchemaFile, class_name: str, references: tuple[ReferencedModule, ...] = ()
) -> str | SchemaFileError:
    """One module's text, or the error (returned, not raised: it crosses a process boundary)."""
    try:
        return render_module(schema_file, class_name, *((references,) if references else ()))
    except SchemaFileError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - anything else is still this file's failure, reported with it
        return CodegenError(
            schema_file.path,
            f"codegen failed: {type(exc).__name__}: {exc}",
            fix="report it with the schema file attached",
        )
