"""`headwater schemas register|check` on a copy of the example repository."""

from __future__ import annotations

import json
import subprocess
import sys


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headwater.cli", *args], capture_output=True, text=True)


def test_register_then_check_compatible_and_incompatible(temp_repo):
    r = _cli("schemas", "register", "--repo", str(temp_repo))
    assert r.returncode == 0, r.stderr
    store = json.loads((temp_repo / "schema_registry.json").read_text())
    ids_first = dict(store["subjects"])
    assert any(s.endswith("transactions." + temp_repo.name) or "transactions" in s for s in ids_first)
    # the derived tile schemas too (key, one value schema per view), and every output topic's
    from headwater.config import load_repo
    from online_store.tiles import key_subject, tile_subject
    from streamjobs.repo import load_definitions
    repo = load_repo(temp_repo)
    tiles = repo.topics.tiles.name
    views = [v.name for v in load_definitions(repo).plan.views]
    assert {key_subject(tiles), *(tile_subject(tiles, v) for v in views)} <= set(ids_first), sorted(ids_first)
    assert all(f"{spec.name}-value" in ids_first for role, spec in repo.topics.all().items() if spec.schema_file)

    # ids are stable: registering again changes nothing
    assert _cli("schemas", "register", "--repo", str(temp_repo)).returncode == 0
    assert json.loads((temp_repo / "schema_registry.json").read_text())["subjects"] == ids_first

    # compatible change: a new field with a default
    path = temp_repo / "schemas" / "transaction.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "channel", "type": "string", "default": "web"})
    path.write_text(json.dumps(schema))
    r = _cli("schemas", "check", "--repo", str(temp_repo))
    assert r.returncode == 0 and "compatible" in r.stdout

    # incompatible: a new field without a default
    schema["fields"].append({"name": "mcc", "type": "int"})
    path.write_text(json.dumps(schema))
    r = _cli("schemas", "check", "--repo", str(temp_repo))
    assert r.returncode == 1
    assert "INCOMPATIBLE" in r.stdout and "mcc" in r.stdout
