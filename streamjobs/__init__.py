"""Feature definitions, window semantics, tile IR maths and the plan engines compile from.

The maths lives in the submodules ``streamjobs.windows`` and ``streamjobs.ir``; import them as
modules (``from streamjobs import ir, windows``). This package re-exports only the definition API.
"""

from streamjobs.dsl import Aggregation, Entity, Feature, FeatureView, LatestValue, Source
from streamjobs.errors import DefinitionError, IRError, StreamJobsError, UnknownOpError
from streamjobs.plan import FeaturePlan, FeatureRef, ViewPlan, WindowGroup, build_plan

__all__ = [
    "Entity",
    "Source",
    "Aggregation",
    "LatestValue",
    "FeatureView",
    "Feature",
    "FeaturePlan",
    "ViewPlan",
    "WindowGroup",
    "FeatureRef",
    "build_plan",
    "StreamJobsError",
    "DefinitionError",
    "UnknownOpError",
    "IRError",
]
