"""Checkpoints of an older accumulator format are refused with a one-line fix, never restored."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from headwater.errors import StackError
from streamjobs import job


def _chk(path):
    path.mkdir(parents=True)
    (path / "_metadata").write_bytes(b"x")


def test_checkpoints_live_under_their_state_format(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWATER_STACK_DIR", str(tmp_path))
    d = job.checkpoint_dir("fraud")
    assert d == tmp_path / "flink" / "fraud" / "checkpoints" / f"state-v{job.STATE_FORMAT}"
    assert job.older_checkpoints(d) == []
    _chk(d / "0123abcd" / "chk-7")
    assert job.latest_checkpoint(d).endswith("/chk-7") and job.older_checkpoints(d) == []


@pytest.mark.parametrize("old", ["0123abcd/chk-3", "state-v1/0123abcd/chk-3"])
def test_an_older_format_is_refused_and_fresh_ignores_it(tmp_path, monkeypatch, old):
    monkeypatch.setenv("HEADWATER_STACK_DIR", str(tmp_path))
    root = tmp_path / "flink" / "fraud" / "checkpoints"
    _chk(root / old)
    repo = SimpleNamespace(project="fraud")
    assert job.older_checkpoints(job.checkpoint_dir("fraud")) == [root / old]
    with pytest.raises(StackError, match="older Headwater.*--fresh"):
        job.run_streaming(None, repo, None)
    sentinel = RuntimeError("compiled")  # --fresh goes on to compile the job (stopped here: no stack)
    monkeypatch.setattr(job, "compile_features", lambda *a, **k: (_ for _ in ()).throw(sentinel))
    with pytest.raises(RuntimeError, match="compiled"):
        job.run_streaming(None, repo, None, fresh=True)
