"""Where schema ids come from: a JSON file committed in the feature repo, or a Schema Registry.

Ids end up inside every Kafka record (Confluent framing), so they must be stable across runs and
machines. Locally that means a file under version control rather than an in-memory counter.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import fastavro

from schemas.errors import SchemaError, SchemaStoreError, UnknownSchemaIdError

__all__ = [
    "SchemaStore",
    "FileSchemaStore",
    "RegistrySchemaStore",
    "open_store",
    "canonical_json",
    "validate_schema",
    "REGISTRY_FILE",
]

#: File name of the local store inside a feature repository.
REGISTRY_FILE = "schema_registry.json"
_FORMAT = 1
_NOTE = (
    "Managed by headwater. Commit this file: Kafka records carry these ids. "
    "Never edit or reuse an id."
)


def canonical_json(schema: Any) -> str:
    """Identity of a schema for id assignment: key-sorted, whitespace-free JSON.

    Not Avro's Parsing Canonical Form: that drops defaults and aliases, which change how data
    resolves, so two schemas differing only there must get different ids.
    """
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def validate_schema(schema: Any, where: str) -> None:
    """Raise :class:`SchemaError` naming ``where`` unless ``schema`` is a valid Avro schema."""
    try:
        fastavro.parse_schema(copy.deepcopy(schema))
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SchemaError(f"{where}: not a valid Avro schema: {exc}") from exc


@runtime_checkable
class SchemaStore(Protocol):
    """Maps schemas to the integer ids written in the Confluent wire header, per subject."""

    def register(self, subject: str, schema: dict) -> int:
        """Register ``schema`` under ``subject``; the same schema always returns the same id."""
        ...

    def get_by_id(self, schema_id: int) -> dict:
        """The schema for an id; raises :class:`UnknownSchemaIdError` if there is none."""
        ...

    def latest(self, subject: str) -> tuple[int, dict] | None:
        """(id, schema) of the newest version of ``subject``, or None for a new subject."""
        ...

    def versions(self, subject: str) -> list[tuple[int, dict]]:
        """Every (id, schema) registered under ``subject``, oldest first."""
        ...


class FileSchemaStore:
    """Schema ids in one JSON file; ids are global, sequential from 1, never reused.

    Every write re-reads the file first and replaces it atomically, so concurrent CLI runs at
    worst race on who gets the next id, never corrupt the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._schemas: dict[int, Any] = {}
        self._subjects: dict[str, list[int]] = {}
        self._by_canon: dict[str, int] = {}
        self._stamp: tuple[int, int, int] | None = None

    def register(self, subject: str, schema: dict) -> int:
        validate_schema(schema, f"schema for subject {subject!r}")
        canon = canonical_json(schema)
        self._reload()
        schema_id = self._by_canon.get(canon)
        changed = False
        if schema_id is None:
            schema_id = max(self._schemas, default=0) + 1
            self._schemas[schema_id] = json.loads(canon)
            self._by_canon[canon] = schema_id
            changed = True
        ids = self._subjects.setdefault(subject, [])
        if schema_id not in ids:
            ids.append(schema_id)
            changed = True
        if changed:
            self._write()
        return schema_id

    def get_by_id(self, schema_id: int) -> dict:
        if schema_id not in self._schemas:
            self._reload()  # another process may have registered it since we last read
        try:
            return copy.deepcopy(self._schemas[schema_id])
        except KeyError:
            raise UnknownSchemaIdError(schema_id, str(self.path)) from None

    def latest(self, subject: str) -> tuple[int, dict] | None:
        found = self.versions(subject)
        return found[-1] if found else None

    def versions(self, subject: str) -> list[tuple[int, dict]]:
        self._reload()
        return [(i, copy.deepcopy(self._schemas[i])) for i in self._subjects.get(subject, [])]

    def _corrupt(self, detail: str) -> SchemaStoreError:
        return SchemaStoreError(
            f"{self.path} is corrupt ({detail}); restore it from git, or delete it to start over "
            "(records already on Kafka with its ids will then no longer decode)"
        )

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._schemas, self._subjects, self._by_canon, self._stamp = {}, {}, {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._corrupt(f"not JSON: {exc}") from exc
        except OSError as exc:
            raise SchemaStoreError(f"cannot read {self.path}: {exc}") from exc
        self._schemas, self._subjects = self._parse(data)
        self._by_canon = {canonical_json(s): i for i, s in self._schemas.items()}
        self._stamp = stamp

    def _parse(self, data: Any) -> tuple[dict[int, Any], dict[str, list[int]]]:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise self._corrupt(f"expected an object with \"format\": {_FORMAT}")
        raw_schemas, raw_subjects = data.get("schemas"), data.get("subjects")
        if not isinstance(raw_schemas, dict) or not isinstance(raw_subjects, dict):
            raise self._corrupt('"schemas" and "subjects" must be objects')
        schemas: dict[int, Any] = {}
        for key, schema in raw_schemas.items():
            if not key.isdigit() or int(key) < 1:
                raise self._corrupt(f"schema id {key!r} is not a positive integer")
            schemas[int(key)] = schema
        subjects: dict[str, list[int]] = {}
        for subject, ids in raw_subjects.items():
            if not isinstance(ids, list) or not all(type(i) is int and i in schemas for i in ids):
                raise self._corrupt(f"subject {subject!r} must list ids present in \"schemas\"")
            subjects[subject] = list(ids)
        return schemas, subjects

    def _write(self) -> None:
        self._stamp = None  # whatever happens below, the next read re-reads the file
        data = {
            "format": _FORMAT,
            "note": _NOTE,
            "schemas": {str(i): self._schemas[i] for i in sorted(self._schemas)},
            "subjects": {s: self._subjects[s] for s in sorted(self._subjects)},
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SchemaStoreError(f"cannot write {self.path}: {exc}") from exc


def _import_client() -> tuple[Any, Any]:
    """Import lazily: the registry client pulls optional deps (httpx, authlib) most users lack."""
    try:
        from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    except ImportError as exc:
        raise SchemaStoreError(
            f"a Schema Registry URL is configured but its client cannot be imported ({exc}); "
            "install it with: pip install 'confluent-kafka[schemaregistry]', or unset the "
            f"registry URL to use {REGISTRY_FILE}"
        ) from exc
    return SchemaRegistryClient, Schema


# Confluent Schema Registry error codes (HTTP 404 family).
_SUBJECT_NOT_FOUND = 40401
_SCHEMA_NOT_FOUND = 40403


class RegistrySchemaStore:
    """Thin adapter over ``confluent_kafka``'s SchemaRegistryClient (AVRO schemas).

    The client is created on first use, so building a store (e.g. while loading config) never
    needs the network or the optional client dependencies.
    """

    def __init__(self, url: str, config: dict[str, Any] | None = None) -> None:
        self.url = url
        self._conf = {**(config or {}), "url": url}
        self._client: Any = None
        self._schema_cls: Any = None
        self._by_id: dict[int, dict] = {}  # ids are immutable in a registry; cache forever

    def register(self, subject: str, schema: dict) -> int:
        validate_schema(schema, f"schema for subject {subject!r}")
        client = self._get_client()
        obj = self._schema_cls(canonical_json(schema), "AVRO")
        return int(self._call("register", lambda: client.register_schema(subject, obj)))

    def get_by_id(self, schema_id: int) -> dict:
        if schema_id not in self._by_id:
            client = self._get_client()
            found = self._call("get_schema", lambda: client.get_schema(schema_id),
                               missing=_SCHEMA_NOT_FOUND)
            if found is None:
                raise UnknownSchemaIdError(schema_id, f"Schema Registry {self.url}")
            self._by_id[schema_id] = self._loads(found.schema_str)
        return copy.deepcopy(self._by_id[schema_id])

    def latest(self, subject: str) -> tuple[int, dict] | None:
        client = self._get_client()
        reg = self._call("get_latest_version", lambda: client.get_latest_version(subject),
                         missing=_SUBJECT_NOT_FOUND)
        return None if reg is None else (int(reg.schema_id), self._loads(reg.schema.schema_str))

    def versions(self, subject: str) -> list[tuple[int, dict]]:
        client = self._get_client()
        nums = self._call("get_versions", lambda: client.get_versions(subject),
                          missing=_SUBJECT_NOT_FOUND) or []
        out = []
        for n in sorted(nums):
            reg = self._call("get_version", lambda n=n: client.get_version(subject, n))
            out.append((int(reg.schema_id), self._loads(reg.schema.schema_str)))
        return out

    def _get_client(self) -> Any:
        if self._client is None:
            client_cls, self._schema_cls = _import_client()
            self._client = self._call("connect", lambda: client_cls(dict(self._conf)))
        return self._client

    def _call(self, op: str, fn: Any, missing: int | None = None) -> Any:
        """Run one client call; a 'not found' with code ``missing`` returns None."""
        try:
            return fn()
        except Exception as exc:  # network, HTTP and registry errors all become one type
            if missing is not None and getattr(exc, "error_code", None) == missing:
                return None
            raise SchemaStoreError(f"Schema Registry {self.url}: {op} failed: {exc}") from exc

    def _loads(self, text: str) -> dict:
        try:
            return json.loads(text)
        except ValueError as exc:
            raise SchemaStoreError(f"Schema Registry {self.url} returned a non-JSON schema") from exc


def open_store(repo_dir: Path, registry_url: str | None = None) -> SchemaStore:
    """The store a feature repo uses: its Schema Registry if configured, else its JSON file.

    ``repo_dir`` is the feature repository (store file ``<repo_dir>/schema_registry.json``)
    or, when it ends in ``.json``, the store file itself (a configured ``schema_store`` path).
    """
    if registry_url:
        return RegistrySchemaStore(registry_url)
    path = Path(repo_dir)
    return FileSchemaStore(path if path.suffix == ".json" else path / REGISTRY_FILE)
