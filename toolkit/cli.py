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
    import time

    from toolkit.codegen import check_models, generate_models

    started = time.perf_counter()
    try:
        if check:
            differences = check_models(schemas, out)
        else:
            files = generate_models(schemas, out)
    except EpistleError as exc:
        raise _fail(exc) from None
    elapsed = time.perf_counter() - started
    if not check:
        typer.echo(f"codegen: wrote {len(files)} files to {out}/ from {schemas}/ in {elapsed:.2f}s")
        return
    if differences:
        for difference in differences:
            typer.secho(f"stale: {out}/{difference}", err=True, fg=typer.colors.RED)
        typer.secho(f"error: {out}/ is out of date with {schemas}/ ({len(differences)} file(s)); "
                    "run `make codegen` and commit the result", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo(f"codegen-check: {out}/ is up to date with {schemas}/ ({elapsed:.2f}s)")


RegistryUrl = Annotated[str | None, typer.Option(
    "--registry-url", help="Confluent-compatible registry API root (default: SCHEMA_REGISTRY_URL).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")]
SchemasDirOrSetting = Annotated[Path | None, typer.Option(
    "--schemas", help="The schemas folder (default: EPISTLE_SCHEMAS_DIR, else schemas).")]


def _registry_command_setup(schemas: Path | None, registry_url: str | None):
    """Settings, local subjects and the HTTP registry for ``register`` and ``verify``."""
    from toolkit.layout import load_schemas
    from toolkit.registry.http import ConfluentHttpRegistry
    from toolkit.settings import load_settings

    settings = load_settings(**({"registry__url": registry_url} if registry_url else {}))
    if settings.registry.is_local:
        raise EpistleError("no registry to talk to: pass --registry-url or set SCHEMA_REGISTRY_URL "
                           "(e.g. http://127.0.0.1:8081/apis/ccompat/v7)")
    subjects = load_schemas(schemas or settings.consumer.schemas_dir)
    return settings, subjects, ConfluentHttpRegistry.from_settings(settings.registry)


@app.command()
def register(schemas: SchemasDirOrSetting = None, registry_url: RegistryUrl = None,
             dry_run: DryRun = False) -> None:
    """Push every local schema version, in order, to the registry (identical versions are left alone)."""
    from toolkit.registry.commands import register_schemas

    try:
        settings, subjects, registry = _registry_command_setup(schemas, registry_url)
        with registry:
            typer.echo(f"{'dry run: ' if dry_run else ''}registering {len(subjects)} subject(s) "
                       f"at {registry.url}")
            steps = register_schemas(registry, subjects, dry_run=dry_run,
                                     strategy=settings.registry.subject_strategy,
                                     on_step=lambda step: typer.secho(
                                         f"  {step}", err=step.failed,
                                         fg=typer.colors.RED if step.failed else None))
    except EpistleError as exc:
        raise _fail(exc) from None
    if steps and steps[-1].failed:
        typer.secho(f"stopped at {steps[-1].subject} v{steps[-1].version}: nothing after it was "
                    f"{'checked' if dry_run else 'registered'}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    done = sum(step.action == "registered" for step in steps)
    unchanged = sum(step.action == "unchanged" for step in steps)
    planned = sum(step.action == "would register" for step in steps)
    typer.echo(f"would register {planned}, unchanged {unchanged}" if dry_run
               else f"registered {done}, unchanged {unchanged}")


@app.command()
def verify(schemas: SchemasDirOrSetting = None, registry_url: RegistryUrl = None) -> None:
    """Compare local schemas with the registry (same content under the same versions); list every drift."""
    from toolkit.registry.commands import verify_schemas

    try:
        settings, subjects, registry = _registry_command_setup(schemas, registry_url)
        with registry:
            report = verify_schemas(registry, subjects, strategy=settings.registry.subject_strategy)
    except EpistleError as exc:
        raise _fail(exc) from None
    for drift in report.drifts:
        typer.secho(f"drift: {drift}", err=True, fg=typer.colors.RED)
    if report.drifts:
        typer.secho(f"{len(report.drifts)} drift(s) between {len(subjects)} local subject(s) and "
                    f"{registry.url}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo(f"in sync: {report.checked} version(s) of {len(subjects)} subject(s) match {registry.url}")


@app.command()
def check(schemas: SchemasDir = Path("schemas"),
          base: Annotated[str | None, typer.Option(
              "--base", help="Git ref whose version files count as published "
                             "(default: the merge base with main).")] = None,
          output: Annotated[str, typer.Option("--format", help="text (for review) or json.")] = "text",
          registry_url: Annotated[str | None, typer.Option(
              "--registry-url", help="Also ask this Confluent-compatible registry; report where it "
                                     "disagrees.")] = None,
          ) -> None:
    """Schema checks: valid files, published versions unchanged, compatibility per mode (make check)."""
    from toolkit.compat.check import run_check
    from toolkit.compat.report import github_annotations, render_json, render_text

    if output not in ("text", "json"):
        raise _fail(EpistleError(f"--format {output!r}: use text or json"), 2)
    try:
        report = run_check(schemas, base=base, registry_url=registry_url)
    except EpistleError as exc:
        raise _fail(exc) from None
    typer.echo(render_json(report) if output == "json" else render_text(report))
    annotations = github_annotations(report) if output == "text" else ""
    if annotations:
        typer.echo(annotations)
    raise typer.Exit(0 if report.ok else 1)


_NewName = Annotated[str | None, typer.Argument(
    help="Project (folder and distribution) name, e.g. orders-consumer.", show_default=False)]
_NewPackage = Annotated[str | None, typer.Option(
    "--package", "--package-name", help="Python package name (default: from the project name).",
    show_default=False)]
_NewTopics = Annotated[str | None, typer.Option(
    "--topics", help="Topics to consume, comma-separated (default: orders).", show_default=False)]
_NewGroup = Annotated[str | None, typer.Option(
    "--group-id", help="Kafka consumer group id (default: the project name).", show_default=False)]
_NewOutput = Annotated[Path, typer.Option("--output-dir", "-o", help="Where the project folder goes.")]
_NewWheel = Annotated[Path | None, typer.Option(
    "--toolkit-wheel", help="The project installs the toolkit from this built wheel.", show_default=False)]
_NewToolkitPath = Annotated[Path | None, typer.Option(
    "--toolkit-path", help="... or from this source checkout (default: the one running this).",
    show_default=False)]


@app.command()
def new(project_name: _NewName = None, package: _NewPackage = None, topics: _NewTopics = None,
        group_id: _NewGroup = None, output_dir: _NewOutput = Path("."),
        force: Annotated[bool, typer.Option("--force", help="Write over an existing project folder.")
                         ] = False,
        no_input: Annotated[bool, typer.Option("--no-input", help="Never prompt: use the defaults.")] = False,
        toolkit_wheel: _NewWheel = None, toolkit_path: _NewToolkitPath = None,
        codegen: Annotated[bool, typer.Option(
            "--codegen/--no-codegen", help="Generate the models now (else `make setup` does).")] = True,
        ) -> None:
    """Create a consumer service: schemas, models, a handler per topic, tests, Makefile, CI (cookiecutter)."""
    from toolkit.scaffold import Answers, ScaffoldError, create_project, rules, toolkit_requirement

    def ask(label: str, value: str | None, default: str, check) -> str:
        if value is not None or no_input:
            return value if value is not None else default
        while True:
            answer = typer.prompt(label, default=default or None, show_default=bool(default))
            problems = check(answer)
            if not problems:
                return answer
            for problem in problems:
                typer.secho(f"  {problem}", err=True, fg=typer.colors.RED)

    try:
        if project_name is None and no_input:
            raise ScaffoldError("project_name: missing -- fix: give it as the first argument, "
                                "e.g. epistle new orders-consumer --no-input", field="project_name")
        requirement = toolkit_requirement(toolkit_wheel, toolkit_path)
        project_name = ask("Project name", project_name, "orders-consumer", rules.check_project_name)
        package = ask("Python package", package, rules.default_package_name(project_name),
                      rules.check_package_name)
        topics = ask("Topics (comma-separated)", topics, "orders", rules.check_topics)
        group_id = ask("Consumer group id", group_id, project_name, rules.check_group_id)
        answers = Answers(project_name, package, topics, group_id, requirement)
        target = create_project(answers, output_dir, force=force, codegen=codegen)
    except ScaffoldError as exc:
        raise _fail(exc) from None
    typer.echo(f"created {target} (toolkit: {answers.context()['toolkit_requirement']})")
    typer.echo(f"next:\n  cd {target}\n  make test   # venv, install, unit + integration tests (broker at "
               "KAFKA_BOOTSTRAP_SERVERS)\n  make run")


def main() -> None:
    try:
        app()
    except EpistleError as exc:  # a command forgot to translate: still no traceback for user errors
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(1)


if __name__ == "__main__":
    main()
