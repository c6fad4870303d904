"""``epistle codegen``: schemas/ to pydantic v2 models, deterministic, with a model index.

- :func:`generate_models` renders every schema version and swaps the result into the output folder.
- :func:`check_models` renders in memory and lists the stale, missing and extra files on disk.
- :func:`load_model_index` is what the consumer runtime uses to find the model of a schema version.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.codegen.index import ModelIndex, load_model_index
from toolkit.codegen.output import Difference, diff_package, write_package
from toolkit.codegen.render import render_package

__all__ = ["Difference", "ModelIndex", "check_models", "generate_models", "load_model_index",
           "render_package"]


def generate_models(schemas_dir: Path | str, out: Path | str) -> dict[str, str]:
    """Generate models for every schema version under ``schemas_dir`` into ``out``; return the files.

    Nothing is written unless every schema renders; ``out`` is replaced as a whole.

    Raises:
        SchemaFileError: a schema file or the layout is invalid (CodegenError when generation fails).
    """
    files = render_package(schemas_dir)
    write_package(files, out)
    return files


def check_models(schemas_dir: Path | str, out: Path | str) -> list[Difference]:
    """Regenerate in memory and compare with ``out``; an empty list means ``out`` is up to date.

    Raises:
        SchemaFileError: a schema file or the layout is invalid (CodegenError when generation fails).
    """
    return diff_package(render_package(schemas_dir), out)
