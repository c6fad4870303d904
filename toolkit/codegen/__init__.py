"""``epistle codegen``: schemas/ to pydantic v2 models, deterministic, incremental, with a model index.

- :func:`generate_models` renders the schema versions whose inputs changed (in parallel), reuses the
  others from the output folder, and swaps the result in (nothing is written when nothing changed).
- :func:`check_models` does the same in memory and lists the stale, missing and extra files on disk.
- :func:`run_codegen` is both, with what it did (modules rendered and reused).
- :func:`load_model_index` is what the consumer runtime uses to find the model of a schema version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit import _args
from toolkit.codegen.build import Build, build_package
from toolkit.codegen.index import ModelIndex, load_model_index
from toolkit.codegen.output import Difference, diff_package, write_package
from toolkit.codegen.render import render_package

__all__ = [
    "CodegenRun",
    "Difference",
    "ModelIndex",
    "check_models",
    "generate_models",
    "load_model_index",
    "render_package",
    "run_codegen",
]


@dataclass
class CodegenRun:
    """What one codegen run did: the package, the modules rendered and reused, and the differences with
    what was on disk before (with ``check``, nothing is written and ``written`` is False)."""

    build: Build
    differences: list[Difference] = field(default_factory=list)
    written: bool = False

    @property
    def files(self) -> dict[str, str]:
        return self.build.files


def run_codegen(
    schemas_dir: Path | str, out: Path | str, *, check: bool = False, force: bool = False, workers: int | None = None
) -> CodegenRun:
    """Build the package for ``schemas_dir`` (reusing unchanged modules of ``out`` unless ``force``), compare
    it with ``out``, and unless ``check`` write it when it differs.

    Raises:
        SchemaFileError: a schema file or the layout is invalid; CodegenFailures when several are.
        CodegenError: the generator failed, or the output could not be written.
    """
    _args.path("out", out)
    build = build_package(schemas_dir, None if force else out, workers=workers)
    run = CodegenRun(build, diff_package(build.files, out))
    if run.differences and not check:
        write_package(build.files, out)
        run.written = True
    return run


def generate_models(
    schemas_dir: Path | str, out: Path | str, *, force: bool = False, workers: int | None = None
) -> dict[str, str]:
    """Generate models for every schema version under ``schemas_dir`` into ``out``; return the files.

    Only modules whose schema (or the generator, its options, this codegen) changed are rendered; ``force``
    renders all. Nothing is written unless every schema renders; ``out`` is replaced as a whole.

    Raises:
        SchemaFileError: a schema file or the layout is invalid (CodegenError when generation fails,
            CodegenFailures listing every failing file when several fail).
    """
    return run_codegen(schemas_dir, out, force=force, workers=workers).files


def check_models(schemas_dir: Path | str, out: Path | str, *, force: bool = False) -> list[Difference]:
    """Regenerate in memory and compare with ``out``; an empty list means ``out`` is up to date.

    A module of ``out`` is taken as fresh without rendering it when the manifest records the same input hash
    and its bytes are intact; ``force`` renders every module.

    Raises:
        SchemaFileError: a schema file or the layout is invalid (CodegenError when generation fails).
    """
    return run_codegen(schemas_dir, out, check=True, force=force).differences
