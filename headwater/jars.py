"""The one place that knows which JVM artifacts Headwater runs, and fetches them with Maven.

Versions, and why:

* **Flink 2.2** (PyFlink ``apache-flink==2.2.1``): the newest Flink minor with an official
  ``flink-sql-connector-kafka`` build for it (``5.0.0-2.2``). Flink 2.3 has no Kafka connector.
* **Parquet / Avro formats**: Maven Central has no ``flink-sql-parquet`` / ``flink-sql-avro``
  bundle for 2.2, so we take the thin ``flink-parquet`` / ``flink-avro`` jars with their
  non-Flink dependencies, plus Hadoop's shaded client jars (the Parquet format needs Hadoop's
  ``Configuration`` and file-system classes).
* **headwater-flink-format** (``streamjobs/java``): our own small Flink format, Avro inside
  Confluent framing without a registry service; built from source with Maven, once per change.
* **Apache Kafka 4.1** server jars (KRaft only), with a log4j2 binding for its slf4j logging.

Each artifact set is resolved by a generated ``pom.xml`` and ``mvn dependency:copy-dependencies``
into ``<stack dir>/jars/<set>-<hash>/``; a ``.complete`` marker makes the fetch happen once.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from headwater.errors import StackError

__all__ = ["FLINK_VERSION", "KAFKA_VERSION", "ArtifactSet", "KAFKA_SERVER", "FLINK_CONNECTORS",
           "fetch", "build_format", "flink_classpath"]

FLINK_VERSION = "2.2.1"
FLINK_KAFKA_CONNECTOR = "5.0.0-2.2"
FLINK_PARQUET = "2.2.0"   # newest flink-parquet published for the 2.2 minor
FLINK_AVRO = "2.2.1"
HADOOP_VERSION = "3.3.6"
KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"


@dataclass(frozen=True)
class Artifact:
    group: str
    artifact: str
    version: str
    exclude_groups: tuple[str, ...] = ()
    """Transitive groups to leave out (Flink's own classes already ship inside PyFlink)."""


@dataclass(frozen=True)
class ArtifactSet:
    name: str
    artifacts: tuple[Artifact, ...]
    exclude_jars: tuple[str, ...] = ()
    """Jar name prefixes to drop after resolution (duplicates of what the runtime already has)."""

    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:10]


KAFKA_SERVER = ArtifactSet("kafka", (
    Artifact("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
    Artifact("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
))

FLINK_CONNECTORS = ArtifactSet("flink", (
    Artifact("org.apache.flink", "flink-sql-connector-kafka", FLINK_KAFKA_CONNECTOR),
    Artifact("org.apache.flink", "flink-parquet", FLINK_PARQUET, ("org.apache.flink",)),
    Artifact("org.apache.flink", "flink-avro", FLINK_AVRO, ("org.apache.flink",)),
    Artifact("org.apache.hadoop", "hadoop-client-api", HADOOP_VERSION),
    Artifact("org.apache.hadoop", "hadoop-client-runtime", HADOOP_VERSION),
), exclude_jars=("slf4j-api-", "commons-logging-", "jsr305-"))


def _pom(aset: ArtifactSet) -> str:
    deps = []
    for a in aset.artifacts:
        excl = "".join(f"<exclusion><groupId>{g}</groupId><artifactId>*</artifactId></exclusion>"
                       for g in a.exclude_groups)
        excl = f"<exclusions>{excl}</exclusions>" if excl else ""
        deps.append(f"<dependency><groupId>{a.group}</groupId><artifactId>{a.artifact}</artifactId>"
                    f"<version>{a.version}</version>{excl}</dependency>")
    return ("<project xmlns=\"http://maven.apache.org/POM/4.0.0\"><modelVersion>4.0.0</modelVersion>"
            f"<groupId>headwater.stack</groupId><artifactId>{aset.name}</artifactId><version>1</version>"
            "<packaging>pom</packaging><dependencies>" + "".join(deps) + "</dependencies></project>\n")


def fetch(aset: ArtifactSet, stack_dir: Path, *, quiet: bool = False) -> list[Path]:
    """Resolve ``aset`` once into the stack directory and return its jars (sorted)."""
    dest = stack_dir / "jars" / f"{aset.name}-{aset.digest()}"
    marker = dest / ".complete"
    if not marker.exists():
        mvn = _mvn()
        if dest.exists():
            shutil.rmtree(dest)
        (dest / "libs").mkdir(parents=True)
        (dest / "pom.xml").write_text(_pom(aset))
        if not quiet:
            print(f"fetching {aset.name} jars with Maven into {dest} (once) ...", flush=True)
        proc = subprocess.run(
            [mvn, "-B", "-q", "-f", str(dest / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={dest / 'libs'}", "-DincludeScope=runtime"],
            capture_output=True, text=True)
        if proc.returncode != 0:
            detail = _maven_error(proc.stdout + proc.stderr)
            raise StackError(f"Maven could not resolve the {aset.name} jars ({detail}); check network "
                             f"access to Maven Central or ~/.m2/settings.xml, then rerun")
        for jar in (dest / "libs").glob("*.jar"):
            if jar.name.startswith(aset.exclude_jars):
                jar.unlink()
        marker.write_text("ok\n")
    return sorted((dest / "libs").glob("*.jar"))


def _mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is not on PATH: install it (apt-get install maven) "
                         "so Headwater can fetch the Kafka and Flink jars and build its Flink format")
    return mvn


def _maven_error(out: str) -> str:
    for line in out.splitlines():
        if "[ERROR]" in line and ("Could not" in line or "Failed" in line):
            return line.replace("[ERROR]", "").strip()[:240]
    return (out.strip().splitlines() or ["no output"])[-1][:240]


FORMAT_SOURCE = Path(__file__).resolve().parent.parent / "streamjobs" / "java"


def build_format(stack_dir: Path, *, quiet: bool = False) -> Path:
    """Build ``streamjobs/java`` (the ``headwater-avro`` Flink format) once per source change."""
    sources = sorted(p for p in FORMAT_SOURCE.rglob("*") if p.is_file() and "target" not in p.parts)
    if not sources:
        raise StackError(f"Flink format sources missing under {FORMAT_SOURCE}: reinstall Headwater from a full checkout")
    digest = hashlib.sha256()
    for p in sources:
        digest.update(str(p.relative_to(FORMAT_SOURCE)).encode())
        digest.update(p.read_bytes())
    dest = stack_dir / "jars" / f"format-{digest.hexdigest()[:10]}"
    jar = dest / "headwater-flink-format.jar"
    if jar.exists():
        return jar
    mvn = _mvn()
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(FORMAT_SOURCE, dest / "src", ignore=shutil.ignore_patterns("target"))
    if not quiet:
        print(f"building the headwater-avro Flink format with Maven into {dest} (once) ...", flush=True)
    proc = subprocess.run([mvn, "-B", "-q", "-f", str(dest / "src" / "pom.xml"), "package", "-DskipTests"],
                          capture_output=True, text=True)
    built = sorted((dest / "src" / "target").glob("headwater-flink-format-*.jar"))
    if proc.returncode != 0 or not built:
        raise StackError(f"building the Flink format failed ({_maven_error(proc.stdout + proc.stderr)}); "
                         f"check that Maven can reach Maven Central, then rerun")
    shutil.copy2(built[0], jar)
    return jar


def flink_classpath(stack_dir: Path, *, quiet: bool = False) -> list[Path]:
    """Every jar a Headwater Flink job needs beyond PyFlink's own lib/."""
    return fetch(FLINK_CONNECTORS, stack_dir, quiet=quiet) + [build_format(stack_dir, quiet=quiet)]
