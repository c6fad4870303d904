"""``epistle new``: create a consumer service from the cookiecutter template beside this module.

    create_project(Answers(project_name="orders-consumer", package_name="orders_consumer",
                           topics="orders,payments", group_id="orders-consumer"), output_dir=Path("."))

The answers are checked first (:mod:`toolkit.scaffold.rules`, the same rules the template's own
``pre_gen_project`` hook applies when someone runs ``cookiecutter`` on it directly). The project is generated
into a hidden staging folder inside ``output_dir``, its models are generated there, and only then is it moved
into place, so a failure at any step leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from toolkit import _args
from toolkit.errors import EpistleError, ScaffoldError  # ScaffoldError is re-exported here
from toolkit.scaffold import rules

TEMPLATE_DIR = Path(__file__).resolve().parent / "template"
STAGING_PREFIX = ".epistle-new-"
_OPTIONS = {
    "project_name": "epistle new PROJECT_NAME",
    "package_name": "--package",
    "topics": "--topics",
    "group_id": "--group-id",
}

__all__ = ["TEMPLATE_DIR", "Answers", "ScaffoldError", "check_answers", "create_project", "toolkit_requirement"]


@dataclass(frozen=True)
class Answers:
    """What the template asks; ``toolkit_requirement`` is a pip requirement (:func:`toolkit_requirement`)."""

    project_name: str
    package_name: str
    topics: str
    group_id: str
    toolkit_requirement: str = ""

    def context(self) -> dict[str, str]:
        topics = ",".join(rules.split_topics(self.topics))
        return {
            "project_name": self.project_name,
            "package_name": self.package_name,
            "topics": topics,
            "group_id": self.group_id,
            "toolkit_requirement": self.toolkit_requirement or rules.default_toolkit_requirement(),
        }


def check_answers(answers: Answers) -> None:
    """Raises ScaffoldError listing every invalid answer, each with its field and fix."""
    _args.instance("answers", answers, Answers, "an Answers(project_name, package_name, topics, group_id)")
    for name in ("project_name", "package_name", "topics", "group_id", "toolkit_requirement"):
        _args.text(name, getattr(answers, name))
    problems = rules.check_answers(answers.project_name, answers.package_name, answers.topics, answers.group_id)
    if problems:
        lines = [f"{problem} [{_OPTIONS[problem.field]}]" for problem in problems]
        raise ScaffoldError("invalid answers, nothing was generated:\n  " + "\n  ".join(lines), problems=problems)


def toolkit_requirement(wheel: Path | None = None, path: Path | None = None) -> str:
    """The generated project's dependency on the toolkit: a built wheel, a source checkout, or (neither given)
    this checkout when the toolkit runs from one, else the bare distribution name.

    Raises:
        ScaffoldError: both are given, or the wheel / folder does not exist.
    """
    wheel = None if wheel is None else _args.path("wheel", wheel)
    path = None if path is None else _args.path("path", path)
    if wheel and path:
        raise ScaffoldError("--toolkit-wheel and --toolkit-path both given: choose one", field="toolkit_wheel")
    if wheel is not None:
        if not wheel.is_file() or wheel.suffix != ".whl":
            raise ScaffoldError(
                f"toolkit_wheel {str(wheel)!r}: not a .whl file -- fix: build one with "
                "`pip wheel --no-deps -w dist <toolkit checkout>` and pass its path",
                field="toolkit_wheel",
            )
        return rules.requirement_for(wheel)
    if path is not None:
        if not (path / "pyproject.toml").is_file():
            raise ScaffoldError(
                f"toolkit_path {str(path)!r}: no pyproject.toml there -- fix: pass the "
                "folder of the toolkit's checkout",
                field="toolkit_path",
            )
        return rules.requirement_for(path)
    return rules.default_toolkit_requirement()


def create_project(
    answers: Answers, output_dir: Path | str = ".", *, force: bool = False, codegen: bool = True
) -> Path:
    """Generate the project into ``output_dir/<project_name>`` and return its path.

    ``force`` writes over an existing folder of that name (files the template does not make are kept, as
    with cookiecutter's ``--overwrite-if-exists``). ``codegen`` generates ``generated_models/`` right away,
    with this toolkit's codegen, so the project is complete; without it ``make setup`` does it.

    Raises:
        ScaffoldError: invalid answers, an existing target without ``force``, or a failed step; nothing
            is left behind in any of these cases.
    """
    check_answers(answers)
    output_dir = _args.path("output_dir", output_dir).absolute()
    target = output_dir / answers.project_name
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise ScaffoldError(
                f"output {str(target)!r} exists and is not a folder -- fix: remove it or "
                "choose another --output-dir or project name",
                field="output_dir",
            )
        if not force:
            raise ScaffoldError(
                f"project_name {answers.project_name!r}: folder {str(target)!r} already "
                "exists -- fix: choose another name or --output-dir, or pass --force to "
                "write over it",
                field="project_name",
            )
    created_dirs = _missing_parents(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScaffoldError(
            f"output_dir {str(output_dir)!r}: cannot create it ({exc.strerror}) -- fix: "
            "choose a folder you can write to",
            field="output_dir",
        ) from None
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir))
    try:
        staged = _render(answers, staging)
        if codegen:
            _generate_models(staged)
        _move_into_place(staged, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_created(created_dirs)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return target


def _render(answers: Answers, staging: Path) -> Path:
    from cookiecutter.exceptions import CookiecutterException
    from cookiecutter.main import cookiecutter

    # A private cookiecutter config: no replay file in the user's home, no user defaults mixed in.
    with tempfile.TemporaryDirectory(prefix="epistle-cookiecutter-") as home:
        config = Path(home) / "config.yaml"
        config.write_text(
            f"replay_dir: {Path(home, 'replay').as_posix()!r}\n"
            f"cookiecutters_dir: {Path(home, 'cookiecutters').as_posix()!r}\n",
            encoding="utf-8",
        )
        try:
            project = cookiecutter(
                str(TEMPLATE_DIR),
                no_input=True,
                extra_context=answers.context(),
                output_dir=str(staging / "out"),
                config_file=str(config),
            )
        except CookiecutterException as exc:
            raise ScaffoldError(f"the template failed: {exc}") from exc
    return Path(project)


def _generate_models(project: Path) -> None:
    try:
        from toolkit.codegen import generate_models
    except ImportError:  # a toolkit without codegen: `make setup` generates them with the installed one
        return
    try:
        generate_models(project / "schemas", project / "generated_models")
    except EpistleError as exc:
        raise ScaffoldError(f"generating models for the new project failed: {exc}") from exc


def _move_into_place(staged: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staged, target)  # same file system (the staging folder is inside output_dir): atomic
        return
    shutil.copytree(staged, target, dirs_exist_ok=True)


def _missing_parents(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_created(created: list[Path]) -> None:
    for folder in created:  # deepest first, and only while empty
        try:
            folder.rmdir()
        except OSError:
            return
