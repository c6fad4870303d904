"""The ``epistle`` command line. Each command imports its implementation lazily, so ``--help`` is instant.

Commands that fail because of user input print one clear message (file, field, fix) and exit non-zero;
they never print a traceback for an :class:`~toolkit.errors.EpistleError`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.errors import ConfigError, EpistleError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Ouroboros Epistle Forge: schema-governed Kafka consumers for Python.",
)

SchemasDir = Annotated[Path, typer.Option("--schemas", help="The schemas folder.")]
OutDir = Annotated[Path, typer.Option("--out", help="Where generated models go.")]


def _fail(exc: EpistleError, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@app.command()
def codegen(
    schemas: SchemasDir = Path("schemas"),
    out: OutDir = Path("generated_models"),
    check: Annotated[bool, typer.Option("--check", help="Fail if the committed output is stale.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Render every module, ignoring the hashes in _manifest.json.")
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            show_default=False,
            help="Processes rendering changed modules (default: the cores available).",
        ),
    ] = None,
) -> None:
    """Generate pydantic v2 models from every schema version (make codegen / make codegen-check).

    Only the modules whose schema, generator version or options changed are rendered (the hashes are in
    <out>/_manifest.json); every failing schema file is reported, each with its reason.
    """
    import time

    from toolkit.codegen import run_codegen

    started = time.perf_counter()
    try:
        run = run_codegen(schemas, out, check=check, force=force, workers=jobs)
    except EpistleError as exc:
        raise _fail(exc) from None
    elapsed = time.perf_counter() - started
    build = run.build
    done = f"{len(build.rendered)} module(s) rendered, {len(build.reused)} unchanged (reused)"
    if not check:
        what = f"wrote {len(run.files)} files to {out}/" if run.written else f"{out}/ was already up to date"
        typer.echo(f"codegen: {what} from {schemas}/; {done}; {elapsed:.2f}s")
        return
    if run.differences:
        for difference in run.differences:
            typer.secho(f"stale: {out}/{difference}", err=True, fg=typer.colors.RED)
        typer.secho(
            f"error: {out}/ is out of date with {schemas}/ ({len(run.differences)} file(s)); "
            "run `make codegen` and commit the result",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(1)
    typer.echo(f"codegen-check: {out}/ is up to date with {schemas}/ ({done}; {elapsed:.2f}s)")


RegistryUrl = Annotated[
    str | None,
    typer.Option("--registry-url", help="Confluent-compatible registry API root (default: SCHEMA_REGISTRY_URL)."),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")]
SchemasDirOrSetting = Annotated[
    Path | None, typer.Option("--schemas", help="The schemas folder (default: EPISTLE_SCHEMAS_DIR, else schemas).")
]


def _registry_command_setup(schemas: Path | None, registry_url: str | None):
    """Settings, local subjects and the HTTP registry for ``register`` and ``verify``."""
    from toolkit.layout import load_schemas
    from toolkit.registry.http import ConfluentHttpRegistry
    from toolkit.settings import load_settings

    settings = load_settings(**({"registry__url": registry_url} if registry_url else {}))
    if settings.registry.is_local:
        raise EpistleError(
            "no registry to talk to: pass --registry-url or set SCHEMA_REGISTRY_URL "
            "(e.g. http://127.0.0.1:8081/apis/ccompat/v7)"
        )
    subjects = load_schemas(schemas or settings.consumer.schemas_dir)
    return settings, subjects, ConfluentHttpRegistry.from_settings(settings.registry)


@app.command()
def register(schemas: SchemasDirOrSetting = None, registry_url: RegistryUrl = None, dry_run: DryRun = False) -> None:
    """Push every local schema version, in order, to the registry (identical versions are left alone)."""
    from toolkit.registry.commands import register_schemas

    try:
        settings, subjects, registry = _registry_command_setup(schemas, registry_url)
        with registry:
            typer.echo(f"{'dry run: ' if dry_run else ''}registering {len(subjects)} subject(s) at {registry.url}")
            steps = register_schemas(
                registry,
                subjects,
                dry_run=dry_run,
                strategy=settings.registry.subject_strategy,
                on_step=lambda step: typer.secho(
                    f"  {step}", err=step.failed, fg=typer.colors.RED if step.failed else None
                ),
            )
    except EpistleError as exc:
        raise _fail(exc) from None
    if steps and steps[-1].failed:
        typer.secho(
            f"stopped at {steps[-1].subject} v{steps[-1].version}: nothing after it was "
            f"{'checked' if dry_run else 'registered'}",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(1)
    done = sum(step.action == "registered" for step in steps)
    unchanged = sum(step.action == "unchanged" for step in steps)
    planned = sum(step.action == "would register" for step in steps)
    typer.echo(
        f"would register {planned}, unchanged {unchanged}" if dry_run else f"registered {done}, unchanged {unchanged}"
    )


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
        typer.secho(
            f"{len(report.drifts)} drift(s) between {len(subjects)} local subject(s) and {registry.url}",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(1)
    typer.echo(f"in sync: {report.checked} version(s) of {len(subjects)} subject(s) match {registry.url}")


@app.command()
def check(
    schemas: SchemasDir = Path("schemas"),
    base: Annotated[
        str | None,
        typer.Option(
            "--base", help="Git ref whose version files count as published (default: the merge base with main)."
        ),
    ] = None,
    output: Annotated[str, typer.Option("--format", help="text (for review) or json.")] = "text",
    registry_url: Annotated[
        str | None,
        typer.Option("--registry-url", help="Also ask this Confluent-compatible registry; report where it disagrees."),
    ] = None,
) -> None:
    """Schema checks: valid files, published versions unchanged, compatibility per mode (make check)."""
    from toolkit.compat.check import run_check
    from toolkit.compat.report import github_annotations, render_json, render_text

    if output not in ("text", "json"):
        raise _fail(EpistleError(f"--format {output!r}: use text or json"), 2)
    try:
        registry = None
        if registry_url:  # its credentials and TLS come from SCHEMA_REGISTRY_* as for register and verify
            from toolkit.settings import load_settings  # pydantic-settings: only when a registry is asked

            registry = load_settings(registry__url=registry_url).registry
        report = run_check(schemas, base=base, registry=registry)
    except EpistleError as exc:
        raise _fail(exc) from None
    typer.echo(render_json(report) if output == "json" else render_text(report))
    annotations = github_annotations(report) if output == "text" else ""
    if annotations:
        typer.echo(annotations)
    raise typer.Exit(0 if report.ok else 1)


_NewName = Annotated[
    str | None, typer.Argument(help="Project (folder and distribution) name, e.g. orders-consumer.", show_default=False)
]
_NewPackage = Annotated[
    str | None,
    typer.Option(
        "--package", "--package-name", help="Python package name (default: from the project name).", show_default=False
    ),
]
_NewTopics = Annotated[
    str | None,
    typer.Option("--topics", help="Topics to consume, comma-separated (default: orders).", show_default=False),
]
_NewGroup = Annotated[
    str | None,
    typer.Option("--group-id", help="Kafka consumer group id (default: the project name).", show_default=False),
]
_NewOutput = Annotated[Path, typer.Option("--output-dir", "-o", help="Where the project folder goes.")]
_NewWheel = Annotated[
    Path | None,
    typer.Option("--toolkit-wheel", help="The project installs the toolkit from this built wheel.", show_default=False),
]
_NewToolkitPath = Annotated[
    Path | None,
    typer.Option(
        "--toolkit-path", help="... or from this source checkout (default: the one running this).", show_default=False
    ),
]


@app.command()
def new(
    project_name: _NewName = None,
    package: _NewPackage = None,
    topics: _NewTopics = None,
    group_id: _NewGroup = None,
    output_dir: _NewOutput = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Write over an existing project folder.")] = False,
    no_input: Annotated[bool, typer.Option("--no-input", help="Never prompt: use the defaults.")] = False,
    toolkit_wheel: _NewWheel = None,
    toolkit_path: _NewToolkitPath = None,
    codegen: Annotated[
        bool, typer.Option("--codegen/--no-codegen", help="Generate the models now (else `make setup` does).")
    ] = True,
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
            raise ScaffoldError(
                "project_name: missing -- fix: give it as the first argument, "
                "e.g. epistle new orders-consumer --no-input",
                field="project_name",
            )
        requirement = toolkit_requirement(toolkit_wheel, toolkit_path)
        project_name = ask("Project name", project_name, "orders-consumer", rules.check_project_name)
        package = ask("Python package", package, rules.default_package_name(project_name), rules.check_package_name)
        topics = ask("Topics (comma-separated)", topics, "orders", rules.check_topics)
        group_id = ask("Consumer group id", group_id, project_name, rules.check_group_id)
        answers = Answers(project_name, package, topics, group_id, requirement)
        target = create_project(answers, output_dir, force=force, codegen=codegen)
    except ScaffoldError as exc:
        raise _fail(exc) from None
    typer.echo(f"created {target} (toolkit: {answers.context()['toolkit_requirement']})")
    typer.echo(
        f"next:\n  cd {target}\n  make test   # venv, install, unit + integration tests (broker at "
        "KAFKA_BOOTSTRAP_SERVERS)\n  make run"
    )


def _load_app_function(ref: str):
    """``package.module:function`` -> the function; the current directory is importable, as with
    ``python -m``. A missing module, attribute or a non-callable is a ConfigError naming ``--app``."""
    import importlib
    import os

    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"--app {ref!r}: use package.module:function, e.g. examples.shop.app:register", setting="--app"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                f"--app {ref!r}: no module named {exc.name!r} in the current directory "
                f"({os.getcwd()}) or the installed packages; run from the project root",
                setting="--app",
            ) from None
        raise  # the app module itself imports something missing: its traceback is the useful part
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"--app {ref!r}: module {module_name!r} has no attribute {attr!r}", setting="--app")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"--app {ref!r}: {attr} is not a function", setting="--app")
    return target


def _app_arguments(function, consumer, settings) -> tuple:
    """``(consumer, settings)`` when the function takes two arguments, else ``(consumer,)``."""
    import inspect

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin or C callable: assume the documented form
        return consumer, settings
    for arguments in ((consumer, settings), (consumer,)):
        try:
            signature.bind(*arguments)
            return arguments
        except TypeError:
            continue
    raise ConfigError(
        f"--app: {getattr(function, '__qualname__', function)}{signature} must take (consumer, settings) or (consumer)",
        setting="--app",
    )


def _preflight(settings, registry) -> None:
    """Fail fast, naming the setting, when an HTTP registry cannot be reached at start-up (later outages
    are the runtime's job: it pauses and retries). The broker and the topics are checked by
    ``KafkaConsumer.start()`` itself (BrokerUnreachable; ConfigError for a missing topic with --until-idle)."""
    if not settings.registry.is_local:
        try:
            registry.registry.subjects()
        except EpistleError as exc:
            raise ConfigError(
                f"cannot use the registry at SCHEMA_REGISTRY_URL={settings.registry.url}: {exc}",
                setting="SCHEMA_REGISTRY_URL",
            ) from None


@app.command()
def run(
    app_ref: Annotated[
        str,
        typer.Option(
            "--app",
            show_default=False,
            help="The function that registers your handlers, as package.module:function "
            "(e.g. examples.shop.app:register); called with (consumer, settings) or (consumer).",
        ),
    ],
    registry_url: RegistryUrl = None,
    group_id: Annotated[
        str | None, typer.Option("--group-id", help="Consumer group (default: KAFKA_GROUP_ID).", show_default=False)
    ] = None,
    topics: Annotated[
        str | None,
        typer.Option(
            "--topics",
            show_default=False,
            help="Topics to subscribe, comma-separated (default: every topic the app registered a handler for).",
        ),
    ] = None,
    until_idle: Annotated[
        bool,
        typer.Option("--until-idle", help="Exit 0 once every assigned partition is drained and nothing is in flight."),
    ] = False,
    max_workers: Annotated[
        int | None,
        typer.Option(
            "--max-workers", min=1, show_default=False, help="Handlers running at once (default: EPISTLE_MAX_WORKERS)."
        ),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            show_default=False,
            help="kafka or rabbitmq (default: EPISTLE_BROKER, else kafka). RabbitMQ reads RABBITMQ_URL and "
            "consumes one queue per topic.",
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            show_default=False,
            help="group (a consumer group: partitions split between the consumers, order kept) or share (a Kafka "
            "share group, Kafka 4.2+: every consumer shares every partition, records acknowledged one by one, "
            "no order) (default: EPISTLE_CONSUMER_MODE, else group).",
        ),
    ] = None,
    kafka_config: Annotated[
        list[str] | None,
        typer.Option(
            "-X",
            "--kafka-config",
            show_default=False,
            help="An extra librdkafka consumer property, key=value (repeatable), e.g. -X session.timeout.ms=10000.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    tracing: Annotated[
        bool | None,
        typer.Option(
            "--tracing/--no-tracing",
            show_default=False,
            help="Trace every record with OpenTelemetry, exporters from the OTEL_* variables (default: "
            "EPISTLE_TRACING; needs the tracing extra).",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            show_default=False,
            help="Serve Prometheus metrics on /metrics and the probes /healthz and /readyz on this port "
            "(default: EPISTLE_METRICS_PORT; unset: off). With --workers N, worker i serves on this port + i.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            show_default=False,
            help="Consumer processes of the group, under a supervisor that restarts one that dies "
            "(default: EPISTLE_WORKER_PROCESSES, else 1: the consumer runs in this process).",
        ),
    ] = None,
) -> None:
    """Run the consumer with your handlers until SIGTERM/SIGINT (or, with --until-idle, until drained).

    Settings come from the environment and .env (KAFKA_*, SCHEMA_REGISTRY_*, EPISTLE_*; RABBITMQ_* with
    --broker rabbitmq); the options override them. The app function gets the KafkaConsumer (and the
    Settings, if it takes a second argument), builds the handlers with their dependencies and registers them:

        def register(consumer, settings):
            orders = OrderBook()
            consumer.register_handler("orders", OrderHandler(orders))

    It may be ``async def`` (awaited on the consumer's event loop) and may return a cleanup callable
    (sync or async), called after the consumer stopped and committed. The current directory is importable,
    as with ``python -m``, so ``epistle run --app examples.shop.app:register`` works from the repo root.

    Log lines go to stderr as text, or as one JSON object a line with EPISTLE_LOG_FORMAT=json. With
    --tracing (EPISTLE_TRACING=1) each record gets an OpenTelemetry span (docs/tracing.md).
    With --metrics-port (or EPISTLE_METRICS_PORT) an HTTP server serves Prometheus metrics and the health
    probes for the whole run (docs/operations.md).

    SIGTERM/SIGINT: stop fetching, finish the handlers in flight, commit, exit 0. The per-topic counters
    are printed on exit. Exit 1: invalid settings or options (one message naming the setting), the
    broker or registry unreachable at start-up, or the consumer stopped on a failure (ErrorPolicy STOP).

    --workers N runs N such processes in the group: a worker that dies is restarted with backoff, one that
    keeps dying at start-up makes the supervisor stop the others and exit 1 with its last error, and
    SIGTERM/SIGINT stop every worker as above (docs/operations.md, "Worker processes").
    """
    import asyncio
    import inspect
    import logging

    from toolkit.consumer import ConsumerStopped, KafkaConsumer
    from toolkit.registry import CachedRegistry, registry_from_settings
    from toolkit.settings import load_settings

    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise _fail(EpistleError(f"--log-level {log_level!r}: use DEBUG, INFO, WARNING or ERROR"), 2)

    async def serve(consumer: KafkaConsumer, register, arguments: tuple) -> None:
        cleanup = register(*arguments)
        if inspect.isawaitable(cleanup):
            cleanup = await cleanup
        if cleanup is not None and not callable(cleanup):
            raise ConfigError(
                f"--app {app_ref!r} returned {type(cleanup).__name__}; return None or a cleanup callable",
                setting="--app",
            )
        try:
            await asyncio.to_thread(_preflight, settings, registry)
            await consumer.start(handle_signals=True)
        finally:
            if cleanup is not None:
                result = cleanup()
                if inspect.isawaitable(result):
                    await result

    provider = None
    try:
        if broker is not None and broker not in ("kafka", "rabbitmq"):
            raise ConfigError(f"--broker {broker!r}: use kafka or rabbitmq", setting="--broker")
        if mode is not None and mode.strip().lower() not in ("group", "share"):
            raise ConfigError(f"--mode {mode!r}: use group or share", setting="--mode")
        overrides: dict[str, Any] = {
            "registry__url": registry_url,
            "kafka__group_id": group_id,
            "consumer__max_workers": max_workers,
            "consumer__broker": broker,
            "consumer__consumer_mode": mode.strip().lower() if mode is not None else None,
            "consumer__worker_processes": workers,
        }
        if workers is not None and not 1 <= workers <= 64:
            raise _fail(
                ConfigError(
                    f"--workers {workers}: give the number of consumer processes, from 1 to 64 "
                    "(1: the consumer runs in this process, as without --workers)",
                    setting="--workers",
                ),
                2,
            )
        settings = load_settings(**{key: value for key, value in overrides.items() if value is not None})
        from toolkit.observability.logs import configure_logging

        configure_logging(level, settings.consumer.log_format)
        subscribed = None
        if topics is not None:
            subscribed = [topic.strip() for topic in topics.split(",") if topic.strip()]
            if not subscribed:
                raise ConfigError(f"--topics {topics!r}: give topic names, comma-separated", setting="--topics")
        extra: dict[str, str] = {}
        for item in kafka_config or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(
                    f"-X {item!r}: use key=value, e.g. -X session.timeout.ms=10000", setting="--kafka-config"
                )
            extra[key.strip()] = value.strip()
        register = _load_app_function(app_ref)  # checked here once, with --workers too
        if settings.consumer.worker_processes > 1:
            from toolkit.consumer.workers import run_workers

            worker_args = ["run", "--app", app_ref, "--log-level", log_level, *(["--until-idle"] * until_idle)]
            for option, given in (
                ("--registry-url", registry_url),
                ("--group-id", group_id),
                ("--topics", topics),
                ("--max-workers", max_workers),
                ("--broker", broker),
                ("--mode", mode),
            ):
                worker_args += [option, str(given)] if given is not None else []
            for item in kafka_config or []:
                worker_args += ["-X", item]
            worker_args += [] if tracing is None else ["--tracing" if tracing else "--no-tracing"]
            port = metrics_port if metrics_port is not None else settings.consumer.metrics_port
            count = settings.consumer.worker_processes
            raise typer.Exit(run_workers(worker_args, settings, count=count, metrics_port=port))
        registry: CachedRegistry[Any] = CachedRegistry.from_settings(
            registry_from_settings(settings.registry, settings.consumer.schemas_dir), settings.registry
        )
        port = metrics_port if metrics_port is not None else settings.consumer.metrics_port
        server = None
        middleware: list[Any] = []
        if settings.consumer.tracing if tracing is None else tracing:  # outermost: the others' work in its span
            from toolkit.observability.tracing import TracingMiddleware, configure_tracing

            provider = configure_tracing(service_name=settings.kafka.group_id)
            middleware.append(TracingMiddleware(group_id=settings.kafka.group_id, system=settings.consumer.broker))
        if port is not None:
            from toolkit.observability import MetricsServer, PrometheusMiddleware

            metrics = PrometheusMiddleware(health_timeout_s=settings.consumer.health_timeout_s)
            middleware.append(metrics)
            server = MetricsServer(metrics, port, address=settings.consumer.metrics_address)
        transport = None
        if settings.consumer.broker == "rabbitmq":
            if extra:
                raise ConfigError(
                    "-X sets librdkafka properties: it applies to --broker kafka only; RabbitMQ "
                    "reads RABBITMQ_* settings",
                    setting="--kafka-config",
                )
            if settings.consumer.consumer_mode == "share":
                raise ConfigError(
                    "share groups are Kafka's (4.2+): use --mode share with --broker kafka; RabbitMQ queues are "
                    "shared by their consumers already",
                    setting="--mode",
                )
            from toolkit.consumer.amqp import RabbitTransport

            transport = RabbitTransport.from_settings(settings.rabbitmq)
        consumer = KafkaConsumer.from_settings(
            settings,
            registry=registry,
            topics=subscribed,
            stop_when_idle=until_idle,
            kafka_config=extra,
            middleware=middleware,
            transport=transport,
        )
        arguments = _app_arguments(register, consumer, settings)
        try:
            if server is not None:
                server.start()
            asyncio.run(serve(consumer, register, arguments))
        except ConsumerStopped as exc:
            typer.echo(consumer.stats.table())
            raise _fail(exc) from None
        finally:
            if provider is not None:
                provider.shutdown()  # exports the spans still batched
            if server is not None:
                server.close()
        typer.echo(consumer.stats.table())
    except EpistleError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:  # Ctrl-C before the consumer installed its handlers: nothing was consumed
        raise typer.Exit(130) from None


from toolkit.dlq.cli import dlq_app  # noqa: E402 - typer only; its commands import the rest when they run

app.add_typer(dlq_app, name="dlq")


def main() -> None:
    try:
        app()
    except EpistleError as exc:  # a command forgot to translate: still no traceback for user errors
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(1)


if __name__ == "__main__":
    main()
