"""What `epistle new` accepts, and what it derives from the answers: pure, standard library only.

The cookiecutter template's hooks load this very file (by path, from the folder above the template), so the
same rules apply whether the template runs through ``epistle new`` or through ``cookiecutter`` directly.
That is why nothing here imports the toolkit: the hooks may run in an environment without it.

Every problem is a :class:`Problem` naming the field (the ``epistle new`` option), the value, what is wrong
and the fix.
"""

from __future__ import annotations

import keyword
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

# PEP 508 distribution names; also a safe folder name (no separators, no leading dot).
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
_SCHEMA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*$")  # toolkit.layout's rule for subject folders
_WORD = re.compile(r"[A-Za-z0-9]+")
MAX_TOPIC_LENGTH = 249  # Kafka's limit (Topic.MAX_NAME_LENGTH)
MAX_PROJECT_NAME_LENGTH = 100
TOOLKIT_DISTRIBUTION = "ouroboros-epistle-forge"

# Top-level names the generated project already uses, or imports from its dependencies.
RESERVED_PACKAGES = frozenset(
    {
        "toolkit",
        "generated_models",
        "tests",
        "schemas",
        "confluent_kafka",
        "pydantic",
        "pydantic_settings",
        "fastavro",
        "jsonschema",
        "httpx",
        "typer",
        "avro",
        "pytest",
        "setup",
        "site",
    }
)


@dataclass(frozen=True)
class Problem:
    """One invalid answer: ``field`` is the ``epistle new`` option (and the cookiecutter variable)."""

    field: str
    value: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field} {self.value!r}: {self.problem} -- fix: {self.fix}"


@dataclass(frozen=True)
class TopicPlan:
    """What the scaffold generates for one topic."""

    topic: str
    schema_name: str  # the subject folder under schemas/
    module: str  # <package>.handlers.<module>
    handler_class: str
    model_package: str  # generated_models.<model_package>.v1 (toolkit.codegen's package_name rule)
    model_class: str  # the JSON Schema title, so codegen names the root class exactly this


def split_topics(text: str) -> list[str]:
    """``"orders, payments"`` -> ``["orders", "payments"]`` (an empty entry stays, as '', to be reported)."""
    if not text.strip():
        return []
    return [part.strip() for part in text.split(",")]


def check_project_name(name: str) -> list[Problem]:
    fix = "use letters, digits, '-', '_' or '.', starting and ending with a letter or digit, e.g. orders-consumer"
    if not name.strip():
        return [Problem("project_name", name, "is empty", fix)]
    if len(name) > MAX_PROJECT_NAME_LENGTH:
        return [
            Problem(
                "project_name", name, f"is longer than {MAX_PROJECT_NAME_LENGTH} characters", "choose a shorter name"
            )
        ]
    if not _PROJECT_NAME.match(name):
        return [Problem("project_name", name, "is not a valid project (distribution and folder) name", fix)]
    return []


def default_package_name(project_name: str) -> str:
    """``orders-consumer`` -> ``orders_consumer``."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", project_name).strip("_").lower()


def check_package_name(name: str) -> list[Problem]:
    fix = "use a lower-case Python identifier, e.g. orders_consumer"
    if not name:
        return [Problem("package_name", name, "is empty", fix)]
    if not name.isidentifier() or not name.isascii():
        return [Problem("package_name", name, "is not a Python identifier", fix)]
    if keyword.iskeyword(name):
        return [Problem("package_name", name, "is a Python keyword", "add a word, e.g. " + name + "_service")]
    if name != name.lower():
        return [
            Problem(
                "package_name",
                name,
                "has upper-case letters (PEP 8 package names are lower case)",
                "use " + name.lower(),
            )
        ]
    if name in sys.stdlib_module_names or name in RESERVED_PACKAGES:
        return [
            Problem(
                "package_name",
                name,
                "shadows a module the service imports (standard library, toolkit or generated_models)",
                "add a word, e.g. " + name + "_service",
            )
        ]
    return []


def check_topic(topic: str) -> list[Problem]:
    """Kafka's own rules for a topic name (kafka.common.internals.Topic.validate)."""
    if not topic:
        return [
            Problem(
                "topics",
                topic,
                "a topic name is empty",
                "give comma-separated names without empty entries, e.g. orders,payments",
            )
        ]
    if topic in (".", ".."):
        return [Problem("topics", topic, "Kafka refuses '.' and '..' as topic names", "choose another name")]
    if len(topic) > MAX_TOPIC_LENGTH:
        return [
            Problem(
                "topics",
                topic[:40] + "...",
                f"is {len(topic)} characters; Kafka allows at most {MAX_TOPIC_LENGTH}",
                "shorten the topic name",
            )
        ]
    if not _TOPIC_CHARS.match(topic):
        bad = "".join(sorted({c for c in topic if not re.match(r"[A-Za-z0-9._-]", c)}))
        return [
            Problem(
                "topics",
                topic,
                f"has characters Kafka refuses: {bad!r}",
                "use only ASCII letters, digits, '.', '_' and '-'",
            )
        ]
    if topic.startswith("__"):
        return [
            Problem(
                "topics",
                topic,
                "names starting with '__' are Kafka's internal topics",
                "choose a name without the leading '__'",
            )
        ]
    return []


def check_topics(text: str) -> list[Problem]:
    topics = split_topics(text)
    if not topics:
        return [Problem("topics", text, "no topic given", "give at least one topic, e.g. orders or orders,payments")]
    problems = [p for topic in topics for p in check_topic(topic)]
    if problems:
        return problems
    seen: dict[str, str] = {}
    for topic in topics:
        # Kafka itself refuses topics that differ only by '.' versus '_' (their metric names collide); the
        # scaffold needs one handler module and class per topic, so names mapping to the same collide too.
        schema_name = schema_name_for(topic)
        for key in (package_name(schema_name), pascal(schema_name)):
            if key in seen:
                same = "is listed twice" if seen[key] == topic else f"collides with {seen[key]!r}"
                return [
                    Problem(
                        "topics",
                        topic,
                        f"{same}: both map to the handler module or class {key!r} "
                        "(Kafka also refuses topics that differ only by '.' and '_')",
                        "list each topic once, with names that differ by more than '.', '_', '-' or case",
                    )
                ]
        seen[package_name(schema_name)] = seen[pascal(schema_name)] = topic
    return []


def check_group_id(group_id: str) -> list[Problem]:
    if not group_id.strip():
        return [Problem("group_id", group_id, "is empty", "give a consumer group id, e.g. orders-consumer")]
    if any(c.isspace() or not c.isprintable() for c in group_id) or len(group_id) > MAX_TOPIC_LENGTH:
        return [
            Problem(
                "group_id",
                group_id,
                "has spaces or control characters, or is too long for a .env value",
                "use letters, digits, '.', '_' or '-'",
            )
        ]
    return []


def check_answers(project_name: str, package_name: str, topics: str, group_id: str) -> list[Problem]:
    """Every problem with the answers, in field order (empty when all are valid)."""
    return (
        check_project_name(project_name)
        + check_package_name(package_name)
        + check_topics(topics)
        + check_group_id(group_id)
    )


def schema_name_for(topic: str) -> str:
    """The example schema's schemaName (its folder under schemas/): the topic when it is a valid one."""
    return topic if _SCHEMA_NAME.match(topic) else f"topic-{topic}"


def package_name(schema_name: str) -> str:
    """toolkit.codegen.render.package_name, repeated here so this file needs only the standard library."""
    name = re.sub(r"[^0-9a-zA-Z]+", "_", schema_name).strip("_").lower() or "schema"
    return f"{name}_" if keyword.iskeyword(name) or name[0].isdigit() else name


def pascal(text: str) -> str:
    name = "".join(word[:1].upper() + word[1:] for word in _WORD.findall(text)) or "Model"
    return f"Model{name}" if name[0].isdigit() else name


def plan_topics(topics: str) -> list[TopicPlan]:
    """The per-topic files, for valid ``topics`` (check them first)."""
    plans = []
    for topic in split_topics(topics):
        schema_name = schema_name_for(topic)
        ident = package_name(schema_name)
        base = pascal(schema_name)
        plans.append(
            TopicPlan(
                topic=topic,
                schema_name=schema_name,
                module=f"{ident}_handler",
                handler_class=f"{base}Handler",
                model_package=ident,
                model_class=f"{base}Event",
            )
        )
    return plans


def repository_root() -> Path | None:
    """The toolkit's source checkout this file lives in, or None when it runs from an installed wheel."""
    root = Path(__file__).resolve().parents[2]  # <root>/toolkit/scaffold/rules.py
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if project.get("name") == TOOLKIT_DISTRIBUTION and (root / "toolkit").is_dir() else None


def requirement_for(source: Path) -> str:
    """The pip requirement that installs the toolkit from a source folder or a built wheel."""
    return f"{TOOLKIT_DISTRIBUTION} @ {source.resolve().as_uri()}"


def default_toolkit_requirement() -> str:
    """This checkout as a path dependency; the bare name (from a package index) when there is no checkout."""
    root = repository_root()
    return requirement_for(root) if root else TOOLKIT_DISTRIBUTION
