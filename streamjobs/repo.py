"""Load a feature repository's definitions (``features.py``) and resolve them against its config.

A Source's ``topic`` may name a topic *role* of ``headwater.yaml`` (``events``) instead of a
literal topic; it resolves to that role's topic, so one definition serves every environment.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from dataclasses import dataclass

from headwater.config import RepoConfig
from streamjobs.dsl import FeatureView
from streamjobs.errors import DefinitionError
from streamjobs.plan import FeaturePlan, build_plan

__all__ = ["Definitions", "load_definitions"]


@dataclass(frozen=True)
class Definitions:
    views: tuple[FeatureView, ...]
    plan: FeaturePlan


def load_definitions(repo: RepoConfig) -> Definitions:
    path = repo.resolve(repo.features_module)
    if not path.exists():
        raise DefinitionError(f"no feature definitions at {path}: create {repo.features_module} "
                              f"declaring FeatureView objects (see examples/fraud/features.py)")
    name = f"_headwater_features_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except DefinitionError:
        raise
    except Exception as exc:
        raise DefinitionError(f"{path} failed to import: {type(exc).__name__}: {exc}") from exc
    views = getattr(module, "VIEWS", None)
    if views is None:
        views = [v for v in vars(module).values() if isinstance(v, FeatureView)]
    if not views:
        raise DefinitionError(f"{path} declares no FeatureView: define some (or a VIEWS list)")
    roles = {role: spec.name for role, spec in repo.topics.all().items()}
    resolved = []
    for v in views:
        topic = roles.get(v.source.topic, v.source.topic)
        if topic != v.source.topic:
            v = dataclasses.replace(v, source=dataclasses.replace(v.source, topic=topic))
        resolved.append(v)
    return Definitions(tuple(resolved), build_plan(resolved))
