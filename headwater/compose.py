"""``headwater stack up --docker``: the same services from ``docker-compose.yml``.

Only used when a Docker engine answers; it writes the same connection file as the local
launcher, so every other command is unaware of which one started the stack.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

from headwater import jars
from headwater.config import Connection, StackSettings, save_connection
from headwater.errors import StackError

__all__ = ["docker_available", "up", "down", "status"]

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def _compose(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), *args], capture_output=True, text=True)


def up(settings: StackSettings, root: Path, progress: Callable[[str], None]) -> Connection:
    if not docker_available():
        raise StackError("--docker needs a running Docker engine (`docker info` fails here): "
                         "drop --docker to run Kafka and Redis as local processes")
    flink_jars = jars.flink_classpath(root)
    (root / "run" / "settings.json").write_text(settings.model_dump_json())
    proc = _compose("up", "-d", "--wait")
    if proc.returncode != 0:
        raise StackError(f"docker compose up failed: {proc.stderr.strip()[-300:]}")
    conn = Connection(bootstrap_servers=f"127.0.0.1:{settings.kafka_port}",
                      redis_url=f"redis://127.0.0.1:{settings.redis_port}/0",
                      flink_jars=tuple(str(p) for p in flink_jars), mode="docker")
    from headwater.stack import wait_healthy
    wait_healthy(conn, progress)
    save_connection(conn, root)
    return conn


def down(root: Path, progress: Callable[[str], None]) -> None:
    proc = _compose("down")
    progress("docker stack stopped" if proc.returncode == 0 else f"docker compose down failed: {proc.stderr[-200:]}")


def status(root: Path, settings: StackSettings):
    from headwater.stack import ServiceStatus, probe
    out = []
    for name, port in (("kafka", settings.kafka_port), ("redis", settings.redis_port)):
        ok, detail = probe(name, f"127.0.0.1:{port}")
        out.append(ServiceStatus(name, None, ok, ok, f"127.0.0.1:{port}", detail + " (docker)"))
    return out
