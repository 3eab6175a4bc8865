"""What ``headwater train`` and ``headwater models ...`` do (the parsing stays in headwater/cli.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from scoring.models.errors import RegistryError

__all__ = ["train_command", "models_command"]


def train_command(repo, training_set, model, kind, *, label="is_fraud", features=None, timestamp_column="ts",
                  holdout=0.2, k=100, seed=0, library="xgboost", trees=200, depth=6, onnx=False,
                  models_dir=None, alias=None) -> int:
    from scoring.train import TrainConfig, train
    refs = tuple(f.strip() for f in features.split(",") if f.strip()) if features else ()
    if refs and any(r.endswith(":*") for r in refs):
        from headwater.config import load_repo
        from streamjobs.repo import load_definitions
        plan = load_definitions(load_repo(repo)).plan
        refs = tuple(fr.ref for fr in plan.features_by_ref(refs))
    cfg = TrainConfig(model=model, kind=kind, label=label, features=refs, timestamp_column=timestamp_column,
                      holdout=holdout, k=k, seed=seed, library=library, trees=trees, depth=depth, onnx=onnx)
    reg = _registry(repo, models_dir)
    if alias is not None:
        reg.check_alias(alias)  # before the fit, not after it
    metas = train(repo, training_set, cfg, registry=reg)
    if alias is not None:
        al = reg.set_alias(model, alias, int(metas[0].version))
        print(f"{model}: " + " ".join(f"{a}={v}" for a, v in sorted(al.aliases.items())))
    return 0


def _registry(repo, models_dir):
    from scoring.registry import Registry
    return Registry(models_dir) if models_dir else Registry.for_repo(repo)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if ms else "-"


def models_command(repo, action: str, args: list[str], *, models_dir=None, as_json=False) -> int:
    reg = _registry(repo, models_dir)
    need = {"list": 0, "show": 1, "alias": 3, "canary": 2, "check": 1}[action]
    if len(args) < need:
        usage = {"show": "NAME", "alias": "NAME ALIAS VERSION|none", "canary": "NAME PERCENT", "check": "NAME[@ALIAS|@VERSION]"}
        raise RegistryError(f"`headwater models {action}` needs {usage[action]}")
    if action == "list":
        for name in reg.list():
            al = reg.aliases(name)
            tags = " ".join(f"{a}={v}" for a, v in sorted(al.aliases.items()))
            canary = f" canary={al.canary_percent:g}%" if al.canary_percent else ""
            print(f"{name:20} versions={len(reg.versions(name)):<3} {tags}{canary}")
        return 0
    name = args[0]
    if action == "show":
        info = reg.show(name)
        if as_json:
            print(json.dumps({**info, "versions": [json.loads(m.to_json()) for m in info["versions"]]}, indent=2))
            return 0
        by_version: dict[int, list[str]] = {}
        for a, v in info["aliases"].items():
            by_version.setdefault(v, []).append(a)
        print(f"model {name}  canary={info['canary_percent']:g}%  registry={reg.root}")
        for m in info["versions"]:
            mt = m.metrics
            print(f"  v{m.version:<3} {m.kind:6} {_when(m.created_ms)}  auc={mt.get('auc', float('nan')):.4f} "
                  f"p@{mt.get('k', '-')}={mt.get('precision_at_k', float('nan')):.4f}  features={len(m.features)} "
                  f"defs={m.definition_hash} data={m.training_set_id} code={m.code_revision[:10]} "
                  f"{' '.join(sorted(by_version.get(m.version, [])))}")
        return 0
    if action == "alias":
        version = None if args[2].lower() in ("none", "-") else _int(args[2], "VERSION")
        al = reg.set_alias(name, args[1], version)
        print(f"{name}: " + " ".join(f"{a}={v}" for a, v in sorted(al.aliases.items())))
        return 0
    if action == "canary":
        try:
            pct = float(args[1])
        except ValueError:
            raise RegistryError(f"canary percentage {args[1]!r} is not a number: use 0 to 100") from None
        al = reg.set_canary(name, pct)
        print(f"{name}: challenger={al.get('challenger')} gets {al.canary_percent:g}% of production traffic")
        return 0
    # check: the skew guard against the repository's current definitions
    from headwater.config import load_repo
    from scoring.registry import check_definitions
    from streamjobs.repo import load_definitions
    model = reg.load(name)
    check_definitions(model.meta, load_definitions(load_repo(repo)).plan)
    print(f"{model.meta.spec}: feature definitions match the running plan ({model.meta.definition_hash})")
    return 0


def _int(text: str, what: str) -> int:
    if not text.isdigit():
        raise RegistryError(f"{what} {text!r} is not a version number: use an integer (see `headwater models show`)")
    return int(text)
