"""``epistle run``: option and settings errors are one clear message naming the setting (no traceback),
and the app function is found and called the documented ways. No broker: every case fails before it."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from toolkit.cli import _app_arguments, _load_app_function, app
from toolkit.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_GROUP_ID",
        "SCHEMA_REGISTRY_URL",
        "EPISTLE_MAX_WORKERS",
        "EPISTLE_METRICS_PORT",
        "EPISTLE_CONSUMER_MODE",
        "EPISTLE_BROKER",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env from the repository
    monkeypatch.setattr(sys, "path", list(sys.path))


def invoke(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, ["run", *args], env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--app", "examples.shop.app"], None, "use package.module:function"),
        (["--app", "no_such_package.app:register"], None, "no module named 'no_such_package'"),
        (["--app", "json:no_such_function"], None, "has no attribute 'no_such_function'"),
        (["--app", "json:__doc__"], None, "is not a function"),
        (["--app", "json:dumps", "--topics", " , "], None, "--topics"),
        (["--app", "json:dumps", "-X", "session.timeout.ms"], None, "use key=value"),
        (["--app", "json:dumps"], {"KAFKA_BOOTSTRAP_SERVERS": "kafka"}, "KAFKA_BOOTSTRAP_SERVERS"),
        (["--app", "json:dumps"], {"EPISTLE_MAX_WORKERS": "0"}, "EPISTLE_MAX_WORKERS"),
        (["--app", "json:dumps", "--registry-url", "localhost:8081"], None, "SCHEMA_REGISTRY_URL"),
        (["--app", "json:dumps", "--log-level", "chatty"], None, "--log-level"),
        (["--app", "json:dumps"], {"EPISTLE_METRICS_PORT": "70000"}, "EPISTLE_METRICS_PORT"),
        (["--app", "json:dumps", "--mode", "queue"], None, "--mode 'queue': use group or share"),
        (["--app", "json:dumps"], {"EPISTLE_CONSUMER_MODE": "queue"}, "EPISTLE_CONSUMER_MODE"),
        (["--app", "json:dumps", "--mode", "share", "--broker", "rabbitmq"], None, "--mode share with --broker kafka"),
    ],
)
def test_bad_options_and_settings_are_one_message(args, env, expected):
    code, output = invoke(*args, env=env)
    assert code != 0
    assert expected in output and "error:" in output
    assert "Traceback" not in output


def test_max_workers_must_be_positive():
    code, output = invoke("--app", "json:dumps", "--max-workers", "0")
    assert code == 2 and "--max-workers" in output


def test_metrics_port_must_be_a_port():
    code, output = invoke("--app", "json:dumps", "--metrics-port", "0")
    assert code == 2 and "--metrics-port" in output


def test_a_metrics_port_in_use_fails_before_anything_starts():
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        code, output = invoke("--app", "json:dumps", "--metrics-port", str(taken.getsockname()[1]))
    assert code == 1 and "cannot listen" in output and "--metrics-port" in output
    assert "Traceback" not in output


def test_help_documents_the_app_contract():
    result = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for text in (
        "--app",
        "--registry-url",
        "--group-id",
        "--topics",
        "--until-idle",
        "--max-workers",
        "SIGTERM",
        "(consumer, settings)",
        "--metrics-port",
        "/healthz",
    ):
        assert text in result.output


def test_app_module_is_found_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_shop_app.py").write_text("def register(consumer, settings):\n    return None\n")
    sys.path[:] = [p for p in sys.path if p not in ("", str(tmp_path))]
    function = _load_app_function("cwd_shop_app:register")
    assert function.__name__ == "register" and str(tmp_path) in sys.path


def test_example_app_loads():
    function = _load_app_function("examples.shop.app:register")
    assert function.__module__ == "examples.shop.app"


def test_app_arguments_follow_the_signature():
    consumer, settings = object(), object()
    assert _app_arguments(lambda c, s: None, consumer, settings) == (consumer, settings)
    assert _app_arguments(lambda c: None, consumer, settings) == (consumer,)
    assert _app_arguments(lambda c, s=None: None, consumer, settings) == (consumer, settings)
    with pytest.raises(ConfigError, match="must take"):
        _app_arguments(lambda: None, consumer, settings)
