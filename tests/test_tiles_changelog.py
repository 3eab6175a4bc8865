"""The streaming features job sends only inserts and UPDATE_AFTERs to the upsert tiles sink.

An UPDATE_BEFORE reaching upsert-kafka becomes a tombstone before every tile update (it used to
double the tiles topic); the planner drops UPDATE_BEFORE only when each query's upsert key is
exactly the sink's primary key (compiler.tile_sink_ddl). Checked on the optimized plan of the example
repository's whole job, every query included.
"""

from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.flink]


def test_no_update_before_reaches_the_tiles_sink(stack, temp_repo):
    from pyflink.table import ExplainDetail

    from headwater.config import load_repo
    from streamjobs.job import compile_features, table_env
    from streamjobs.repo import load_definitions

    repo = load_repo(temp_repo)
    defs = load_definitions(repo)
    job = compile_features(stack, repo, defs)
    env = table_env(stack, extra=dict(job.config))
    for stmt in job.ddl:
        env.execute_sql(stmt)
    stmts = env.create_statement_set()
    for ins in job.inserts:
        stmts.add_insert_sql(ins)
    text = stmts.explain(ExplainDetail.CHANGELOG_MODE)
    plan = text[text.index("== Optimized Physical Plan =="):text.index("== Optimized Execution Plan")]
    modes = re.findall(r"changelogMode=\[([A-Z,]+)\]", plan)
    sinks = plan.count("Sink(table=")
    assert "I,UA" in modes, "the aggregates should emit updates (is this still a streaming plan?)"
    assert not [m for m in modes if "UB" in m.split(",") or "D" in m.split(",")], \
        "UPDATE_BEFORE/DELETE reach the upsert tiles sink: upsert-kafka turns them into tombstones"
    assert sinks == len(job.inserts), "one sink per query expected"
