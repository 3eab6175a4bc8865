"""The local stack without Docker: Apache Kafka (KRaft) from Maven jars and ``redis-server``.

``up`` is idempotent: a service whose pid file names a live process of the right kind is left
alone. Processes run in their own session, so they outlive the command that started them, and
``down`` stops exactly what ``up`` started, by pid. Everything lives under the stack directory:

    <stack>/jars/...            Maven-resolved jars (headwater.jars)
    <stack>/run/<svc>.pid       pid files;  <stack>/run/settings.json  the settings ``up`` used
    <stack>/logs/<svc>.log      service logs (``headwater stack logs``)
    <stack>/kafka/<port>/       server.properties and the KRaft log dirs (formatted on first start)
    <stack>/redis/<port>/       Redis working dir (AOF when persistence is on)
    <stack>/connection.json     what every other command reads (headwater.config)
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from headwater import jars
from headwater.config import Connection, StackSettings, save_connection, stack_dir
from headwater.errors import StackError

__all__ = ["ServiceStatus", "up", "down", "status", "logs", "probe", "wait_healthy", "redis_server_binary"]

Progress = Callable[[str], None]
SERVICES = ("kafka", "redis")
_CMDLINE_MARK = {"kafka": "kafka.Kafka", "redis": "redis-server"}


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    address: str
    detail: str = ""


# ---------------------------------------------------------------- public commands

def up(settings: StackSettings, progress: Progress = print) -> Connection:
    root = stack_dir(settings)
    for sub in ("run", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if settings.mode == "docker":
        from headwater import compose
        return compose.up(settings, root, progress)
    java = _need("java", "Java 17 is not on PATH: install a JDK 17 (apt-get install openjdk-17-jre-headless)")
    kafka_jars = jars.fetch(jars.KAFKA_SERVER, root)
    flink_jars = jars.flink_classpath(root)
    redis_bin = redis_server_binary(progress)
    (root / "run" / "settings.json").write_text(settings.model_dump_json())
    # check every port before starting anything, so a conflict leaves nothing half-started
    if not _live_pid(root, "kafka"):
        _port_free(settings.kafka_port, "kafka", "--kafka-port")
        _port_free(settings.kafka_port + 1, "the kafka controller (kafka port + 1)", "--kafka-port")
    if not _live_pid(root, "redis"):
        _port_free(settings.redis_port, "redis", "--redis-port")

    _start_kafka(settings, root, java, kafka_jars, progress)
    _start_redis(settings, root, redis_bin, progress)
    conn = Connection(bootstrap_servers=f"127.0.0.1:{settings.kafka_port}",
                      redis_url=f"redis://127.0.0.1:{settings.redis_port}/0",
                      flink_jars=tuple(str(p) for p in flink_jars), mode="local")
    wait_healthy(conn, progress)
    path = save_connection(conn, root)
    progress(f"stack up: kafka {conn.bootstrap_servers}, redis {conn.redis_url}; settings in {path}")
    return conn


def down(settings: StackSettings, progress: Progress = print) -> None:
    root = stack_dir(settings)
    used = _used_settings(root, settings)
    if used.mode == "docker":
        from headwater import compose
        compose.down(root, progress)
        return
    for name in reversed(SERVICES):
        pid = _live_pid(root, name)
        if pid is None:
            progress(f"{name}: not running")
            _pidfile(root, name).unlink(missing_ok=True)
            continue
        _stop(pid, name)
        _pidfile(root, name).unlink(missing_ok=True)
        progress(f"{name}: stopped (pid {pid})")


def status(settings: StackSettings) -> list[ServiceStatus]:
    root = stack_dir(settings)
    used = _used_settings(root, settings)
    if used.mode == "docker":
        from headwater import compose
        return compose.status(root, used)
    out = []
    for name in SERVICES:
        recorded = _read_pid(root, name)
        pid = _live_pid(root, name)
        port = used.kafka_port if name == "kafka" else used.redis_port
        addr = f"127.0.0.1:{port}"
        if pid is None:
            detail = (f"pid {recorded} is gone (killed?): run `headwater stack up`" if recorded
                      else "not started: run `headwater stack up`")
            out.append(ServiceStatus(name, recorded, False, False, addr, detail))
            continue
        ok, detail = probe(name, addr)
        out.append(ServiceStatus(name, pid, True, ok, addr, detail))
    return out


def logs(settings: StackSettings, service: str | None = None, lines: int = 40) -> str:
    root = stack_dir(settings)
    chunks = []
    for name in ([service] if service else SERVICES):
        if name not in SERVICES:
            raise StackError(f"unknown service {name!r}: choose one of {', '.join(SERVICES)}")
        path = root / "logs" / f"{name}.log"
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log yet)"]
        chunks.append(f"==> {path} <==\n" + "\n".join(text))
    return "\n".join(chunks)


def redis_server_binary(progress: Progress = print) -> str:
    """``redis-server`` from PATH, installed from Debian's package when missing and permitted."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        progress("redis-server missing: installing Debian's redis-server package ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise StackError(f"`{' '.join(cmd)}` failed ({proc.stderr.strip()[-200:]}); "
                                 f"install redis-server yourself and rerun")
        found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
        if found:
            return found
    raise StackError("redis-server is not on PATH and cannot be installed here (needs root and apt-get): "
                     "install it (apt-get install redis-server) or set HEADWATER_REDIS_URL to a running Redis")


# ---------------------------------------------------------------- services

def _cluster_id() -> str:
    """A KRaft cluster id: a url-safe base64 UUID that does not start with '-'.

    A leading '-' makes kafka-storage's argument parser read the id as an option
    (1 start in 64 failed that way), so draw again, as Kafka's own Uuid does.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _start_kafka(s: StackSettings, root: Path, java: str, kafka_jars: list[Path], progress: Progress) -> None:
    if _live_pid(root, "kafka"):
        progress(f"kafka: already running (pid {_read_pid(root, 'kafka')})")
        return
    home = root / "kafka" / str(s.kafka_port)
    data = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(_server_properties(s.kafka_port, data))
    log4j = home / "log4j2.properties"
    log4j.write_text(_LOG4J)
    cp = os.pathsep.join(str(j) for j in kafka_jars)
    base = [java, f"-Xmx{s.kafka_heap}", f"-Xms{s.kafka_heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}", "-cp", cp]
    if not (data / "meta.properties").exists():
        cluster_id = _cluster_id()
        proc = subprocess.run(base + ["kafka.tools.StorageTool", "format", "-t", cluster_id,
                                      "-c", str(props), "--standalone"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"formatting Kafka storage in {data} failed: "
                             f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}; delete {data} and retry")
    _spawn(root, "kafka", base + ["kafka.Kafka", str(props)])
    progress(f"kafka: started KRaft broker {jars.KAFKA_VERSION} on 127.0.0.1:{s.kafka_port} "
             f"(pid {_read_pid(root, 'kafka')})")


def _start_redis(s: StackSettings, root: Path, redis_bin: str, progress: Progress) -> None:
    if _live_pid(root, "redis"):
        progress(f"redis: already running (pid {_read_pid(root, 'redis')})")
        return
    work = root / "redis" / str(s.redis_port)
    work.mkdir(parents=True, exist_ok=True)
    persist = (["--appendonly", "yes", "--appendfsync", "everysec"] if s.redis_persistence
               else ["--appendonly", "no", "--save", ""])
    _spawn(root, "redis", [redis_bin, "--port", str(s.redis_port), "--bind", "127.0.0.1",
                           "--dir", str(work), "--daemonize", "no", *persist])
    mode = "AOF persistence on" if s.redis_persistence else "persistence off"
    progress(f"redis: started on 127.0.0.1:{s.redis_port}, {mode} (pid {_read_pid(root, 'redis')})")


def _server_properties(port: int, data: Path) -> str:
    return f"""# written by `headwater stack up`: one combined KRaft broker+controller on loopback
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{port + 1}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
# one broker: internal topics cannot be replicated
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# fewer internal partitions: faster start and first group join on two cores
offsets.topic.num.partitions=6
transaction.state.log.num.partitions=6
# tests create and join groups constantly; don't wait 3 s for more members
group.initial.rebalance.delay.ms=0
num.partitions=3
"""


_LOG4J = """status = warn
appender.file.type = Console
appender.file.name = OUT
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = warn
logger.apache.name = org.apache.kafka
logger.apache.level = warn
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
"""


# ---------------------------------------------------------------- process helpers

def _need(tool: str, message: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise StackError(message)
    return found


def _pidfile(root: Path, name: str) -> Path:
    return root / "run" / f"{name}.pid"


def _read_pid(root: Path, name: str) -> int | None:
    try:
        return int(_pidfile(root, name).read_text().strip())
    except (OSError, ValueError):
        return None


def _live_pid(root: Path, name: str) -> int | None:
    """The recorded pid if that process is alive *and* is still our service (pids get reused)."""
    pid = _read_pid(root, name)
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.split(") ", 1)[-1].startswith("Z"):
        return None  # zombie: dead but not yet reaped
    return pid if _CMDLINE_MARK[name] in cmdline else None


def _spawn(root: Path, name: str, cmd: list[str]) -> None:
    log = open(root / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    _pidfile(root, name).write_text(f"{proc.pid}\n")


def _stop(pid: int, name: str, timeout: float = 20.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1].startswith("Z")
    except OSError:
        return True


def _port_free(port: int, what: str, flag: str) -> None:
    with socket.socket() as s:
        s.settimeout(0.3)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise StackError(f"port {port} for {what} is already in use: stop what listens there "
                             f"or choose another port with {flag}")


def probe(name: str, addr: str) -> tuple[bool, str]:
    host, port = addr.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, int(port))) != 0:
            return False, f"nothing listens on {addr}"
    try:
        if name == "kafka":
            from confluent_kafka.admin import AdminClient
            # log_level 0: a probe reports in its return value, not as librdkafka log spam
            md = AdminClient({"bootstrap.servers": addr, "log_level": 0}).list_topics(timeout=3)
            return True, f"{len(md.brokers)} broker(s), {len(md.topics)} topic(s)"
        import redis
        redis.Redis(host=host, port=int(port), socket_timeout=2).ping()
        return True, "PING ok"
    except Exception as exc:  # a probe reports, it never raises
        return False, f"not answering: {str(exc).splitlines()[0][:120]}"


def wait_healthy(conn: Connection, progress: Progress, timeout: float = 90.0) -> None:
    targets = {"kafka": conn.bootstrap_servers, "redis": conn.redis_url.split("//")[1].split("/")[0]}
    deadline = time.monotonic() + timeout
    for name, addr in targets.items():
        while True:
            ok, detail = probe(name, addr)
            if ok:
                progress(f"{name}: healthy ({detail})")
                break
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not become healthy in {timeout:.0f}s ({detail}): "
                                 f"see `headwater stack logs {name}`")
            time.sleep(0.5)


def saved_ports(defaults: StackSettings) -> dict[str, int]:
    """The ports of the last `stack up` in this stack directory, so that a plain `stack up` after
    `setup.sh --kafka-port ...` neither probes the default ports (another stack may live there)
    nor rewrites the connection file to point at them."""
    used = _used_settings(stack_dir(defaults), defaults)
    return {"kafka_port": used.kafka_port, "redis_port": used.redis_port}


def _used_settings(root: Path, fallback: StackSettings) -> StackSettings:
    path = root / "run" / "settings.json"
    try:
        return StackSettings.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError):
        return fallback
