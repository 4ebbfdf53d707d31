"""A real single-node Kafka (KRaft, combined broker+controller) run from Maven-resolved jars.

Jars from Maven instead of a Kafka tarball or Docker: Maven Central is reachable where
the download sites are not, ~/.m2 caches across checkouts, and the pom pins the version,
so a fresh checkout gets a broker in seconds with no Docker daemon.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from pipeline.settings import PROJECT_ROOT
from tools.infra.procs import InfraError, LocalServer, check_port_free, file_lock, port_open

KAFKA_VERSION = "3.9.1"
POM = PROJECT_ROOT / "deploy" / "kafka" / "pom.xml"
CACHE_DIR = PROJECT_ROOT / "var" / "cache" / f"kafka-{KAFKA_VERSION}"
SETTING = "PIPELINE_BOOTSTRAP_SERVERS"
_COMPLETE = ".complete"
_MVN_TIMEOUT_S = 600
_FORMAT_TIMEOUT_S = 120
_JVM_OPTS = ["-Xms256m", "-Xmx1g", "-Djava.awt.headless=true"]

_LOG4J = """\
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


class LocalKafka(LocalServer):
    """One broker+controller process with its data, config, pid and log in data_dir/kafka."""

    name = "kafka"
    setting = SETTING
    marker = "kafka.Kafka"  # what our broker's command line contains

    def __init__(self, data_dir: Path, host: str, port: int, controller_port: int | None = None,
                 sasl_port: int | None = None, scram_users: dict[str, str] | None = None,
                 node_id: int = 1, quorum: dict[int, int] | None = None, cluster_id: str | None = None,
                 super_users: list[str] | None = None, ssl_port: int | None = None,
                 ssl_cert_chain: str | None = None, ssl_key: str | None = None,
                 ssl_truststore: str | None = None) -> None:
        super().__init__(data_dir, host, port)
        # A node of a local multi-broker cluster (fault tests): its id, every node's
        # controller port by id, and the cluster id they share.
        self.node_id = node_id
        self.quorum = quorum
        self.cluster_id = cluster_id
        self.controller_port = port + 1 if controller_port is None else controller_port
        # An extra SASL_PLAINTEXT listener with SCRAM-SHA-512 users, created with the
        # storage at its first start (the tests of the pipeline's Kafka credentials).
        self.sasl_port = sasl_port
        self.scram_users = dict(scram_users or {})
        # An extra SSL listener (the tests of the pipeline's TLS): the broker's
        # certificate chain and unencrypted PKCS#8 key, PEM text; a CA's PEM to trust
        # client certificates with (optional: clients are not asked for one).
        self.ssl_port = ssl_port
        self.ssl_cert_chain, self.ssl_key, self.ssl_truststore = ssl_cert_chain, ssl_key, ssl_truststore
        if ssl_port is not None and not (ssl_cert_chain and ssl_key):
            raise ValueError("an SSL listener needs ssl_cert_chain and ssl_key (PEM text)")
        # None: no authorizer (any client may do anything). A list: KRaft's
        # StandardAuthorizer, denying what no ACL allows; these principals are super users,
        # and so is User:ANONYMOUS, the plain listener's, which the broker and controller
        # use themselves: secured clients connect to the SASL listener (tests of ACLs).
        self.super_users = None if super_users is None else list(super_users)
        self.log_dir = self.dir / "logs"
        self.properties_file = self.dir / "server.properties"
        self.log4j_file = self.dir / "log4j.properties"

    @property
    def label(self) -> str:
        return f"kafka {KAFKA_VERSION}"

    # --- jars -----------------------------------------------------------------------

    def ensure_jars(self) -> Path:
        """The broker classpath folder, resolved with Maven once per pom version."""
        libs = CACHE_DIR / "libs"
        if _jars_complete(libs):
            return libs
        with file_lock(CACHE_DIR.parent / f"{CACHE_DIR.name}.lock", _MVN_TIMEOUT_S + 60, "Kafka jars"):
            if _jars_complete(libs):  # another process finished while we waited
                return libs
            mvn = shutil.which("mvn")
            if mvn is None:
                raise InfraError(
                    "Kafka jars are not cached yet and Maven is missing; install it "
                    "(apt-get install maven) so `dev up` can fetch Kafka from deploy/kafka/pom.xml"
                )
            tmp = CACHE_DIR / f"libs.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={tmp}"]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=_MVN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                shutil.rmtree(tmp, ignore_errors=True)
                raise InfraError(
                    f"Maven did not fetch the Kafka jars within {_MVN_TIMEOUT_S} s; check network "
                    "access to Maven Central (or the mirror in ~/.m2/settings.xml) and retry"
                ) from None
            jars = sorted(p.name for p in tmp.glob("*.jar")) if tmp.is_dir() else []
            if out.returncode != 0 or f"kafka_2.13-{KAFKA_VERSION}.jar" not in jars:
                shutil.rmtree(tmp, ignore_errors=True)
                detail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
                raise InfraError(
                    f"Maven could not fetch the Kafka jars ({' '.join(cmd)} exited {out.returncode}); "
                    f"check network access to Maven Central or ~/.m2/settings.xml:\n{detail}"
                )
            (tmp / _COMPLETE).write_text(json.dumps({"pom_sha256": _pom_hash(), "jars": jars}))
            shutil.rmtree(libs, ignore_errors=True)
            tmp.rename(libs)
            return libs

    # --- lifecycle ------------------------------------------------------------------

    def start(self, timeout_s: float = 90) -> None:
        """Start the broker, or return at once if ours already runs; blocks until it
        serves metadata, because an open port alone may still refuse clients.

        timeout_s bounds the broker's boot; the one-time jar download and storage format
        have their own timeouts, so a cold cache does not eat into it.
        """
        # A concurrent caller may hold the lock through a whole cold start.
        with self._start_lock(timeout_s + _MVN_TIMEOUT_S + _FORMAT_TIMEOUT_S):
            pid = self.pid()
            if pid is not None:
                self._check_same_address(pid)
                if not port_open(self.host, self.port):  # started by someone else, still booting
                    self._wait_ready(pid, self._ready, time.monotonic() + timeout_s)
                return
            check_port_free(self.host, self.port, "Kafka", SETTING)
            check_port_free(
                self.host, self.controller_port, "Kafka controller",
                f"{SETTING} (the local controller listens on the broker port + 1)",
            )
            java = _java()
            classpath = f"{self.ensure_jars()}/*"
            self._write_config()
            if not (self.log_dir / "meta.properties").exists():
                self._format(java, classpath)
            argv = [java, *_JVM_OPTS, "-cp", classpath, f"-Dlog4j.configuration=file:{self.log4j_file}",
                    "kafka.Kafka", str(self.properties_file)]
            self._launch(argv, self._ready, time.monotonic() + timeout_s)

    # --- internals ------------------------------------------------------------------

    def _write_config(self) -> None:
        # Rewritten on every start so a changed PIPELINE_BOOTSTRAP_SERVERS takes effect.
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(
                f"{i}@{self.host}:{p}"
                for i, p in sorted((self.quorum or {self.node_id: self.controller_port}).items())),
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.address}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            # A broker restarted after a crash (kill(), fault tests) is refused as a
            # duplicate until its old session expires: 5 s instead of the default 9 s.
            "broker.session.timeout.ms": "5000",
            "broker.heartbeat.interval.ms": "1000",
            "auto.create.topics.enable": "false",
        }
        if self.quorum and len(self.quorum) >= 3:
            props.update({"offsets.topic.replication.factor": "3", "transaction.state.log.replication.factor": "3",
                          "transaction.state.log.min.isr": "2", "min.insync.replicas": "2"})
        if self.sasl_port is not None:
            sasl = f"SASL_PLAINTEXT://{self.host}:{self.sasl_port}"
            props.update({
                "listeners": f"PLAINTEXT://{self.host}:{self.port},{sasl},CONTROLLER://{self.host}:{self.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{self.address},{sasl}",
                "listener.security.protocol.map": (
                    "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"),
                "inter.broker.listener.name": "PLAINTEXT",
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            })
        if self.super_users is not None:
            props.update({
                "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "allow.everyone.if.no.acl.found": "false",
                "super.users": ";".join(["User:ANONYMOUS", *self.super_users]),
            })
        if self.ssl_port is not None:
            tls = f"SSL://{self.host}:{self.ssl_port}"
            props["listeners"] += f",{tls}"
            props["advertised.listeners"] += f",{tls}"
            props["listener.security.protocol.map"] += ",SSL:SSL"
            props["inter.broker.listener.name"] = "PLAINTEXT"
            props.update({"ssl.keystore.type": "PEM", "ssl.keystore.certificate.chain": _one_line(self.ssl_cert_chain),
                          "ssl.keystore.key": _one_line(self.ssl_key)})
            if self.ssl_truststore:
                props.update({"ssl.truststore.type": "PEM",
                              "ssl.truststore.certificates": _one_line(self.ssl_truststore)})
        text = "# Written by tools/infra/kafka.py on every start; edits are lost.\n"
        text += "".join(f"{k}={v}\n" for k, v in props.items())
        self.properties_file.write_text(text)
        self.log4j_file.write_text(_LOG4J)

    def _format(self, java: str, classpath: str) -> None:
        """First start only: KRaft refuses to run on an unformatted log dir."""
        cmd = [java, "-cp", classpath, f"-Dlog4j.configuration=file:{self.log4j_file}",
               "kafka.tools.StorageTool", "format", "-t", self.cluster_id or new_cluster_id(),
               "-c", str(self.properties_file), "--ignore-formatted"]
        for user, password in self.scram_users.items():
            cmd += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=_FORMAT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise InfraError(f"formatting Kafka storage in {self.log_dir} took over {_FORMAT_TIMEOUT_S} s") from None
        if out.returncode != 0:
            raise InfraError(
                f"formatting Kafka storage in {self.log_dir} failed; delete that folder to start "
                f"from scratch:\n{(out.stdout + out.stderr).strip()}"
            )

    def _ready(self) -> bool:
        return port_open(self.host, self.port) and _run(_serves_metadata(self.address, 5.0))


def _one_line(pem: str | None) -> str:
    """PEM text as one properties-file value (Java reads `\\n` as a line break)."""
    return (pem or "").strip().replace("\r", "").replace("\n", "\\n")


def _jars_complete(libs: Path) -> bool:
    try:
        marker = json.loads((libs / _COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("pom_sha256") == _pom_hash() and all((libs / j).is_file() for j in marker.get("jars", []))


def _pom_hash() -> str:
    try:
        return hashlib.sha256(POM.read_bytes()).hexdigest()
    except OSError:
        raise InfraError(f"{POM} is missing; restore it from git (it pins the Kafka version)") from None


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise InfraError("Java is not installed; Kafka needs Java 17+ (apt-get install openjdk-17-jre-headless)")
    return java


def new_cluster_id() -> str:
    """Same format as `StorageTool random-uuid` without paying for a JVM start."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that look like command-line flags
            return cid


async def _serves_metadata(bootstrap: str, timeout_s: float) -> bool:
    """True when the broker lists itself in a metadata response, i.e. it is registered
    with the controller and unfenced, so producers and consumers will work."""
    from aiokafka.admin import AIOKafkaAdminClient  # here: `dev status`/`down` need no client

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            info = await admin.describe_cluster()
        return bool(info.get("brokers"))
    except Exception:
        return False
    finally:
        try:
            await admin.close()
        except Exception:
            pass


def _run(coro: Coroutine[Any, Any, bool]) -> bool:
    """Run a probe from sync code, also when called inside an event loop (async tests)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
