"""`epistle new` and the template on the file system (real cookiecutter, no broker, a few seconds):
what is generated, existing folders, --force, and that a failure at any step leaves nothing behind."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import toolkit.scaffold as scaffold
from toolkit.cli import app
from toolkit.scaffold import Answers, ScaffoldError, create_project, rules

REPO_ROOT = Path(__file__).resolve().parents[2]

ANSWERS = Answers(
    project_name="orders-consumer",
    package_name="orders_consumer",
    topics="orders, payments.v1",
    group_id="orders-group",
)


@pytest.fixture
def cookiecutter_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A private cookiecutter config: plain cookiecutter then writes no replay file into the home folder."""
    home = tmp_path_factory.mktemp("cookiecutter-home")
    config = home / "config.yaml"
    config.write_text(f"replay_dir: '{home / 'replay'}'\ncookiecutters_dir: '{home / 'templates'}'\n")
    return str(config)


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_generates_a_complete_project(tmp_path: Path) -> None:
    target = create_project(ANSWERS, tmp_path)

    assert target == tmp_path / "orders-consumer"
    assert [p.name for p in tmp_path.iterdir()] == ["orders-consumer"]  # no staging folder left
    files = _tree(target)
    for expected in [
        ".env.example",
        ".github/workflows/schema-check.yml",
        ".gitignore",
        ".pre-commit-config.yaml",
        "Makefile",
        "README.md",
        "pyproject.toml",
        "orders_consumer/__init__.py",
        "orders_consumer/__main__.py",
        "orders_consumer/app.py",
        "orders_consumer/services.py",
        "orders_consumer/handlers/__init__.py",
        "orders_consumer/handlers/orders_handler.py",
        "orders_consumer/handlers/payments_v1_handler.py",
        "schemas/orders/1.json",
        "schemas/orders/subject.toml",
        "schemas/payments.v1/1.json",
        "schemas/payments.v1/subject.toml",
        "generated_models/__init__.py",
        "generated_models/_index.py",
        "generated_models/orders/v1.py",
        "generated_models/payments_v1/v1.py",
        "tests/conftest.py",
        "tests/messages.py",
        "tests/unit/test_orders_handler.py",
        "tests/unit/test_payments_v1_handler.py",
        "tests/integration/test_consume.py",
    ]:
        assert expected in files
    for path in target.rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for path in target.rglob("*"):  # every Jinja expression was rendered (GitHub's own ${{ }} aside)
        if path.is_file():
            assert "{%" not in path.read_text(encoding="utf-8").replace("${{", ""), path
            assert "{{" not in path.read_text(encoding="utf-8").replace("${{", ""), path


def test_generated_files_carry_the_answers(tmp_path: Path) -> None:
    target = create_project(ANSWERS, tmp_path)

    subject = tomllib.loads((target / "schemas/payments.v1/subject.toml").read_text())
    assert subject == {"compatibility": "BACKWARD", "topics": ["payments.v1"]}
    schema = json.loads((target / "schemas/payments.v1/1.json").read_text())
    assert schema["title"] == "PaymentsV1Event"
    assert "class PaymentsV1Event(BaseModel)" in (target / "generated_models/payments_v1/v1.py").read_text()
    app_py = (target / "orders_consumer/app.py").read_text()
    assert 'consumer.register_handler("orders", OrdersHandler(deps.store))' in app_py
    assert 'consumer.register_handler("payments.v1", PaymentsV1Handler(deps.store))' in app_py
    assert 'TOPICS = ("orders", "payments.v1")' in app_py
    assert "KAFKA_GROUP_ID=orders-group" in (target / ".env.example").read_text()
    project = tomllib.loads((target / "pyproject.toml").read_text())["project"]
    assert project["name"] == "orders-consumer"
    # Written out, not computed by the code under test: the service depends on this checkout by default.
    assert project["dependencies"] == [f"ouroboros-epistle-forge @ {REPO_ROOT.as_uri()}"]
    workflow = (target / ".github/workflows/schema-check.yml").read_text()
    assert "make check BASE=origin/${{ github.base_ref }}" in workflow
    readme = (target / "README.md").read_text()
    assert "make test" in readme and "make run" in readme


def test_generated_python_passes_the_toolkits_lint_rules(tmp_path: Path) -> None:
    ruff = Path(sys.executable).with_name("ruff")
    assert ruff.is_file(), "ruff is a dev dependency: pip install -e '.[dev]'"
    target = create_project(ANSWERS, tmp_path)  # with generated_models/: isort sees it as first-party
    proc = subprocess.run(
        [
            str(ruff),
            "check",
            "--no-cache",
            "--isolated",
            "--line-length",
            "110",
            "--extend-exclude",
            "generated_models",
            "--target-version",
            "py311",
            "--select",
            "E,F,W,I,B,UP",
            "--output-format",
            "concise",
            ".",
        ],
        cwd=target,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_toolkit_code_is_copied(tmp_path: Path) -> None:
    target = create_project(ANSWERS, tmp_path)
    assert not (target / "toolkit").exists()
    assert not any("class KafkaConsumer" in p.read_text() for p in target.rglob("*.py"))


def test_one_topic_gives_a_one_element_tuple(tmp_path: Path) -> None:
    answers = Answers(project_name="single", package_name="single", topics="orders", group_id="g")
    target = create_project(answers, tmp_path, codegen=False)
    assert 'TOPICS = ("orders",)' in (target / "single/app.py").read_text()
    assert not (target / "generated_models").exists()  # left for `make setup`


def test_an_existing_folder_is_refused_without_force(tmp_path: Path) -> None:
    (tmp_path / "orders-consumer").mkdir()
    (tmp_path / "orders-consumer" / "mine.txt").write_text("keep")

    with pytest.raises(ScaffoldError) as caught:
        create_project(ANSWERS, tmp_path)

    assert caught.value.field == "project_name"
    assert "already exists" in str(caught.value) and "--force" in str(caught.value)
    assert _tree(tmp_path) == ["orders-consumer/mine.txt"]


def test_force_writes_over_and_keeps_other_files(tmp_path: Path) -> None:
    target = tmp_path / "orders-consumer"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    (target / "Makefile").write_text("old")

    create_project(ANSWERS, tmp_path, force=True)

    assert (target / "mine.txt").read_text() == "keep"
    assert "make" in (target / "Makefile").read_text() and (target / "Makefile").read_text() != "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders-consumer"]


def test_a_file_in_the_way_is_refused_even_with_force(tmp_path: Path) -> None:
    (tmp_path / "orders-consumer").write_text("a file")
    with pytest.raises(ScaffoldError) as caught:
        create_project(ANSWERS, tmp_path, force=True)
    assert caught.value.field == "output_dir"


def test_invalid_answers_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder"
    with pytest.raises(ScaffoldError) as caught:
        create_project(Answers("orders-consumer", "orders_consumer", "orders,bad/topic", "g"), out)
    assert caught.value.field == "topics"
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("step", ["_render", "_generate_models", "_move_into_place"])
def test_a_failure_mid_way_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    out = tmp_path / "created" / "by-us"
    real = getattr(scaffold, step)

    def fail_after_real_step(*args):
        if step != "_move_into_place":
            real(*args)  # the step did its work: files exist in staging when the failure hits
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(scaffold, step, fail_after_real_step)

    with pytest.raises(OSError, match="simulated"):
        create_project(ANSWERS, out)

    assert list(tmp_path.iterdir()) == []  # not even the output folders create_project made


def test_a_failure_keeps_an_existing_output_dir_and_its_files(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "other.txt").write_text("x")
    monkeypatch.setattr(scaffold, "_generate_models", lambda project: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        create_project(ANSWERS, tmp_path)
    assert _tree(tmp_path) == ["other.txt"]


def test_a_template_error_is_a_scaffold_error(tmp_path: Path, monkeypatch) -> None:
    from cookiecutter.exceptions import FailedHookException

    def hook_fails(*args, **kwargs):
        raise FailedHookException("post_gen_project failed")

    monkeypatch.setattr("cookiecutter.main.cookiecutter", hook_fails)
    with pytest.raises(ScaffoldError, match="template failed"):
        create_project(ANSWERS, tmp_path)
    assert list(tmp_path.iterdir()) == []


# -- the template run by cookiecutter directly: the hooks apply the same rules ----------------------------


def test_plain_cookiecutter_makes_the_same_project(tmp_path: Path, cookiecutter_config: str) -> None:
    from cookiecutter.main import cookiecutter

    direct = Path(
        cookiecutter(
            str(scaffold.TEMPLATE_DIR),
            no_input=True,
            output_dir=str(tmp_path / "direct"),
            extra_context=ANSWERS.context(),
            config_file=cookiecutter_config,
        )
    )
    ours = create_project(ANSWERS, tmp_path / "ours", codegen=False)
    assert _tree(direct) == _tree(ours)
    for name in _tree(ours):
        assert (direct / name).read_bytes() == (ours / name).read_bytes(), name


@pytest.mark.parametrize(
    ("context", "field"),
    [
        ({"package_name": "class"}, "package_name"),
        ({"topics": "orders,a b"}, "topics"),
        ({"project_name": "bad name"}, "project_name"),
        ({"group_id": ""}, "group_id"),
    ],
)
def test_plain_cookiecutter_refuses_bad_answers_and_leaves_nothing(
    tmp_path: Path, capfd, cookiecutter_config: str, context: dict, field: str
) -> None:
    from cookiecutter.exceptions import FailedHookException
    from cookiecutter.main import cookiecutter

    with pytest.raises(FailedHookException):
        cookiecutter(
            str(scaffold.TEMPLATE_DIR),
            no_input=True,
            output_dir=str(tmp_path),
            extra_context={**ANSWERS.context(), **context},
            config_file=cookiecutter_config,
        )
    assert list(tmp_path.iterdir()) == []
    assert field in capfd.readouterr().err


# -- the command -----------------------------------------------------------------------------------------


def test_cli_new_with_flags(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "new",
            "billing-svc",
            "--topics",
            "invoices",
            "--group-id",
            "billing",
            "--output-dir",
            str(tmp_path),
            "--no-input",
            "--no-codegen",
        ],
    )
    assert result.exit_code == 0, result.output
    target = tmp_path / "billing-svc"
    assert (target / "billing_svc/handlers/invoices_handler.py").is_file()
    assert "KAFKA_GROUP_ID=billing" in (target / ".env.example").read_text()
    assert "make test" in result.output


def test_cli_new_prompts_and_asks_again_after_a_bad_answer(tmp_path: Path) -> None:
    answers = "\n".join(["my-svc", "class", "my_svc", "orders,,x", "orders", ""]) + "\n"
    result = CliRunner().invoke(app, ["new", "--output-dir", str(tmp_path), "--no-codegen"], input=answers)
    assert result.exit_code == 0, result.output
    assert "Python keyword" in result.output and "empty" in result.output
    # the group id defaults to the project name
    assert "KAFKA_GROUP_ID=my-svc" in (tmp_path / "my-svc/.env.example").read_text()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["bad name"], "project_name"),
        (["ok-name", "--package", "import"], "package_name"),
        (["ok-name", "--topics", ".."], "topics"),
        (["ok-name", "--topics", "x" * 250], "topics"),
        (["ok-name", "--group-id", " "], "group_id"),
        (["--package", "ok"], "project_name"),  # --no-input without a name
        (["ok-name", "--toolkit-wheel", "/nonexistent/toolkit.whl"], "toolkit_wheel"),
        (["ok-name", "--toolkit-path", "/nonexistent"], "toolkit_path"),
    ],
)
def test_cli_new_bad_input_exits_non_zero_naming_the_field(tmp_path: Path, args: list[str], field: str) -> None:
    result = CliRunner().invoke(app, ["new", *args, "--output-dir", str(tmp_path), "--no-input"])
    assert result.exit_code != 0
    assert field in result.output and "fix" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_new_refuses_an_existing_folder_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    args = ["new", "taken", "--output-dir", str(tmp_path), "--no-input", "--no-codegen"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "--force" in refused.output
    assert list((tmp_path / "taken").iterdir()) == []
    forced = CliRunner().invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "taken/Makefile").is_file()


def test_toolkit_source_options(tmp_path: Path) -> None:
    wheel = tmp_path / "ouroboros_epistle_forge-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert scaffold.toolkit_requirement(wheel=wheel) == f"ouroboros-epistle-forge @ {wheel.as_uri()}"
    root = rules.repository_root()
    assert root is not None and (root / "toolkit" / "scaffold").is_dir()
    assert scaffold.toolkit_requirement() == f"ouroboros-epistle-forge @ {root.as_uri()}"
    assert scaffold.toolkit_requirement(path=root) == scaffold.toolkit_requirement()
    with pytest.raises(ScaffoldError):
        scaffold.toolkit_requirement(wheel=wheel, path=root)
