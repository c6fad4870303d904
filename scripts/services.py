#!/usr/bin/env python3
"""Local development services: a single-node Apache Kafka (KRaft) broker and an Apicurio Registry, and, when
asked for by name, a Prometheus server and a RabbitMQ node.

Kafka and the registry come from Maven Central (see scripts/services/pom.xml) into the ignored `.cache/`
folder (Maven's own repository too: `.cache/m2`, not `~/.m2`); Prometheus and RabbitMQ are Debian's
`prometheus` and `rabbitmq-server` packages (installed with apt-get when missing and run as root, else the
command says how). Each runs from `.services/<name>/` (pid file, logs, data). Nothing here substitutes a fake
service: if a download or a start fails, the command stops with the artifact, the error and where the log is.

    python scripts/services.py fetch              # jars, the registry, rabbitmq-server (idempotent)
    python scripts/services.py up [kafka|registry|prometheus|rabbitmq]   # no name: kafka and registry
    python scripts/services.py down [kafka|registry|prometheus|rabbitmq] # no name: every one running
    python scripts/services.py status             # exit 0: all ready; 3: one is stopped or not ready

Prometheus scrapes every second the targets listed in `.services/prometheus/targets/*.json` (Prometheus's
file service discovery: `[{"targets": ["127.0.0.1:9400"], "labels": {...}}]`); a test writes a file there
to have its consumer scraped, and removes it after.

RabbitMQ is not started by a bare `up`: only the RabbitMQ tests need it, and they start it themselves
(tests/conftest.py), as `up rabbitmq` does. It is a private node: its own name, ports, Erlang cookie
(HOME), port mapper (epmd), config, data and logs, all under `.services/rabbitmq/`.

EPISTLE_KAFKA_SECURITY=sasl_ssl starts the broker with a SASL_SSL listener (SCRAM-SHA-512) and ACLs (the
StandardAuthorizer; its ACLs are granted with confluent-kafka, so run this with the project's Python), and
EPISTLE_REGISTRY_TLS=1 the registry serving HTTPS only, with basic authentication (user app); the CA, the
certificates and the users' passwords are made once in `.services/security/` (the passwords only in its
credentials.json, mode 0600, never printed).

A 3-node Kafka cluster instead of the single broker: `up kafka --brokers 3` (or EPISTLE_KAFKA_BROKERS=3). Each
node is broker and controller (KRaft combined mode), runs from `.services/kafka-<n>/`, listens on
EPISTLE_KAFKA_PORT + n - 1 (controller: EPISTLE_KAFKA_CONTROLLER_PORT + n - 1, default the broker port + 10),
and topics get replication factor 3 with min.insync.replicas=2. `down` and `status` cover whichever layout runs.

Ports: EPISTLE_KAFKA_PORT (9092), EPISTLE_KAFKA_CONTROLLER_PORT (9093), EPISTLE_REGISTRY_PORT (8081),
EPISTLE_PROMETHEUS_PORT (9095), EPISTLE_RABBITMQ_PORT (5672), EPISTLE_RABBITMQ_DIST_PORT (25672),
EPISTLE_RABBITMQ_EPMD_PORT (4370). State folder: EPISTLE_SERVICES_DIR (.services).
Only the standard library is used, so this runs before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
# EPISTLE_SERVICES_DIR lets a test run a second, private instance (its own pid file, logs and data).
STATE = Path(os.environ.get("EPISTLE_SERVICES_DIR", ROOT / ".services")).resolve()
POM = ROOT / "scripts" / "services" / "pom.xml"
# Maven's local repository: inside the ignored cache, so nothing is written to ~/.m2
MAVEN = ["mvn", "-B", "-q", f"-Dmaven.repo.local={CACHE / 'm2'}"]

# 3.0.9 is the newest Apicurio 3.x that runs on Java 17. 3.3.3 (the newest Maven Central serves here) needs Java 21,
# and still answers HTTP 500 "could not determine version" when it compatibility-checks draft 2020-12 JSON Schema
# (checked 2026-11-30 on Temurin 25), so moving to it would add a prerequisite and fix nothing the tests rely on.
APICURIO_VERSION = os.environ.get("EPISTLE_APICURIO_VERSION", "3.0.9")
APICURIO_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
KAFKA_CLUSTER_ID = "ouroborosEpistleForge0"[:22]  # a base64-style 22-character cluster id

START_TIMEOUT_S = float(os.environ.get("EPISTLE_START_TIMEOUT", "120"))
STOP_TIMEOUT_S = 30.0


class ServiceError(RuntimeError):
    """A service could not be fetched, started or stopped; the message says what to do."""


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise ServiceError(f"{name}={raw!r} is not a port number; set it to an integer such as {default}") from None
    if not 0 < port < 65536:
        raise ServiceError(f"{name}={port} is out of range; use 1-65535")
    return port


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _run(cmd: list[str], what: str, *, hide: Sequence[str] = (), **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure a ServiceError with its last lines, each string of ``hide`` shown as ***."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        message = f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}"
        for secret in hide:
            message = message.replace(secret, "***")
        raise ServiceError(message)
    return proc


# --------------------------------------------------------------------------- fetch


def kafka_libs() -> Path:
    """The jar folder of the Kafka version the POM names; one folder per POM so that an upgrade never swaps the
    jars under a broker that is running (worktrees and CI clones share the cache)."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    return CACHE / "kafka" / f"libs-{digest}"


def fetch_kafka() -> Path:
    libs = kafka_libs()
    marker = libs / ".complete"
    if marker.exists() and marker.read_text() == POM.read_text():
        return libs
    if shutil.which("mvn") is None:
        raise ServiceError("Maven (mvn) is not on PATH; install Maven 3.8+ (and Java 17+) and retry")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"fetching Kafka jars listed in {POM.relative_to(ROOT)} from Maven Central ...", flush=True)
    _run(
        [*MAVEN, "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
        f"downloading the Kafka jars ({POM.relative_to(ROOT)})",
    )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(POM.read_text())
    return libs


def registry_jar(home: Path) -> Path | None:
    """Apicurio ships `quarkus-run.jar` (fast-jar layout) or `*-runner.jar` (legacy layout, 3.0.x)."""
    candidates = [home / "quarkus-run.jar", *sorted(home.glob("*-runner.jar"))]
    return next((jar for jar in candidates if jar.exists()), None)


def fetch_registry() -> Path:
    home = CACHE / "apicurio" / APICURIO_VERSION
    if registry_jar(home) is not None:
        return home
    if shutil.which("mvn") is None:
        raise ServiceError("Maven (mvn) is not on PATH; install Maven 3.8+ (and Java 17+) and retry")
    download = CACHE / "apicurio" / "download"
    shutil.rmtree(download, ignore_errors=True)
    print(f"fetching {APICURIO_ARTIFACT} from Maven Central ...", flush=True)
    _run(
        [*MAVEN, "dependency:copy", f"-Dartifact={APICURIO_ARTIFACT}", f"-DoutputDirectory={download}"],
        f"downloading {APICURIO_ARTIFACT}",
    )
    archives = list(download.glob("*.tar.gz"))
    if len(archives) != 1:
        raise ServiceError(f"expected one archive for {APICURIO_ARTIFACT} in {download}, found {archives}")
    partial = home.with_name(home.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(archives[0]) as tar:
        tar.extractall(partial, filter="data")
    if registry_jar(partial) is None:
        raise ServiceError(f"{APICURIO_ARTIFACT} has no quarkus-run.jar or *-runner.jar at its top level")
    shutil.rmtree(home, ignore_errors=True)
    partial.rename(home)
    shutil.rmtree(download, ignore_errors=True)
    return home


POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def _apt_install(package: str, what: str) -> None:
    """``apt-get install package`` (after ``apt-get update`` when the package lists are stale) without letting
    the package start or enable its own system service: ours run privately under .services/, and a system
    RabbitMQ or Prometheus would take their ports. Debian's maintainer scripts ask /usr/sbin/policy-rc.d,
    which answers 101 ("not allowed") while the install runs."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    ours = not POLICY_RC_D.exists()
    if ours:
        POLICY_RC_D.write_text("#!/bin/sh\n# written by scripts/services.py during apt-get install\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        if subprocess.run(install, capture_output=True, env=env).returncode != 0:  # no or stale package lists
            _run(["apt-get", "update", "-q"], "apt-get update", env=env)
            _run(install, what, env=env)
    finally:
        if ours:
            POLICY_RC_D.unlink(missing_ok=True)


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or next(
        (path for path in ("/usr/bin/prometheus", "/usr/local/bin/prometheus") if Path(path).exists()), None
    )


def fetch_prometheus() -> str:
    """The prometheus binary; Debian's package is installed when it is missing (as root, with apt-get)."""
    found = prometheus_binary()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise ServiceError(
            "prometheus is not installed and apt-get is not available: install Prometheus 2.x "
            "and put the prometheus binary on PATH"
        )
    if os.geteuid() != 0:
        raise ServiceError(
            "prometheus is not installed: run `sudo apt-get install -y --no-install-recommends "
            "prometheus` (Debian's package) and retry"
        )
    print("installing Debian's prometheus package with apt-get ...", flush=True)
    _apt_install("prometheus", "installing Debian's prometheus package")
    found = prometheus_binary()
    if not found:
        raise ServiceError("apt-get installed the prometheus package but no prometheus binary is on PATH")
    return found


# --------------------------------------------------------------------------- services


@dataclass
class Service:
    name: str
    port: int
    marker: str  # a string in the java command line that says the process is ours

    @property
    def dir(self) -> Path:
        return STATE / self.name

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of our running process, or None; a stale pid file is removed."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _pid_alive(pid) and self.marker in _cmdline(pid):
            return pid
        print(f"{self.name}: removing stale pid file {self.pid_file} (pid {pid} is not running)")
        self.pid_file.unlink(missing_ok=True)
        return None

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Fetch and configure before the first start."""

    def ready(self) -> bool:
        raise NotImplementedError

    def after_start(self) -> None:
        """Runs once the service is ready."""

    def popen_env(self) -> dict[str, str] | None:
        """The process's environment (None: ours)."""
        return None

    def describe(self) -> str:
        raise NotImplementedError

    def up(self) -> None:
        if self.pid() is not None:
            if self.ready():
                print(f"{self.name}: already running (pid {self.pid()}), {self.describe()}")
                return
            raise ServiceError(
                f"{self.name}: pid {self.pid()} is running but not answering; "
                f"see {self.log_file}, or run 'make services-down' and retry"
            )
        if _port_open(self.port):
            raise ServiceError(
                f"{self.name}: port {self.port} on 127.0.0.1 is in use by another process. Stop it "
                f"(`ss -ltnp 'sport = :{self.port}'` shows which) or choose another port with "
                f"EPISTLE_{self.name.split('-')[0].upper()}_PORT=<port>"
            )
        self.prepare()
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n==== starting {self.name} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,
                env=self.popen_env(),
            )
        self.pid_file.write_text(str(proc.pid))
        started = time.monotonic()
        while time.monotonic() - started < START_TIMEOUT_S:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(
                    f"{self.name} exited with code {proc.returncode} during start-up; "
                    f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            if self.ready():
                try:
                    self.after_start()
                except BaseException:
                    self.down()  # half set up (e.g. ACLs not granted): a later `up` must not find it "running"
                    raise
                print(
                    f"{self.name}: started in {time.monotonic() - started:.1f}s (pid {proc.pid}), "
                    f"{self.describe()}, log {_shown(self.log_file)}"
                )
                return
            time.sleep(0.5)
        self.down()
        raise ServiceError(
            f"{self.name} was not ready after {START_TIMEOUT_S:.0f}s; "
            f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
        )

    def down(self) -> None:
        pid = self.pid()
        if pid is None:
            print(f"{self.name}: not running")
            return
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        print(f"{self.name}: stopped (pid {pid})")

    def status(self) -> bool:
        pid = self.pid()
        if pid is None:
            print(f"{self.name}: stopped (`make services-up` starts it)")
            return False
        state = "ready" if self.ready() else "NOT READY"
        print(f"{self.name}: running (pid {pid}), {state}, {self.describe()}, log {_shown(self.log_file)}")
        return state == "ready"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ServiceError("java is not on PATH; install Java 17+ (or set JAVA_HOME)")
    return java


# --------------------------------------------------------------------------- security (SASL_SSL, TLS)

# EPISTLE_KAFKA_SECURITY=sasl_ssl: the broker's client listener is SASL_SSL (SCRAM-SHA-512) with ACLs;
# EPISTLE_REGISTRY_TLS=1: the registry serves HTTPS only and asks for a client certificate.
KAFKA_SECURITY = os.environ.get("EPISTLE_KAFKA_SECURITY", "plaintext").strip().lower()
REGISTRY_TLS = os.environ.get("EPISTLE_REGISTRY_TLS", "").strip().lower() in ("1", "true", "yes", "on")
SCRAM = "SCRAM-SHA-512"
# The SCRAM users made at storage format: a super user (the broker's own inter-broker login, and ACLs),
# the application (produce, consume, create its dead-letter topics) and a user with only a group's READ.
USERS = ("admin", "app", "restricted")


class Security:
    """A CA, a certificate for 127.0.0.1/localhost (the broker's and the registry's), a client certificate
    and the users' passwords, made once per services folder in ``<services dir>/security/``. The secrets are
    only in ``credentials.json`` (mode 0600), never printed; the keys are 0600 too."""

    def __init__(self) -> None:
        self.dir = STATE / "security"
        self.ca = self.dir / "ca.pem"
        self.server_cert = self.dir / "server.pem"
        self.server_key = self.dir / "server.key"
        self.server_p12 = self.dir / "server.p12"
        self.truststore = self.dir / "truststore.p12"
        self.client_cert = self.dir / "client.pem"
        self.client_key = self.dir / "client.key"
        self.credentials_file = self.dir / "credentials.json"

    def credentials(self) -> dict[str, str]:
        """``{"admin": password, "app": ..., "restricted": ..., "store": keystore password}``."""
        return json.loads(self.credentials_file.read_text())

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if not self.credentials_file.exists():
            secrets_ = {name: secrets.token_urlsafe(18) for name in (*USERS, "store")}
            fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(secrets_, out, indent=2)
        if not self.truststore.exists():
            self._make_certificates()

    def _openssl(self, *args: str, what: str) -> None:
        if shutil.which("openssl") is None:
            raise ServiceError("openssl is not on PATH; install it (Debian: apt-get install openssl) and retry")
        _run(["openssl", *args], what, cwd=self.dir)

    def _make_certificates(self) -> None:
        ca_key = self.dir / "ca.key"
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "825", "-subj", "/CN=epistle-local-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(ca_key), "-out", str(self.ca), what="making the local CA",
        )  # fmt: skip
        for name, cert, key, extensions in (
            ("localhost", self.server_cert, self.server_key, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
             "extendedKeyUsage=serverAuth,clientAuth\n"),
            ("epistle-client", self.client_cert, self.client_key, "extendedKeyUsage=clientAuth\n"),
        ):  # fmt: skip
            request, ext = self.dir / f"{name}.csr", self.dir / f"{name}.ext"
            ext.write_text(extensions)
            self._openssl(
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
                "-out", str(request), what=f"making the key of {name}",
            )  # fmt: skip
            self._openssl(
                "x509", "-req", "-in", str(request), "-CA", str(self.ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-days", "825", "-extfile", str(ext), "-out", str(cert),
                what=f"signing the certificate of {name}",
            )  # fmt: skip
            request.unlink()
            ext.unlink()
        # PKCS#12 stores for the JVMs (Kafka, Apicurio); their password is read from the environment
        env = {**os.environ, "EPISTLE_STORE_PASSWORD": self.credentials()["store"]}
        for args, what in (
            (["pkcs12", "-export", "-in", str(self.server_cert), "-inkey", str(self.server_key),
              "-certfile", str(self.ca), "-name", "localhost", "-out", str(self.server_p12)], "the key store"),
        ):  # fmt: skip
            _run(["openssl", *args, "-passout", "env:EPISTLE_STORE_PASSWORD"], f"making {what}", cwd=self.dir, env=env)
        # the JDK's own keytool, beside the java that JAVA_HOME or PATH gives; else any on PATH
        beside = Path(_java()).resolve().with_name("keytool")
        keytool = str(beside) if beside.exists() else shutil.which("keytool")
        if keytool is None:
            raise ServiceError("keytool (from Java 17+) is not on PATH; install a JDK and retry")
        _run(
            [keytool, "-importcert", "-noprompt", "-alias", "epistle-local-ca", "-file", str(self.ca),
             "-keystore", str(self.truststore), "-storetype", "PKCS12", "-storepass:env", "EPISTLE_STORE_PASSWORD"],
            "making the trust store", cwd=self.dir, env=env,
        )  # fmt: skip
        for path in self.dir.iterdir():
            path.chmod(0o600 if path.suffix in (".key", ".p12", ".json") else 0o644)

    def ssl_context(self) -> ssl.SSLContext:
        """For our own readiness checks: trusts the CA, presents the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def kafka_brokers(override: int | None = None) -> int:
    """How many Kafka nodes to run: ``--brokers``, else EPISTLE_KAFKA_BROKERS, else 1 (a single broker)."""
    raw = str(override) if override is not None else os.environ.get("EPISTLE_KAFKA_BROKERS", "1")
    if raw not in ("1", "3"):
        raise ServiceError(
            f"EPISTLE_KAFKA_BROKERS (or --brokers) is {raw!r}; use 1 (a single broker) or 3 (a 3-node cluster)"
        )
    return int(raw)


class Kafka(Service):
    """One Kafka node in KRaft combined mode (broker and controller in one JVM).

    ``nodes=1`` is the single broker (``.services/kafka/``, EPISTLE_KAFKA_PORT and _CONTROLLER_PORT). ``nodes=3``
    is one node of a 3-node cluster (``.services/kafka-<n>/``): node n listens on EPISTLE_KAFKA_PORT + n - 1 and
    its controller on EPISTLE_KAFKA_CONTROLLER_PORT + n - 1 (default: the broker port + 10), all three are
    voters of a static quorum, and every topic is replicated three times with ``min.insync.replicas=2``, so
    one node can be down without a write with acks=all failing.
    """

    def __init__(self, node: int = 1, nodes: int = 1) -> None:
        base = _port("EPISTLE_KAFKA_PORT", 9092)
        controller_base = _port("EPISTLE_KAFKA_CONTROLLER_PORT", 9093 if nodes == 1 else base + 10)
        if nodes > 1 and abs(controller_base - base) < nodes:
            raise ServiceError(
                f"the broker ports {base}-{base + nodes - 1} and the controller ports {controller_base}-"
                f"{controller_base + nodes - 1} overlap; set EPISTLE_KAFKA_CONTROLLER_PORT to {base + 10}"
            )
        name = "kafka" if nodes == 1 else f"kafka-{node}"
        super().__init__(name, base + node - 1, "kafka.Kafka")
        self.node, self.nodes = node, nodes
        self.controller_port = controller_base + node - 1
        self.controller_ports = [controller_base + n for n in range(nodes)]
        if KAFKA_SECURITY not in ("plaintext", "sasl_ssl"):
            raise ServiceError(f"EPISTLE_KAFKA_SECURITY={KAFKA_SECURITY!r}: use plaintext (the default) or sasl_ssl")
        if KAFKA_SECURITY == "sasl_ssl" and nodes > 1:
            raise ServiceError("EPISTLE_KAFKA_SECURITY=sasl_ssl runs a single broker; unset EPISTLE_KAFKA_BROKERS")
        self.security = Security() if KAFKA_SECURITY == "sasl_ssl" else None

    @property
    def config(self) -> Path:
        return self.dir / "server.properties"

    def prepare(self) -> None:
        libs = fetch_kafka()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare_security()
        data = self.dir / "data"
        replicas, min_isr = (3, 2) if self.nodes == 3 else (1, 1)
        if self.nodes == 1:
            quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}"
        else:  # a static quorum: every node formatted alike, no voter to add once they run
            quorum = "controller.quorum.voters=" + ",".join(
                f"{n + 1}@127.0.0.1:{port}" for n, port in enumerate(self.controller_ports)
            )
        properties = "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={self.node}",
                quorum,
                *(
                    self._secure_listeners()
                    if self.security
                    else [
                        f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                        f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                        "controller.listener.names=CONTROLLER",
                        "inter.broker.listener.name=PLAINTEXT",
                        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    ]
                ),
                f"log.dirs={data}",
                "num.partitions=1",
                f"default.replication.factor={replicas}",
                f"min.insync.replicas={min_isr}",
                f"offsets.topic.replication.factor={replicas}",
                "offsets.topic.num.partitions=10",
                f"transaction.state.log.replication.factor={replicas}",
                f"transaction.state.log.min.isr={min_isr}",
                f"share.coordinator.state.topic.replication.factor={replicas}",
                f"share.coordinator.state.topic.min.isr={min_isr}",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.retention.hours=24",
                "",
            ]
        )
        if not self.config.exists() or self.config.read_text() != properties:
            self.config.touch()
            self.config.chmod(0o600 if self.security else 0o644)  # with sasl_ssl it holds passwords
            self.config.write_text(properties)
        log4j = self.dir / "log4j2.properties"
        log4j.write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.out.type = Console",
                    "appender.out.name = out",
                    "appender.out.layout.type = PatternLayout",
                    "appender.out.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.out.ref = out",
                    "logger.kafka.name = kafka",
                    "logger.kafka.level = WARN",
                    "logger.state.name = state.change.logger",
                    "logger.state.level = WARN",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            # Storage is formatted once; later starts reuse the data folder.
            _run(
                [
                    _java(),
                    "-cp",
                    f"{libs}/*",
                    "kafka.tools.StorageTool",
                    "format",
                    *(["--standalone"] if self.nodes == 1 else []),
                    "-t",
                    KAFKA_CLUSTER_ID,
                    "-c",
                    str(self.config),
                    *self._scram_users(),
                ],
                "formatting Kafka storage",
                cwd=self.dir,
                hide=list(self.security.credentials().values()) if self.security else (),
            )

    def command(self) -> list[str]:
        libs = kafka_libs()
        return [
            _java(),
            *(["-Xms256m", "-Xmx1g"] if self.nodes == 1 else ["-Xms128m", "-Xmx512m"]),  # three on 2 cores
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.config),
        ]

    def ready(self) -> bool:
        if self.security:  # before SASL only ApiVersions is answered: enough to know requests are served
            return _kafka_api_versions_ok("127.0.0.1", self.port, self.security.ssl_context())
        return _kafka_metadata_ok("127.0.0.1", self.port)

    def describe(self) -> str:
        if self.security:
            return (
                f"bootstrap servers 127.0.0.1:{self.port} (SASL_SSL, {SCRAM}; users {', '.join(USERS)}: "
                f"passwords in {_shown(self.security.credentials_file)}, CA {_shown(self.security.ca)})"
            )
        return f"bootstrap servers 127.0.0.1:{self.port}"

    # -- EPISTLE_KAFKA_SECURITY=sasl_ssl ---------------------------------------------------------------
    def prepare_security(self) -> None:
        if self.security:
            self.security.ensure()

    def _secure_listeners(self) -> list[str]:
        """SASL_SSL (SCRAM-SHA-512) for clients and between brokers; the controller listener is SASL_SSL
        with PLAIN (KRaft controllers cannot use SCRAM: its credentials live in the metadata they serve).
        ACLs are enforced by the StandardAuthorizer; the admin user is the super user."""
        assert self.security is not None
        sec, passwords = self.security, self.security.credentials()
        admin, store = passwords["admin"], passwords["store"]
        scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain_login = "org.apache.kafka.common.security.plain.PlainLoginModule"
        return [
            f"listeners=SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL",
            f"sasl.mechanism.inter.broker.protocol={SCRAM}",
            f"listener.name.sasl_ssl.sasl.enabled.mechanisms={SCRAM}",
            f'listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config={scram_login} required username="admin" '
            f'password="{admin}";',
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            f'listener.name.controller.plain.sasl.jaas.config={plain_login} required username="admin" '
            f'password="{admin}" user_admin="{admin}";',
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={sec.server_p12}",
            f"ssl.keystore.password={store}",
            f"ssl.key.password={store}",
            "ssl.truststore.type=PKCS12",
            f"ssl.truststore.location={sec.truststore}",
            f"ssl.truststore.password={store}",
            "listener.name.sasl_ssl.ssl.client.auth=requested",  # asks for a client certificate, does not require one
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users=User:admin",
            "allow.everyone.if.no.acl.found=false",
        ]

    def _scram_users(self) -> list[str]:
        if not self.security:
            return []
        passwords = self.security.credentials()
        return [arg for user in USERS for arg in ("--add-scram", f"{SCRAM}=[name={user},password={passwords[user]}]")]

    def after_start(self) -> None:
        if self.security:
            self._grant_acls()

    def _grant_acls(self) -> None:
        """The app user may read, write and create any topic and join any group; the restricted user may
        only join groups (tests grant it a topic at a time). Created with confluent-kafka's admin client
        (the project's Python): Kafka's ACL tool is not among the broker's jars."""
        assert self.security is not None
        try:
            from confluent_kafka.admin import (
                AclBinding,
                AclOperation,
                AclPermissionType,
                AdminClient,
                ResourcePatternType,
                ResourceType,
            )
        except ImportError:
            raise ServiceError(
                "EPISTLE_KAFKA_SECURITY=sasl_ssl grants its ACLs with confluent-kafka: run this script with "
                "the project's Python (.venv/bin/python scripts/services.py up kafka, after make setup)"
            ) from None
        admin = AdminClient(self.client_config("admin"))

        def allow(user: str, kind: ResourceType, operation: AclOperation) -> AclBinding:
            return AclBinding(
                kind, "*", ResourcePatternType.LITERAL, f"User:{user}", "*", operation, AclPermissionType.ALLOW
            )

        topic, group, op = ResourceType.TOPIC, ResourceType.GROUP, AclOperation
        bindings = [
            *(allow("app", topic, o) for o in (op.READ, op.WRITE, op.CREATE, op.DESCRIBE, op.DESCRIBE_CONFIGS)),
            allow("app", group, op.READ),
            allow("app", group, op.DESCRIBE),
            allow("restricted", group, op.READ),
        ]
        for binding, future in admin.create_acls(bindings, request_timeout=30).items():
            try:
                future.result()
            except Exception as exc:
                raise ServiceError(f"creating the ACL {binding}: {exc}") from None

    def client_config(self, user: str) -> dict[str, str]:
        """librdkafka settings for one of USERS (the password included: never print this)."""
        assert self.security is not None
        return {
            "bootstrap.servers": f"127.0.0.1:{self.port}",
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM,
            "sasl.username": user,
            "sasl.password": self.security.credentials()[user],
            "ssl.ca.location": str(self.security.ca),
        }


def _kafka_metadata_ok(host: str, port: int) -> bool:
    """Send a Kafka Metadata request (v1, all topics) and check that a broker answers with itself listed."""
    client_id = b"epistle-services"
    body = struct.pack(">i", -1)  # topics: null = all (v1)
    header = struct.pack(">hhih", 3, 1, 1, len(client_id)) + client_id
    request = header + body
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            size = struct.unpack(">i", _recv_exact(sock, 4))[0]
            payload = _recv_exact(sock, size)
    except (OSError, struct.error):
        return False
    # correlation id (4) then brokers array length (4)
    if len(payload) < 8:
        return False
    correlation_id, brokers = struct.unpack(">ii", payload[:8])
    return correlation_id == 1 and brokers >= 1


def _kafka_api_versions_ok(host: str, port: int, context: ssl.SSLContext) -> bool:
    """Over TLS, send an ApiVersions request (v0: answered before SASL authentication) and check that the
    broker answers it without an error."""
    client_id = b"epistle-services"
    request = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=2) as raw:
            with context.wrap_socket(raw, server_hostname=host) as sock:
                sock.sendall(struct.pack(">i", len(request)) + request)
                size = struct.unpack(">i", _recv_exact(sock, 4))[0]
                payload = _recv_exact(sock, size)
    except (OSError, struct.error):  # ssl.SSLError is an OSError
        return False
    return len(payload) >= 6 and struct.unpack(">ih", payload[:6]) == (1, 0)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks.extend(chunk)
    return bytes(chunks)


class Registry(Service):
    def __init__(self) -> None:
        super().__init__("registry", _port("EPISTLE_REGISTRY_PORT", 8081), "apicurio")
        self.home = CACHE / "apicurio" / APICURIO_VERSION
        self.security = Security() if REGISTRY_TLS else None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.security else 'http'}://127.0.0.1:{self.port}"

    @property
    def ccompat_url(self) -> str:
        return f"{self.base_url}/apis/ccompat/v7"

    def prepare(self) -> None:
        fetch_registry()
        if self.security:
            self.security.ensure()
            self._basic_auth_config()

    def _basic_auth_config(self) -> None:
        """EPISTLE_REGISTRY_TLS also asks for HTTP basic authentication on the APIs (Quarkus's embedded users:
        the ``app`` user and its password from credentials.json). Quarkus reads ``config/application.properties``
        in its working folder, so the password is in a 0600 file, not on a command line."""
        assert self.security is not None
        config = self.dir / "config" / "application.properties"
        config.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                "\n".join(
                    [
                        "quarkus.http.auth.basic=true",
                        "quarkus.security.users.embedded.enabled=true",
                        "quarkus.security.users.embedded.plain-text=true",
                        f"quarkus.security.users.embedded.users.app={self.security.credentials()['app']}",
                        "quarkus.security.users.embedded.roles.app=sr-admin",
                        "quarkus.http.auth.permission.authenticated.paths=/apis/*",
                        "quarkus.http.auth.permission.authenticated.policy=authenticated",
                        "",
                    ]
                )
            )

    def _tls_options(self) -> list[str]:
        """EPISTLE_REGISTRY_TLS: HTTPS only (Quarkus's own TLS) with the services' certificate. (A required
        client certificate is not possible: Apicurio's build fixes quarkus.http.ssl.client-auth to NONE.)"""
        if not self.security:
            return [f"-Dquarkus.http.port={self.port}"]
        return [
            f"-Dquarkus.http.ssl-port={self.port}",
            "-Dquarkus.http.insecure-requests=disabled",
            f"-Dquarkus.http.ssl.certificate.files={self.security.server_cert}",
            f"-Dquarkus.http.ssl.certificate.key-files={self.security.server_key}",
        ]

    def _open(self, request: urllib.request.Request | str, timeout: float):
        context = self.security.ssl_context() if self.security else None
        if self.security:  # the APIs ask for the app user (basic authentication)
            if isinstance(request, str):
                request = urllib.request.Request(request)
            token = base64.b64encode(f"app:{self.security.credentials()['app']}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        return urllib.request.urlopen(request, timeout=timeout, context=context)

    def command(self) -> list[str]:
        return [
            _java(),
            "-Xms128m",
            "-Xmx768m",
            *self._tls_options(),
            "-Dquarkus.http.host=127.0.0.1",
            "-Dapicurio.storage.kind=sql",
            "-Dapicurio.storage.sql.kind=h2",
            "-Dapicurio.ccompat.use-canonical-hash=true",
            "-Dapicurio.rest.deletion.artifact.enabled=true",
            "-Dapicurio.rest.deletion.artifact-version.enabled=true",
            "-Dquarkus.log.level=WARN",
            '-Dquarkus.log.category."io.apicurio".level=INFO',
            "-jar",
            str(registry_jar(self.home)),
        ]

    def ready(self) -> bool:
        try:
            with self._open(f"{self.ccompat_url}/subjects", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def after_start(self) -> None:
        # The registry starts with no global rule; Confluent's default is BACKWARD, so set it.
        body = json.dumps({"compatibility": "BACKWARD"}).encode()
        req = urllib.request.Request(
            f"{self.ccompat_url}/config", data=body, method="PUT", headers={"Content-Type": "application/json"}
        )
        with self._open(req, timeout=10) as resp:
            if resp.status != 200:
                raise ServiceError(f"setting the registry's global compatibility to BACKWARD: HTTP {resp.status}")

    def describe(self) -> str:
        if self.security:
            return (
                f"Confluent-compatible URL {self.ccompat_url} (HTTPS only, CA {_shown(self.security.ca)}; basic "
                f"authentication: user app, its password in {_shown(self.security.credentials_file)})"
            )
        return f"Confluent-compatible URL {self.ccompat_url}"


class Prometheus(Service):
    def __init__(self) -> None:
        super().__init__("prometheus", _port("EPISTLE_PROMETHEUS_PORT", 9095), "prometheus")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets(self) -> Path:
        return self.dir / "targets"

    def prepare(self) -> None:
        fetch_prometheus()
        self.targets.mkdir(parents=True, exist_ok=True)
        config = {  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "epistle",
                    "file_sd_configs": [{"files": [str(self.targets / "*.json")], "refresh_interval": "1s"}],
                }
            ],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps(config, indent=2) + "\n")

    def command(self) -> list[str]:
        return [
            fetch_prometheus(),
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def describe(self) -> str:
        return f"{self.url}, scraping the targets in {_shown(self.targets)}/*.json every second"


RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # Debian's; /usr/sbin's wrapper su's to rabbitmq


def install_rabbitmq() -> Path:
    """Debian's rabbitmq-server (and Erlang), installed with apt-get when missing and we are root."""
    if RABBITMQ_SERVER.exists():
        return RABBITMQ_SERVER
    how = "install Debian's package: sudo apt-get install rabbitmq-server"
    if shutil.which("apt-get") is None:
        raise ServiceError(
            f"rabbitmq-server is not installed ({RABBITMQ_SERVER} is missing) and apt-get is not "
            "here: install RabbitMQ 3.10+ so that this path exists, or point RABBITMQ_URL at a broker"
        )
    if os.geteuid() != 0:
        raise ServiceError(f"rabbitmq-server is not installed ({RABBITMQ_SERVER} is missing): {how}")
    print("installing rabbitmq-server with apt-get ...", flush=True)
    _apt_install("rabbitmq-server", f"installing rabbitmq-server ({how})")
    if not RABBITMQ_SERVER.exists():
        raise ServiceError(f"apt-get installed rabbitmq-server but {RABBITMQ_SERVER} is missing: {how}")
    return RABBITMQ_SERVER


class RabbitMQ(Service):
    """A private RabbitMQ node: Debian's server script run as this user with every path and port set in its
    environment, so it shares nothing with a system RabbitMQ (or another checkout's)."""

    def __init__(self) -> None:
        super().__init__("rabbitmq", _port("EPISTLE_RABBITMQ_PORT", 5672), "rabbitmq-server")
        self.dist_port = _port("EPISTLE_RABBITMQ_DIST_PORT", 25672)
        self.epmd_port = _port("EPISTLE_RABBITMQ_EPMD_PORT", 4370)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def environment(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "HOME": str(d),  # the Erlang cookie (.erlang.cookie) is made and read there
            "RABBITMQ_NODENAME": f"epistle-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
        }

    def prepare(self) -> None:
        install_rabbitmq()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{self.port}",
                    "log.console = true",  # into our log file
                    "log.console.level = warning",
                    "log.file = false",
                    "disk_free_limit.absolute = 50MB",
                    "",
                ]
            )
        )
        (self.dir / "enabled_plugins").write_text("[].\n")  # no management plugin: AMQP only
        (self.dir / "rabbitmq-env.conf").write_text("")

    def command(self) -> list[str]:
        return [str(RABBITMQ_SERVER)]

    def popen_env(self) -> dict[str, str] | None:
        return self.environment()

    def ready(self) -> bool:
        return _amqp_answers("127.0.0.1", self.port)

    def describe(self) -> str:
        return f"AMQP URL {self.url}"

    def up(self) -> None:
        try:
            super().up()
        except ServiceError as exc:
            log = _tail(self.log_file, 200)
            hints = [
                hint
                for sign, hint in (
                    (
                        "dist_port_already_used",
                        f"its Erlang distribution port {self.dist_port} is in use: move it with "
                        "EPISTLE_RABBITMQ_DIST_PORT=<port>",
                    ),
                    ("erlang_dist_running_with_unexpected_nodename", "another Erlang node holds the name: stop it"),
                    ("eacces", f"it may not write under {self.dir}: check the folder's owner"),
                )
                if sign in log
            ]
            raise ServiceError(
                f"{exc}\n" + "\n".join(f"hint: {hint}" for hint in hints) if hints else str(exc)
            ) from None

    def down(self) -> None:
        pid = self.pid()
        super().down()
        if pid is not None:
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _group_alive(pid) and time.monotonic() < deadline:  # the node itself, not only its script
                time.sleep(0.2)
            if _group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        # The node started its own port mapper (epmd -daemon, outside our process group): stop it too
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if Path(epmd).exists():
            subprocess.run(
                [epmd, "-kill"], capture_output=True, env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)}
            )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _amqp_answers(host: str, port: int) -> bool:
    """Send AMQP 0-9-1's protocol header and check that a Connection.Start method frame comes back."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            frame = _recv_exact(sock, 7)
    except OSError:
        return False
    return frame[0] == 1  # a method frame on channel 0


def _kafka_nodes(brokers: int, action: str) -> list[Service]:
    """The Kafka services an action covers: the configured ones; for `down` and `status`, the nodes of either
    layout that run (a cluster started with --brokers 3 is stopped by a plain `down`), or if none does, the
    configured ones (shown as stopped)."""
    nodes: list[Service] = [Kafka()] if brokers == 1 else [Kafka(n, brokers) for n in range(1, brokers + 1)]
    if action in ("down", "status"):
        layouts: dict[str, Callable[[], Kafka]] = {
            "kafka": Kafka,
            **{f"kafka-{n}": partial(Kafka, n, 3) for n in (1, 2, 3)},
        }
        # built only when its pid file exists: the ports of a layout not in use need not be valid for it
        found = [make() for name, make in layouts.items() if (STATE / name / "pid").exists()]
        running: list[Service] = [node for node in found if node.pid() is not None]
        return running or nodes
    return nodes


def _together(nodes: list[Service], action: str) -> None:
    """Start or stop the nodes of a cluster at once. None answers metadata before a quorum of controllers
    runs, so starting them one after another would wait forever on the first; and the last node stopped
    alone has no quorum left to hand its partitions over to, so it would wait out STOP_TIMEOUT_S."""
    errors: list[ServiceError] = []
    if action == "up":
        fetch_kafka()  # once, before the nodes prepare in parallel (they would each download into one folder)

    def run(node: Service) -> None:
        try:
            if action == "up":
                node.up()
            else:
                node.down()
        except ServiceError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


SERVICES = {"kafka": Kafka, "registry": Registry}
# started only when named; a plain `down` or `status` covers them when running
OPTIONAL = {"prometheus": Prometheus, "rabbitmq": RabbitMQ}
FETCH = {"kafka": fetch_kafka, "registry": fetch_registry, "prometheus": fetch_prometheus, "rabbitmq": install_rabbitmq}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["fetch", "up", "down", "status"])
    parser.add_argument("services", nargs="*", metavar="{kafka,registry,prometheus,rabbitmq}")
    parser.add_argument(
        "--brokers",
        type=int,
        choices=[1, 3],
        help="Kafka nodes: 1 (default) or a 3-node cluster (EPISTLE_KAFKA_BROKERS)",
    )
    args = parser.parse_args(argv)
    known = {**SERVICES, **OPTIONAL}
    unknown = sorted(set(args.services) - set(known))
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    names = args.services or list(SERVICES)
    try:
        if args.action == "fetch":
            for name in args.services or [*SERVICES, "rabbitmq"]:
                try:
                    FETCH[name]()
                except ServiceError as exc:
                    if args.services or name != "rabbitmq":
                        raise
                    print(f"warning: {exc}\n  (only the RabbitMQ tests need it)", file=sys.stderr)
            print("fetch: done")
            return 0
        brokers = kafka_brokers(args.brokers)
        services: list[Service] = []
        for name in names:
            services += _kafka_nodes(brokers, args.action) if name == "kafka" else [known[name]()]
        if not args.services and args.action in ("down", "status"):  # optional services: only when running
            services += [service for service in (cls() for cls in OPTIONAL.values()) if service.pid() is not None]
        cluster = [service for service in services if isinstance(service, Kafka) and service.nodes > 1]
        if args.action == "up":
            if cluster:
                _together(cluster, "up")
            for service in services:
                if service not in cluster:
                    service.up()
        elif args.action == "down":
            for service in reversed(services):
                if service not in cluster:
                    service.down()
            if cluster:
                _together(cluster, "down")
        else:
            return 0 if all([service.status() for service in services]) else 3
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
