"""Model registry: immutable versions with lineage, movable aliases, and the skew guard.

Layout (one directory per model, under ``<repo>/models`` by default)::

    models/<name>/<version>/      immutable: model files + meta.json (files made read-only)
    models/<name>/aliases.json    {"aliases": {"champion": 1, "challenger": 2, "shadow": 3},
                                   "canary_percent": 0.0, "history": [moves...]}

A version directory is staged under a temporary name and renamed into place, so a reader never
sees half a version and two writers never share a number. Aliases are rewritten atomically
(tmp + rename) under a file lock; ``history`` keeps every move, for rollback. The scorer follows
alias moves by re-reading ``aliases.json`` (``Registry.resolve``), no restart needed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scoring.models.errors import RegistryError, SkewError

__all__ = ["ModelMeta", "LoadedModel", "Aliases", "Registry", "feature_hashes", "definition_hash",
           "check_definitions", "SkewError", "RegistryError", "KINDS"]

KINDS = ("gbdt", "logreg", "mlp", "onnx")
META_FILE = "meta.json"
ALIASES_FILE = "aliases.json"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def feature_hashes(plan, refs: Iterable[str]) -> dict[str, str]:
    """Per ``view:feature`` ref, a hash of everything that defines its value: view, entity key, op,
    column and type, window, hop, TTL, tick, lateness, source topic and event-time field.
    Owner or description edits do not change it; any semantic edit does."""
    out: dict[str, str] = {}
    for ref in refs:
        fr = plan.features_by_ref(ref)
        if len(fr) != 1:
            raise RegistryError(f"feature ref {ref!r} must name exactly one feature (not view:*)")
        v, f = plan.view(fr[0].view), fr[0].feature
        out[ref] = _digest({
            "view": v.name, "entity_key": v.entity_key, "op": f.op, "column": f.column,
            "type": f.column_type, "window_ms": f.window_ms, "hop_ms": f.hop_ms, "ttl_ms": f.ttl_ms,
            "tick_ms": v.tick_ms, "lateness_ms": v.allowed_lateness_ms,
            "future_ms": v.allowed_future_ms, "topic": v.topic,
            "event_time_field": v.event_time_field,
        })
    return out


def definition_hash(hashes: dict[str, str], features: Iterable[str]) -> str:
    """One hash over the ordered feature list (matrix column order matters) and their hashes."""
    return _digest([[ref, hashes[ref]] for ref in features])


@dataclass(frozen=True)
class ModelMeta:
    """Everything meta.json holds about one immutable version."""

    name: str
    version: int
    kind: str
    features: tuple[str, ...]
    definition_hash: str
    feature_hashes: dict[str, str]
    threshold: float | None = None
    training_set_id: str | None = None
    data_range: dict[str, Any] = field(default_factory=dict)
    code_revision: str = "unknown"
    metrics: dict[str, Any] = field(default_factory=dict)
    histograms: dict[str, Any] = field(default_factory=dict)
    """Per feature ref and ``"score"``: see ``scoring.models.histogram.reference_histogram``."""
    params: dict[str, Any] = field(default_factory=dict)
    """Executor details (file format, source kind of an ONNX export, training parameters)."""
    created_ms: int = 0

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> str:
        d = asdict(self)
        d["features"] = list(self.features)
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMeta":
        d = json.loads(text)
        d["features"] = tuple(d["features"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Aliases:
    aliases: dict[str, int]
    canary_percent: float = 0.0
    """Share of traffic (0-100) the ``challenger`` scores in production instead of the champion."""
    history: tuple[dict, ...] = ()

    def get(self, alias: str) -> int | None:
        return self.aliases.get(alias)


class LoadedModel:
    """A version's meta plus its executor; ``predict`` builds one executor per array module."""

    def __init__(self, meta: ModelMeta, directory: Path) -> None:
        self.meta = meta
        self.directory = directory
        self._executors: dict[str, Any] = {}

    def executor(self, xp):
        from scoring.models.loader import load_executor
        ex = self._executors.get(xp.__name__)
        if ex is None:
            ex = self._executors[xp.__name__] = load_executor(self.meta, self.directory, xp)
        return ex

    def predict(self, X, xp):
        """1-D scores (probability of the positive class) on ``xp``; NaN in X = no feature data."""
        if X.ndim != 2 or X.shape[1] != len(self.meta.features):
            raise RegistryError(f"model {self.meta.spec} expects a matrix of {len(self.meta.features)} "
                                f"feature columns {list(self.meta.features)}; got shape {tuple(X.shape)}")
        return self.executor(xp).predict(X, xp)

    def __repr__(self) -> str:
        return f"LoadedModel({self.meta.spec}, kind={self.meta.kind})"


class Registry:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def for_repo(cls, repo) -> "Registry":
        """``<repo>/<models_dir>`` of a RepoConfig or a repository path."""
        if isinstance(repo, (str, Path)):
            from headwater.config import load_repo
            repo = load_repo(repo)
        return cls(repo.resolve(repo.models_dir))

    # ---- reading -----------------------------------------------------------------------------
    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[int]:
        d = self._model_dir(name)
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())

    def meta(self, name: str, version: int) -> ModelMeta:
        path = self._model_dir(name) / str(version) / META_FILE
        if not path.exists():
            have = ", ".join(map(str, self.versions(name))) or "none"
            raise RegistryError(f"model {name!r} has no version {version} (versions: {have}): "
                                f"use `headwater models show {name}` to list them")
        return ModelMeta.from_json(path.read_text())

    def aliases(self, name: str) -> Aliases:
        path = self._model_dir(name) / ALIASES_FILE
        if not path.exists():
            return Aliases({})
        d = json.loads(path.read_text())
        return Aliases({k: int(v) for k, v in d.get("aliases", {}).items()},
                       float(d.get("canary_percent", 0.0)), tuple(d.get("history", ())))

    def show(self, name: str) -> dict:
        al = self.aliases(name)
        return {"name": name, "aliases": al.aliases, "canary_percent": al.canary_percent,
                "versions": [self.meta(name, v) for v in self.versions(name)]}

    def resolve(self, spec: str, aliases: Aliases | None = None) -> tuple[str, int]:
        """``name@alias``, ``name@<version>`` or ``name`` (= champion) -> (name, version).

        ``aliases``: a snapshot of ``aliases(name)``, so that one caller resolving several specs
        sees one state of ``aliases.json``, never a move half-way through (None: read it now)."""
        name, _, sel = spec.partition("@")
        sel = sel or "champion"
        self._model_dir(name)
        if sel.isdigit():
            version = int(sel)
            self.meta(name, version)  # raises with the list of versions
            return name, version
        al = self.aliases(name) if aliases is None else aliases
        version = al.get(sel)
        if version is None:
            have = ", ".join(f"{k}={v}" for k, v in al.aliases.items()) or "none"
            raise RegistryError(f"model {name!r} has no alias {sel!r} (aliases: {have}): "
                                f"set it with `headwater models alias {name} {sel} <version>`")
        return name, version

    def load(self, spec: str, aliases: Aliases | None = None) -> LoadedModel:
        name, version = self.resolve(spec, aliases)
        return LoadedModel(self.meta(name, version), self._model_dir(name) / str(version))

    # ---- writing -----------------------------------------------------------------------------
    def register(self, name: str, kind: str, features: Iterable[str], write_files: Callable[[Path], Any],
                 *, feature_hashes: dict[str, str], **meta_fields) -> ModelMeta:
        """Stage the files written by ``write_files(dir)`` plus meta.json, then rename into the next
        version number. The first version of a model becomes its champion."""
        if not _NAME.match(name):
            raise RegistryError(f"model name {name!r} is invalid: use letters, digits, '_', '-', '.' "
                                f"(starting with a letter)")
        if kind not in KINDS:
            raise RegistryError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")
        features = tuple(features)
        missing = [f for f in features if f not in feature_hashes]
        if missing:
            raise RegistryError(f"no definition hash for features {missing}: compute them with feature_hashes(plan, refs)")
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
        try:
            write_files(staging)
            with self._lock(name):
                version = max(self.versions(name), default=0) + 1
                meta = ModelMeta(name=name, version=version, kind=kind, features=features,
                                 definition_hash=definition_hash(feature_hashes, features),
                                 feature_hashes={f: feature_hashes[f] for f in features},
                                 created_ms=int(time.time() * 1000), **meta_fields)
                (staging / META_FILE).write_text(meta.to_json())
                for p in staging.rglob("*"):
                    if p.is_file():
                        p.chmod(0o444)
                os.rename(staging, model_dir / str(version))
                if "champion" not in self.aliases(name).aliases:
                    self._write_aliases(name, lambda a: a["aliases"].__setitem__("champion", version),
                                        {"alias": "champion", "to": version})
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return meta

    @staticmethod
    def check_alias(alias: str) -> None:
        if not re.match(r"^[a-z][a-z0-9_-]*$", alias) or alias.isdigit():
            raise RegistryError(f"alias {alias!r} is invalid: use lowercase letters, digits, '_' or '-'")

    def set_alias(self, name: str, alias: str, version: int | None) -> Aliases:
        """Point ``alias`` at ``version`` (None removes it); every move is kept in ``history``.

        Removing ``challenger`` while the canary takes traffic is refused (checked under the lock,
        so it cannot race ``set_canary``): scorers would have no model for the canary share."""
        self.check_alias(alias)
        if version is not None:
            self.meta(name, int(version))
        with self._lock(name):
            def move(a):
                if version is None:
                    if alias == "challenger" and a["canary_percent"] > 0:
                        raise RegistryError(f"model {name!r} routes {a['canary_percent']:g}% of traffic to its "
                                            f"challenger: set the canary to 0 first: headwater models canary {name} 0")
                    a["aliases"].pop(alias, None)
                else:
                    a["aliases"][alias] = int(version)
            self._write_aliases(name, move, {"alias": alias, "to": version})
        return self.aliases(name)

    def set_canary(self, name: str, percent: float) -> Aliases:
        """Route ``percent`` of production traffic to the ``challenger`` (0 turns the canary off)."""
        if not 0.0 <= float(percent) <= 100.0:
            raise RegistryError(f"canary percentage {percent} is out of range: use 0 to 100")
        self._model_dir(name)  # an unknown model: one line, not a new directory
        with self._lock(name):  # the challenger check under the lock: see set_alias
            def change(a):
                if percent and "challenger" not in a["aliases"]:
                    raise RegistryError(f"model {name!r} has no challenger to canary: "
                                        f"`headwater models alias {name} challenger <version>` first")
                a["canary_percent"] = float(percent)
            self._write_aliases(name, change, {"canary_percent": float(percent)})
        return self.aliases(name)

    # ---- internals ---------------------------------------------------------------------------
    def _model_dir(self, name: str) -> Path:
        d = self.root / name
        if not d.is_dir():
            have = ", ".join(self.list()) or "none"
            raise RegistryError(f"no model {name!r} in registry {self.root} (models: {have}): "
                                f"train one with `headwater train --model {name} ...`")
        return d

    @contextmanager
    def _lock(self, name: str):
        path = self.root / name / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write_aliases(self, name: str, change: Callable[[dict], Any], event: dict) -> None:
        path = self.root / name / ALIASES_FILE
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault("aliases", {})
        data.setdefault("canary_percent", 0.0)
        data.setdefault("history", [])
        change(data)
        data["history"].append({**event, "at_ms": int(time.time() * 1000)})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)


def check_definitions(meta: ModelMeta, plan) -> None:
    """Raise SkewError naming every feature whose definition in ``plan`` differs from training."""
    from streamjobs.errors import DefinitionError
    diffs = []
    for ref in meta.features:
        try:
            now = feature_hashes(plan, [ref])[ref]
        except (DefinitionError, RegistryError):
            diffs.append(f"{ref} (missing)")
            continue
        if now != meta.feature_hashes.get(ref):
            diffs.append(f"{ref} (changed)")
    if diffs:
        raise SkewError(f"model {meta.spec} was trained on feature definitions that differ from the running "
                        f"plan: {', '.join(diffs)}: retrain the model on the current definitions "
                        f"(headwater train) or run the definitions it was trained with")
