"""A private Apicurio instance (own port and state folder) that the tests stop and start again.

The shared registry on 8081 is never touched here. Apicurio runs with in-memory H2 storage, so after a
restart it is empty and the tests register again.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.test_registry_clients import (
    SHIPMENT_V1,
    RequestCounter,
    _copy_with_unique_names,
    _same_lookups,
)
from toolkit.errors import RegistryUnavailable, SchemaNotFound
from toolkit.layout import SchemaFormat, load_schemas
from toolkit.registry import CachedRegistry, ConfluentHttpRegistry, LocalFolderRegistry
from toolkit.registry.commands import verify_schemas

ROOT = Path(__file__).resolve().parents[2]
SERVICES = [sys.executable, str(ROOT / "scripts" / "services.py")]

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("SCHEMA_REGISTRY_URL")),
    reason="an external registry is configured (SCHEMA_REGISTRY_URL): "
    "this module starts and stops a registry of its own",
)


@dataclass
class PrivateRegistry:
    url: str
    env: dict[str, str]

    def _run(self, action: str) -> None:
        proc = subprocess.run(
            [*SERVICES, action, "registry"], env=self.env, capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            pytest.fail(f"services.py {action} registry failed:\n{proc.stdout}{proc.stderr}", pytrace=False)

    def up(self) -> None:
        self._run("up")

    def down(self) -> None:
        self._run("down")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory) -> Iterator[PrivateRegistry]:
    port = _free_port()
    env = {
        **os.environ,
        "EPISTLE_SERVICES_DIR": str(tmp_path_factory.mktemp("services")),
        "EPISTLE_REGISTRY_PORT": str(port),
    }
    registry = PrivateRegistry(f"http://127.0.0.1:{port}/apis/ccompat/v7", env)
    registry.up()
    try:
        yield registry
    finally:
        registry.down()


@pytest.mark.reliability
def test_a_stopped_registry_is_unavailable_after_the_attempts_then_back(private_registry, unique_name):
    counter = RequestCounter()
    subject = unique_name("shipments")
    text = json.dumps(SHIPMENT_V1)
    http = ConfluentHttpRegistry(
        private_registry.url, max_attempts=3, backoff_initial_s=0.05, timeout_s=2, event_hooks={"request": [counter]}
    )
    cache = CachedRegistry(http, latest_ttl_s=0)
    assert http.register(subject, text, SchemaFormat.AVRO).version == 1
    assert cache.resolve(subject, 1)[0].version == 1

    private_registry.down()
    counter.paths.clear()
    with pytest.raises(RegistryUnavailable) as raised:
        http.get(subject, 1)
    assert not isinstance(raised.value, SchemaNotFound)
    assert raised.value.attempts == 3 and len(counter) == 3  # every attempt went out, none more
    assert "ConnectError" in str(raised.value)
    counter.paths.clear()
    with pytest.raises(RegistryUnavailable):
        cache.resolve(subject, "latest")  # latest is not cached (ttl 0): asks, and fails the same way
    assert len(counter) == 3
    counter.paths.clear()
    assert cache.resolve(subject, 1)[0].version == 1  # a cached version needs no registry at all
    assert len(counter) == 0

    private_registry.up()
    with pytest.raises(SchemaNotFound):  # back, and empty: in-memory storage
        http.get(subject, 1)
    assert http.register(subject, text, SchemaFormat.AVRO).version == 1
    assert http.get(subject, 1).version == 1 and http.latest(subject).version == 1
    assert cache.resolve(subject, "latest")[0].version == 1
    http.close()


@pytest.mark.skipif(
    not (ROOT / "schemas").is_dir() or not any((ROOT / "schemas").iterdir()), reason="no example schemas in schemas/"
)
def test_local_folder_and_http_answer_alike_on_the_example_schemas(private_registry, tmp_path, unique_name):
    """The example schemas, registered as they are, give the same lookups and sample verdicts locally and
    over HTTP.

    This runs on the private instance with its global compatibility rule removed: Apicurio 3.0.9 cannot
    compatibility-check draft 2020-12 JSON Schema (HTTP 500 "could not determine version" from its
    everit-based checker), and a per-subject NONE does not override its global BACKWARD rule.
    """
    httpx.put(f"{private_registry.url}/config", json={"compatibility": "NONE"}, timeout=10).raise_for_status()
    root = tmp_path / "schemas"
    subjects = _copy_with_unique_names(ROOT / "schemas", root, unique_name)
    with ConfluentHttpRegistry(private_registry.url) as http:
        for subject in load_schemas(root).values():
            for schema_file in subject.versions:
                got = http.register(subject.name, schema_file.text, schema_file.format)
                assert got.version == schema_file.version
        assert _same_lookups(LocalFolderRegistry(root), http, subjects, root) > 0
        assert verify_schemas(http, load_schemas(root)).drifts == []
    shutil.rmtree(root)
