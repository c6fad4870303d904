"""Jinja filters for this cookiecutter template (listed in cookiecutter.json's ``_extensions``).

The rules live in ``toolkit/scaffold/rules.py`` beside this template; it is loaded by path so that the
template also works with plain ``cookiecutter`` in an environment without the toolkit installed.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jinja2.ext import Extension

_RULES_NAME = "_epistle_scaffold_rules"


def _rules() -> Any:
    module = sys.modules.get(_RULES_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(
            _RULES_NAME, Path(__file__).resolve().parent.parent / "rules.py"
        )
        assert spec and spec.loader, (
            "toolkit/scaffold/rules.py is missing beside the template"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[_RULES_NAME] = (
            module  # dataclasses look their module up while the class is built
        )
        spec.loader.exec_module(module)
    return module


def scaffold_problems(cookiecutter: dict[str, Any]) -> list[str]:
    """Every invalid answer as one line naming the field, the value, the problem and the fix."""
    problems = _rules().check_answers(
        str(cookiecutter.get("project_name", "")),
        str(cookiecutter.get("package_name", "")),
        str(cookiecutter.get("topics", "")),
        str(cookiecutter.get("group_id", "")),
    )
    return [str(problem) for problem in problems]


def topic_plans(topics: str) -> list[dict[str, str]]:
    """Per topic: topic, schema_name, module, handler_class, model_package, model_class."""
    return [asdict(plan) for plan in _rules().plan_topics(str(topics))]


def default_package_name(project_name: str) -> str:
    return _rules().default_package_name(str(project_name))


def default_toolkit_requirement(_: object = None) -> str:
    return _rules().default_toolkit_requirement()


class ScaffoldFilters(Extension):
    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        environment.filters.update(
            scaffold_problems=scaffold_problems,
            topic_plans=topic_plans,
            default_package_name=default_package_name,
            default_toolkit_requirement=default_toolkit_requirement,
        )
