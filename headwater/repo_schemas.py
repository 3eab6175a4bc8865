"""A feature repository's topic schemas: one codec per topic role, subjects by topic name.

Subjects follow Confluent's TopicNameStrategy (``<topic>-value``) so a real Schema Registry
sees the same subjects the file store does.
"""

from __future__ import annotations

from headwater.config import RepoConfig, load_repo
from schemas import AvroCodec, load_schema, open_store
from schemas.compat import check_backward

__all__ = ["subject", "codec_for", "check_or_register"]


def subject(topic: str) -> str:
    return f"{topic}-value"


def _store(repo: RepoConfig):
    return open_store(repo.resolve(repo.schema_store), repo.schema_registry_url)


def _schema(repo: RepoConfig, role: str) -> dict:
    spec = repo.topics.all()[role]
    if spec.schema_file is None:
        from headwater.errors import ConfigError
        raise ConfigError(f"topic role {role!r} has no `schema:` in {repo.path}/headwater.yaml: add one")
    name = spec.schema_file
    return load_schema(repo.resolve(name) if name.endswith(".avsc") else name)


def codec_for(repo: RepoConfig, role: str) -> AvroCodec:
    """The codec for a topic role; registers the schema (idempotent) so its id is stable."""
    spec = repo.topics.all()[role]
    return AvroCodec.for_subject(_store(repo), subject(spec.name), _schema(repo, role))


def check_or_register(repo_path, register: bool = False) -> dict[str, list[str]]:
    """Backward-compatibility problems per subject; registers every compatible schema if asked,
    and then the tile schemas derived from the feature definitions."""
    repo = load_repo(repo_path)
    store = _store(repo)
    problems: dict[str, list[str]] = {}
    for role, spec in repo.topics.all().items():
        if spec.schema_file is None:
            continue
        subj = subject(spec.name)
        new = _schema(repo, role)
        latest = store.latest(subj)
        issues = check_backward(new, latest[1]) if latest else []
        problems[subj] = issues
        state = "new" if latest is None else ("compatible" if not issues else "INCOMPATIBLE")
        if register and not issues:
            sid = store.register(subj, new)
            state += f", registered id {sid}"
        print(f"{subj:36} {state}")
    if register:
        _register_tiles(repo)
    return problems


def _register_tiles(repo: RepoConfig) -> None:
    """The tiles topic's key schema and one value schema per view, derived from the plan (not from
    a file), so the committed store holds every id the features job will write."""
    from streamjobs.job import bindings
    from streamjobs.repo import load_definitions
    _, key_id, values = bindings(repo, load_definitions(repo))
    tiles = repo.topics.tiles.name
    print(f"{tiles + ' key':36} derived, registered id {key_id}")
    for view, (_, sid) in sorted(values.items()):
        print(f"{tiles + ' ' + view:36} derived from the plan, registered id {sid}")
