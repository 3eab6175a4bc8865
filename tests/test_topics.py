"""Topics from the repository config, created on the real broker with the right configs."""

from __future__ import annotations

import pytest

from headwater.config import load_repo
from headwater.topics import create_topics, describe_topics

pytestmark = pytest.mark.integration


def test_topics_created_with_configs_and_idempotent(stack, temp_repo):
    repo = load_repo(temp_repo)
    first = create_topics(stack, repo.topics)
    assert {r.role for r in first} == {"events", "labels", "tiles", "predictions", "shadow", "feature_log", "dlq"}
    assert all(r.action == "created" for r in first)
    by_role = {r.role: r for r in first}
    assert by_role["events"].partitions == 3 and by_role["dlq"].partitions == 1

    cfg = describe_topics(stack, [repo.topics.events.name, repo.topics.tiles.name, repo.topics.predictions.name])
    assert cfg[repo.topics.events.name]["message.timestamp.type"] == "LogAppendTime"
    assert cfg[repo.topics.tiles.name]["cleanup.policy"] == "compact"
    assert cfg[repo.topics.predictions.name]["cleanup.policy"] == "delete"
    assert cfg[repo.topics.predictions.name]["retention.ms"] == str(repo.topics.retention_ms)

    again = create_topics(stack, repo.topics)
    assert all(r.action == "exists" for r in again)
