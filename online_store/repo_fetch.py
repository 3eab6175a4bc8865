"""``fetch`` for a feature repository: entity keys by their event field (``card_id=c42``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from headwater.config import RepoConfig, load_connection, load_repo
from online_store.errors import FetchArgumentError
from online_store.reader import FetchResult, fetch

__all__ = ["fetch_repo", "redis_client"]


#: URL schemes that mean Redis Cluster (name any one node; the client finds the others).
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def redis_client(url: str | None = None):
    """A client for ``url`` (default: the stack's): ``redis://`` one server, ``redis+cluster://``
    a Redis Cluster. The writer groups each script call's keys by slot there; fetch pipelines."""
    import redis
    url = url or load_connection().redis_url
    if url.startswith(CLUSTER_SCHEMES):
        from redis.cluster import RedisCluster
        return RedisCluster.from_url(url.replace("+cluster", "", 1), decode_responses=False)
    return redis.Redis.from_url(url, decode_responses=False)


def fetch_repo(repo: RepoConfig | str, keys: Mapping[str, Sequence[str]] | Sequence[tuple[str, str]],
               refs: Sequence[str] | None = None, at: int | None = None, *, redis: Any = None,
               plan=None) -> FetchResult:
    """``keys``: key field -> row-aligned ids (``{"card_id": ["c1", "c2"]}``) or (field, id) pairs.

    Without ``refs``, every feature of every view keyed by one of the given fields. With ``at``,
    the result's ``exact_since_ms`` and ``trimmed_views`` say whether ``at`` is older than what
    the store keeps exact (values would lack trimmed tiles: too small, not an error; ``fetch``
    reads that in the same round trip)."""
    from streamjobs.repo import load_definitions
    repo = load_repo(repo) if not isinstance(repo, RepoConfig) else repo
    plan = plan or load_definitions(repo).plan
    if not isinstance(keys, Mapping):
        grouped: dict[str, list[str]] = {}
        for field, value in keys:
            grouped.setdefault(field, []).append(value)
        keys = grouped
    by_entity = {}
    for field, ids in keys.items():
        views = [v for v in plan.views if v.entity_key == field]
        if not views:
            known = sorted({v.entity_key for v in plan.views})
            raise FetchArgumentError(f"no view is keyed by {field!r}; keys in this repository: {', '.join(known)}")
        by_entity[views[0].entity] = list(ids)
    if len({len(v) for v in by_entity.values()}) > 1:
        raise FetchArgumentError("give the same number of ids for every key field (one row each)")
    if refs is None:
        refs = [f"{v.name}:*" for v in plan.views if v.entity in by_entity]
    return fetch(redis or redis_client(), repo.project, plan, by_entity, refs, at)
