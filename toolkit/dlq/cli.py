"""``epistle dlq``: stats, show, replay and tail a dead-letter topic. Only typer is imported here; each
command imports the Kafka client and the settings when it runs, so ``epistle --help`` stays light.

Exit codes: 0 done; 1 an error (no broker, no such topic, a record replay refused, invalid settings); 2 an
invalid option; 130 a replay interrupted (Ctrl-C or SIGTERM: what was acknowledged is recorded).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer

from toolkit.errors import EpistleError, InvalidArgument

dlq_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Dead-letter topics (Kafka) and queues (RabbitMQ, --broker rabbitmq): count, show, follow and replay "
    "their records (docs/dead-letters.md).",
)

Topic = Annotated[
    str, typer.Argument(metavar="TOPIC", show_default=False, help="The dead-letter topic, e.g. orders.dlq.")
]
Stages = Annotated[
    list[str] | None,
    typer.Option(
        "--stage",
        metavar="STAGE",
        show_default=False,
        help="Only these stages (repeatable): decode, envelope, schema, validation, model, routing, handler, "
        "retries_exhausted.",
    ),
]
Reason = Annotated[
    str | None,
    typer.Option("--reason", metavar="TEXT", show_default=False, help="Only reasons containing this text (any case)."),
]
MessageTypes = Annotated[
    list[str] | None,
    typer.Option(
        "--message-type",
        metavar="TYPE",
        show_default=False,
        help="Only this messageType of the original's header (repeatable).",
    ),
]
Partitions = Annotated[
    list[int] | None,
    typer.Option(
        "--partition",
        metavar="N",
        min=0,
        show_default=False,
        help="Only this partition of the dead-letter topic (repeatable).",
    ),
]
FromOffset = Annotated[
    int | None,
    typer.Option(
        "--from-offset",
        metavar="OFFSET",
        min=0,
        show_default=False,
        help="Only dead-letter offsets from this one (inclusive).",
    ),
]
ToOffset = Annotated[
    int | None,
    typer.Option(
        "--to-offset",
        metavar="OFFSET",
        min=0,
        show_default=False,
        help="Only dead-letter offsets up to this one (inclusive).",
    ),
]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="TIME",
        show_default=False,
        help="Only dead-lettered at or after this time: ISO-8601 (UTC unless it has an offset) or a time ago "
        "(90s, 15m, 2h, 7d).",
    ),
]
Until = Annotated[
    str | None,
    typer.Option(
        "--until",
        metavar="TIME",
        show_default=False,
        help="Only dead-lettered before this time (same forms as --since).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="JSON instead of text.")]
Broker = Annotated[
    str | None,
    typer.Option(
        "--broker",
        metavar="BROKER",
        show_default=False,
        help="kafka or rabbitmq (default: EPISTLE_BROKER, else kafka). On RabbitMQ TOPIC is the dead-letter "
        "queue (<queue>.dlq) at RABBITMQ_URL; its partition is 0 and an offset is a position in the queue.",
    ),
]


def _fail(exc: EpistleError, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _warn(text: str) -> None:
    typer.secho(f"warning: {text}", err=True, fg=typer.colors.YELLOW)


def _selection(stages, reason, message_types, partitions, from_offset, to_offset, since, until):
    from toolkit.dlq.letters import Selection, parse_time

    try:
        return Selection(
            stages=frozenset(stages or ()),
            reason=reason or None,
            message_types=frozenset(message_types or ()),
            partitions=frozenset(partitions or ()),
            from_offset=from_offset,
            to_offset=to_offset,
            since_ms=None if since is None else parse_time("--since", since),
            until_ms=None if until is None else parse_time("--until", until),
        )
    except InvalidArgument as exc:
        raise _fail(exc, 2) from None


RABBITMQ_TIMEOUT_S = 30.0  # how long the RabbitMQ commands wait for the broker to answer


def _settings(broker: str | None = None):
    """(backend module, its connection settings, dead-letter suffix, broker wait): Kafka's (KAFKA_*) or
    RabbitMQ's (RABBITMQ_URL), as ``--broker`` or EPISTLE_BROKER says; EPISTLE_DLQ_SUFFIX.

    Raises:
        ConfigError: ``broker`` is neither, or a setting is invalid.
    """
    import logging

    from toolkit.errors import ConfigError
    from toolkit.settings import load_settings

    if broker is not None and broker not in ("kafka", "rabbitmq"):
        raise ConfigError(f"--broker {broker!r}: use kafka or rabbitmq", setting="--broker")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = load_settings(**({"consumer__broker": broker} if broker else {}))
    suffix = settings.consumer.dlq_suffix
    if settings.consumer.broker == "rabbitmq":
        from toolkit.dlq import rabbit

        return rabbit, settings.rabbitmq.url.get_secret_value(), suffix, RABBITMQ_TIMEOUT_S
    from toolkit.dlq import kafka

    return kafka, settings.kafka.client_config(), suffix, settings.kafka.startup_timeout_s


class _Invalid:
    """Records that are not dead letters: each of the first few named on stderr, then a count."""

    SHOWN = 5

    def __init__(self) -> None:
        self.count = 0

    def add(self, error: Exception) -> None:
        self.count += 1
        if self.count <= self.SHOWN:
            _warn(f"skipped, not a dead letter: {error}")

    def summary(self, topic: str) -> None:
        if self.count:
            _warn(
                f"{self.count} record(s) of {topic} are not dead letters of this toolkit and were skipped "
                "(`epistle dlq show` names them)"
            )


@dlq_app.command()
def stats(
    topic: Topic,
    stage: Stages = None,
    reason: Reason = None,
    message_type: MessageTypes = None,
    partition: Partitions = None,
    from_offset: FromOffset = None,
    to_offset: ToOffset = None,
    since: Since = None,
    until: Until = None,
    as_json: AsJson = False,
    broker: Broker = None,
) -> None:
    """Count the dead letters by stage, reason, messageType, schema version and hour dead-lettered.

    Reads the topic as it is now, from its first record (or the filters' range) to its last, with a
    throwaway consumer group that commits nothing. Records that are not dead letters are counted and
    skipped with a warning.
    """
    selection = _selection(stage, reason, message_type, partition, from_offset, to_offset, since, until)
    try:
        from toolkit.dlq.letters import Counts, NotADeadLetter

        backend, config, suffix, timeout_s = _settings(broker)
        counts = Counts(topic)
        invalid = _Invalid()
        for record in backend.read(config, topic, selection, suffix=suffix, timeout_s=timeout_s):
            if isinstance(record, NotADeadLetter):
                counts.add_invalid(record)
                invalid.add(record)
            elif selection.takes(record):
                counts.add(record)
    except EpistleError as exc:
        raise _fail(exc) from None
    typer.echo(json.dumps(counts.as_json(), ensure_ascii=False, indent=2) if as_json else counts.table())
    invalid.summary(topic)


@dlq_app.command()
def show(
    topic: Topic,
    stage: Stages = None,
    reason: Reason = None,
    message_type: MessageTypes = None,
    partition: Partitions = None,
    from_offset: FromOffset = None,
    to_offset: ToOffset = None,
    since: Since = None,
    until: Until = None,
    as_json: AsJson = False,
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=0, help="Show at most this many (0: all).")] = 100,
    broker: Broker = None,
) -> None:
    """Show the dead letters one by one: where and when, the stage and reason, the details, where the
    original came from, and the original decoded (JSON, else text, else base64).

    --json writes one JSON object per line (JSON Lines): the dead letter's fields, its coordinates and the
    original decoded.
    """
    selection = _selection(stage, reason, message_type, partition, from_offset, to_offset, since, until)
    shown = 0
    more = False
    try:
        from toolkit.dlq.letters import NotADeadLetter, render, to_json

        backend, config, suffix, timeout_s = _settings(broker)
        invalid = _Invalid()
        for record in backend.read(config, topic, selection, suffix=suffix, timeout_s=timeout_s):
            if isinstance(record, NotADeadLetter):
                invalid.add(record)
                continue
            if not selection.takes(record):
                continue
            if limit and shown >= limit:
                more = True
                break
            shown += 1
            if as_json:
                typer.echo(json.dumps(to_json(record), ensure_ascii=False))
            else:
                typer.echo(render(record) + "\n")
    except EpistleError as exc:
        raise _fail(exc) from None
    invalid.summary(topic)
    if more:
        typer.echo(f"(stopped at --limit {limit}: there are more; --limit 0 shows all)", err=True)
    elif not shown:
        typer.echo(f"no dead letter of {topic} to show", err=True)


@dlq_app.command()
def tail(
    topic: Topic,
    stage: Stages = None,
    reason: Reason = None,
    message_type: MessageTypes = None,
    partition: Partitions = None,
    from_offset: FromOffset = None,
    since: Since = None,
    as_json: AsJson = False,
    broker: Broker = None,
) -> None:
    """Follow the dead-letter topic: print each new dead letter as it comes (from --since or --from-offset
    when given), until Ctrl-C or SIGTERM (exit 0)."""
    import signal

    selection = _selection(stage, reason, message_type, partition, from_offset, None, since, None)
    shown = 0

    def started(starts: dict[int, int]) -> None:
        where = ", ".join(f"{p}@{o}" for p, o in sorted(starts.items())) or "no partition"
        typer.echo(f"following {topic} from {where} (Ctrl-C stops)", err=True)

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        from toolkit.dlq.letters import NotADeadLetter, render, to_json

        backend, config, suffix, timeout_s = _settings(broker)
        invalid = _Invalid()
        for record in backend.follow(config, topic, selection, suffix=suffix, timeout_s=timeout_s, on_start=started):
            if isinstance(record, NotADeadLetter):
                invalid.add(record)
                continue
            if not selection.takes(record):
                continue
            shown += 1
            typer.echo(json.dumps(to_json(record), ensure_ascii=False) if as_json else render(record) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        typer.echo(f"stopped: {shown} dead letter(s) shown", err=True)
    except EpistleError as exc:
        raise _fail(exc) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Progress:
    """The replay's progress on stderr: a rich progress bar on a terminal, else a plain line every few
    seconds (logs, CI)."""

    def __init__(self, topic: str, enabled: bool) -> None:
        self.topic = topic
        self.bar = None
        self.task = None
        self.last = time.monotonic()  # the first plain line after 2 s: a short run prints only its summary
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("replay {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(topic, total=None, counts="")
        self.enabled = enabled

    @staticmethod
    def counts(report, verb: str = "replayed") -> str:
        parts = [f"{report.replayed} {verb}"]
        for value, label in (
            (report.already, "already replayed (skipped)"),
            (report.again, "of records that failed again after a replay (skipped; --force)"),
            (report.passed, "not selected"),
            (report.invalid, "not dead letters (skipped)"),
            (report.recovered, "found sent by an interrupted run (recorded)"),
        ):
            if value:
                parts.append(f"{value} {label}")
        return ", ".join(parts)

    def __call__(self, report) -> None:
        if not self.enabled:
            return
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=report.read, total=report.total or None, counts=self.counts(report))
            return
        now = time.monotonic()
        if now - self.last >= 2.0:
            self.last = now
            typer.echo(f"replay {self.topic}: {report.read}/{report.total} read, {self.counts(report)}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@dlq_app.command()
def replay(
    topic: Topic,
    stage: Stages = None,
    reason: Reason = None,
    message_type: MessageTypes = None,
    partition: Partitions = None,
    from_offset: FromOffset = None,
    to_offset: ToOffset = None,
    since: Since = None,
    until: Until = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="TOPIC",
            show_default=False,
            help="Replay into this topic instead of each original's source topic (never a dead-letter topic).",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            metavar="GROUP",
            show_default=False,
            help="The consumer group that records what was replayed (default: epistle-dlq-replay.<TOPIC>).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be replayed; send nothing, record nothing.")
    ] = False,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate", metavar="N", min=0.001, show_default=False, help="At most this many records per second."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replay also what the group recorded as replayed, and dead letters of records "
            "that were replayed already and failed again.",
        ),
    ] = False,
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid", help="Skip records that are not dead letters (else the replay stops at the first)."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    broker: Broker = None,
) -> None:
    """Replay the originals of dead letters (key, value, headers and timestamp exact) into their source topic
    or --to, each into the partition it came from, with an epistle-replayed-from header
    (<dlq topic>:<partition>:<offset>).

    Resumable: the group (--group) records each dead letter once the broker acknowledged its replay (acks=all,
    idempotent producer), so running the same command again after an interruption, even kill -9, goes on
    where it stopped: nothing is sent twice, nothing is skipped. A dead letter the group recorded is not
    replayed again, nor one whose original was a replayed record that failed again, unless --force. Never
    writes into a dead-letter topic. Exit 130 when interrupted; run the same command again to go on.

    On RabbitMQ (--broker rabbitmq) each original goes back to the queue it came from (or --to), published
    with publisher confirms; its dead letter is acknowledged (removed) only after the confirm, and what is
    not replayed stays in the dead-letter queue. --group is not used there.
    """
    import signal

    selection = _selection(stage, reason, message_type, partition, from_offset, to_offset, since, until)

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    def planned(letter, target: str, target_partition: int) -> None:
        if dry_run:
            typer.echo(
                f"would replay {letter.where} -> {target}:{target_partition}  stage {letter.stage}  "
                f"{letter.reason[:120]}"
            )

    from toolkit.dlq import kafka

    group = group or kafka.default_group(topic)
    recorded = f"recorded in group {group}"
    report = kafka.ReplayReport()
    progress = _Progress(topic, not quiet and not dry_run)

    def seen(current: kafka.ReplayReport) -> None:
        nonlocal report
        report = current
        progress(current)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        backend, config, suffix, timeout_s = _settings(broker)
        if backend is not kafka:  # the dead letters replayed leave the queue: that is the record
            recorded = f"their dead letters removed from {topic}"
        backend.replay(
            config,
            topic,
            selection,
            to=to,
            group=group,
            rate=rate,
            dry_run=dry_run,
            force=force,
            skip_invalid=skip_invalid,
            suffix=suffix,
            timeout_s=timeout_s,
            on_progress=seen,
            on_letter=planned,
            on_warning=_warn,
        )
    except KeyboardInterrupt:
        progress.close()
        typer.secho(
            f"interrupted: {_Progress.counts(report)}; {recorded}: run the same command again to go on",
            err=True,
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(130) from None
    except EpistleError as exc:
        progress.close()
        if report.replayed and not dry_run:
            typer.echo(f"{_Progress.counts(report)} before it stopped ({recorded})", err=True)
        raise _fail(exc) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress.close()
    where = f"{topic} -> {to}" if to else f"{topic} -> the source topics"
    if dry_run:
        typer.echo(f"dry run, {where}: {_Progress.counts(report, 'would be replayed')}; nothing sent or recorded")
    else:
        typer.echo(f"{where}: {_Progress.counts(report)}; {recorded}")
