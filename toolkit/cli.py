"""The ``epistle`` command line. Each command imports its implementation lazily, so ``--help`` is instant.

Commands that fail because of user input print one clear message (file, field, fix) and exit non-zero;
they never print a traceback for an :class:`~toolkit.errors.EpistleError`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from toolkit.errors import EpistleError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ouroboros Epistle Forge: schema-governed Kafka consumers for Python.")

SchemasDir = Annotated[Path, typer.Option("--schemas", help="The schemas folder.")]
OutDir = Annotated[Path, typer.Option("--out", help="Where generated models go.")]


def _fail(exc: EpistleError, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@app.command()
def codegen(schemas: SchemasDir = Path("schemas"), out: OutDir = Path("generated_models"),
            check: Annotated[bool, typer.Option("--check", help="Fail if the committed output is stale.")] = False
            ) -> None:
    """Generate pydantic v2 models from every schema version (make codegen / make codegen-check)."""
    raise _fail(EpistleError("codegen is not implemented yet (issue #3)"), 2)


def main() -> None:
    try:
        app()
    except EpistleError as exc:  # a command forgot to translate: still no traceback for user errors
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(1)


if __name__ == "__main__":
    main()
