"""Settings load through pydantic-settings; a wrong value names the variable and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from toolkit.errors import ConfigError
from toolkit.settings import KafkaSettings, OrderingMode, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("KAFKA_", "SCHEMA_REGISTRY_", "EPISTLE_")):
            monkeypatch.delenv(name)


def test_defaults_use_the_local_schemas_folder() -> None:
    settings = load_settings(env_file=None)
    assert settings.registry.is_local
    assert settings.kafka.enable_auto_commit is False
    assert settings.consumer.ordering is OrderingMode.PARTITION


def test_env_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(env_file=ROOT / ".env.example")
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.registry.url == ""


def test_auto_commit_true_stops_start_up_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_ENABLE_AUTO_COMMIT", "true")
    with pytest.raises(ConfigError) as err:
        load_settings(env_file=None)
    assert "KAFKA_ENABLE_AUTO_COMMIT" in str(err.value)
    assert "must be false" in str(err.value)
    assert err.value.setting == "KAFKA_ENABLE_AUTO_COMMIT"


def test_malformed_registry_url_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "localhost:8081")
    with pytest.raises(ConfigError, match=r"SCHEMA_REGISTRY_URL .*not an http\(s\) URL"):
        load_settings(env_file=None)


def test_malformed_bootstrap_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092,broker-without-port")
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS.*broker-without-port.*host:port"):
        load_settings(env_file=None)


def test_values_from_a_dotenv_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("KAFKA_GROUP_ID=from-file\nEPISTLE_MAX_WORKERS=8\nEPISTLE_ORDERING=key\n")
    settings = load_settings(env_file=env)
    assert settings.kafka.group_id == "from-file"
    assert settings.consumer.max_workers == 8
    assert settings.consumer.ordering is OrderingMode.KEY


def test_bad_value_in_dotenv_names_file_and_setting(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("EPISTLE_MAX_WORKERS=0\n")
    with pytest.raises(ConfigError) as err:
        load_settings(env_file=env)
    assert "EPISTLE_MAX_WORKERS" in str(err.value) and str(env) in str(err.value)


def test_secrets_never_appear_in_reprs_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_PASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("SCHEMA_REGISTRY_BEARER_TOKEN", "tok-very-secret")
    settings = load_settings(env_file=None)
    assert "very-secret" not in repr(settings) and "very-secret" not in str(settings.registry)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "sasl-very-secret")
    monkeypatch.setenv("SCHEMA_REGISTRY_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError) as err:
        load_settings(env_file=None)
    assert "very-secret" not in str(err.value)


def test_unknown_override_group() -> None:
    with pytest.raises(ConfigError, match="unknown override"):
        load_settings(env_file=None, broker__x=1)


def test_overrides_win() -> None:
    settings = load_settings(env_file=None, kafka__group_id="g2", consumer__max_workers=4)
    assert settings.kafka.group_id == "g2" and settings.consumer.max_workers == 4


def test_startup_timeout_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_STARTUP_TIMEOUT_S", "0")
    with pytest.raises(ConfigError, match="KAFKA_STARTUP_TIMEOUT_S .*greater than 0") as err:
        load_settings(env_file=None)
    assert err.value.setting == "KAFKA_STARTUP_TIMEOUT_S"


def test_group_instance_id_takes_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "orders-{hostname}")
    assert load_settings(env_file=None).kafka.group_instance_id == f"orders-{socket.gethostname()}"
    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "  ")
    assert load_settings(env_file=None).kafka.group_instance_id is None
    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "orders-{pid}")
    with pytest.raises(ConfigError, match=r"KAFKA_GROUP_INSTANCE_ID .*\{hostname\}") as err:
        load_settings(env_file=None)
    assert err.value.setting == "KAFKA_GROUP_INSTANCE_ID"


def test_group_instance_id_keeps_to_kafkas_character_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("orders 1", "orders/1", "x" * 250):
        monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", value)
        with pytest.raises(ConfigError, match="249") as err:
            load_settings(env_file=None)
        assert err.value.setting == "KAFKA_GROUP_INSTANCE_ID"
    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "orders_1.a-b")
    assert load_settings(env_file=None).kafka.group_instance_id == "orders_1.a-b"


def _sasl(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    base = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
    for name, value in {**base, **values}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("missing", ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"])
def test_sasl_without_username_or_password_names_the_variable(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    given = {"KAFKA_SASL_USERNAME": "app", "KAFKA_SASL_PASSWORD": "sasl-very-secret"}
    given.pop(missing)
    _sasl(monkeypatch, **given)
    with pytest.raises(ConfigError) as err:
        load_settings(env_file=None)
    assert err.value.setting == missing and "set both" in str(err.value)
    assert "very-secret" not in str(err.value)


def test_sasl_without_a_mechanism_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    with pytest.raises(ConfigError, match="SCRAM-SHA-512") as err:
        load_settings(env_file=None)
    assert err.value.setting == "KAFKA_SASL_MECHANISM"


def test_an_unknown_mechanism_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _sasl(monkeypatch, KAFKA_SASL_MECHANISM="MD5", KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD="p")
    with pytest.raises(ConfigError) as err:
        load_settings(env_file=None)
    assert err.value.setting == "KAFKA_SASL_MECHANISM" and "SCRAM-SHA-512" in str(err.value)


def test_credentials_the_protocol_would_ignore_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "app")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "sasl-very-secret")
    with pytest.raises(ConfigError, match="does not use SASL") as err:
        load_settings(env_file=None)
    assert err.value.setting == "KAFKA_SASL_USERNAME" and "very-secret" not in str(err.value)
    monkeypatch.delenv("KAFKA_SASL_USERNAME")
    monkeypatch.delenv("KAFKA_SASL_PASSWORD")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", str(ca))
    with pytest.raises(ConfigError, match="does not use TLS") as err:
        load_settings(env_file=None)
    assert err.value.setting == "KAFKA_SSL_CA_LOCATION"


def test_tls_files_must_exist_and_a_certificate_needs_its_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _sasl(monkeypatch, KAFKA_SASL_USERNAME="app", KAFKA_SASL_PASSWORD="sasl-very-secret")
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="does not exist") as err:
        load_settings(env_file=None)
    assert err.value.setting == "KAFKA_SSL_CA_LOCATION"
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("pem\n")
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("KAFKA_SSL_CERTIFICATE_LOCATION", str(tmp_path / "client.pem"))
    with pytest.raises(ConfigError) as err:
        load_settings(env_file=None)
    assert err.value.setting == "KAFKA_SSL_KEY_LOCATION"
    monkeypatch.setenv("KAFKA_SSL_KEY_LOCATION", str(tmp_path / "client.key"))
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", "key-very-secret")
    settings = load_settings(env_file=None)
    assert "very-secret" not in repr(settings)
    config = settings.kafka.client_config()
    assert config["ssl.certificate.location"] == str(tmp_path / "client.pem")
    assert config["ssl.key.location"] == str(tmp_path / "client.key")
    assert config["ssl.key.password"] == "key-very-secret" and config["sasl.password"] == "sasl-very-secret"
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "SCRAM-SHA-512"


def test_a_ca_folder_or_probe_is_a_valid_ca_location(tmp_path):
    assert KafkaSettings(security_protocol="SSL", ssl_ca_location=tmp_path).ssl_ca_location == tmp_path
    assert str(KafkaSettings(security_protocol="SSL", ssl_ca_location="probe").ssl_ca_location) == "probe"
    with pytest.raises(ValidationError, match="does not exist"):
        KafkaSettings(security_protocol="SSL", ssl_certificate_location=tmp_path)


def test_a_settings_error_built_directly_does_not_print_the_password():
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(security_protocol="SASL_SSL", sasl_password=SecretStr("hunter2secret"))
    assert "hunter2secret" not in str(caught.value)
