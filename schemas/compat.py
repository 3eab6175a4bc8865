"""Backward compatibility: can a reader using the new schema read data written with the old?

Implements the Avro specification's schema resolution rules statically, so an incompatible
change is caught when the schema is checked in, not when a consumer first meets old data.
Named types match on their unqualified name or the reader's aliases (as fastavro and Java
``SchemaCompatibility`` do); logical types are ignored, as in resolution.
"""

from __future__ import annotations

from typing import Any

from schemas.store import SchemaStore, validate_schema

__all__ = ["check_backward", "check_store"]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
# writer type -> reader types it may be read as (Avro spec, "Schema Resolution")
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def check_backward(new: Any, old: Any) -> list[str]:
    """Problems a reader with ``new`` has reading data written with ``old``; [] if none.

    Each problem names the field path (``Record.field.sub``), the change, and why it breaks.
    """
    validate_schema(new, "new schema")
    validate_schema(old, "old schema")
    checker = _Checker(_Schema(old), _Schema(new))
    checker.check(checker.writer.root, checker.reader.root, _root_path(new))
    return checker.problems


def check_store(store: SchemaStore, schemas: dict[str, Any]) -> dict[str, list[str]]:
    """Per subject, the problems of its candidate schema against the latest stored version.

    Every subject appears in the result; a subject not yet in the store has no problems.
    """
    result: dict[str, list[str]] = {}
    for subject, candidate in schemas.items():
        latest = store.latest(subject)
        if latest is None:
            validate_schema(candidate, f"schema for subject {subject!r}")
            result[subject] = []
        else:
            old_id, old = latest
            result[subject] = [
                f"{p} (vs. id {old_id})" for p in check_backward(candidate, old)
            ]
    return result


def _root_path(schema: Any) -> str:
    return _short(schema["name"]) if isinstance(schema, dict) and "name" in schema else "<root>"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _qualify(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


class _Schema:
    """A schema with its named types indexed, so string references can be followed."""

    def __init__(self, schema: Any) -> None:
        self.names: dict[str, tuple[dict, str | None]] = {}
        self.root = self._collect(schema, None)

    def _collect(self, node: Any, ns: str | None) -> tuple[Any, str | None]:
        if isinstance(node, list):
            for branch in node:
                self._collect(branch, ns)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED:
                full = _qualify(node["name"], node.get("namespace", ns))
                inner_ns = full.rsplit(".", 1)[0] if "." in full else None
                self.names[full] = (node, inner_ns)
                for field in node.get("fields", []):
                    self._collect(field["type"], inner_ns)
                return node, ns
            if kind == "array":
                self._collect(node["items"], ns)
            elif kind == "map":
                self._collect(node["values"], ns)
            elif isinstance(kind, (dict, list)):
                self._collect(kind, ns)
        return node, ns

    def resolve(self, node: Any, ns: str | None) -> tuple[Any, str | None]:
        """Follow name references and unwrap ``{"type": "long", ...}`` to a plain node."""
        while True:
            if isinstance(node, str) and node not in _PRIMITIVES:
                for cand in (_qualify(node, ns), node):
                    if cand in self.names:
                        node, ns = self.names[cand][0], _enclosing(self.names[cand][0], ns)
                        break
                else:  # unreachable for schemas fastavro accepted
                    return node, ns
            elif isinstance(node, dict) and not isinstance(node.get("type"), str | None):
                node = node["type"]  # {"type": {...}} or {"type": [...]}
            elif isinstance(node, dict) and node.get("type") in _PRIMITIVES:
                return node["type"], ns
            elif isinstance(node, dict) and node.get("type") not in _NAMED | {"array", "map"}:
                node = node["type"]  # {"type": "SomeNamedRef"}
            else:
                return node, ns


def _enclosing(node: dict, fallback: str | None) -> str | None:
    """The namespace a named type's own fields and references resolve against."""
    full = _qualify(node["name"], node.get("namespace", fallback))
    return full.rsplit(".", 1)[0] if "." in full else None


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, str):
        return node
    return "record" if node["type"] == "error" else node["type"]


class _Checker:
    def __init__(self, writer: _Schema, reader: _Schema) -> None:
        self.writer, self.reader = writer, reader
        self.problems: list[str] = []
        self._seen: set[tuple[int, int]] = set()  # recursive types: check each pair once

    def describe(self, node: Any, ns: str | None, schema: _Schema) -> str:
        node, ns = schema.resolve(node, ns)
        kind = _kind(node)
        if kind == "union":
            return "union{" + ", ".join(self.describe(b, ns, schema) for b in node) + "}"
        if kind == "array":
            return f"array<{self.describe(node['items'], ns, schema)}>"
        if kind == "map":
            return f"map<{self.describe(node['values'], ns, schema)}>"
        if kind in _NAMED:
            return f"{kind} {_qualify(node['name'], node.get('namespace', ns))}"
        return kind

    def check(self, w: tuple[Any, str | None], r: tuple[Any, str | None], path: str) -> None:
        (wn, wns), (rn, rns) = self.writer.resolve(*w), self.reader.resolve(*r)
        wk, rk = _kind(wn), _kind(rn)
        if wk == "union":
            for branch in wn:
                self.check((branch, wns), (rn, rns), path)
            return
        if rk == "union":
            self._check_into_union((wn, wns), (rn, rns), path)
            return
        if wk != rk:
            if rk in _PROMOTIONS.get(wk, ()):
                return
            self.problems.append(
                f"{path}: type changed from {self.describe(wn, wns, self.writer)} to "
                f"{self.describe(rn, rns, self.reader)}, which Avro cannot promote"
            )
            return
        if wk == "array":
            self.check((wn["items"], wns), (rn["items"], rns), f"{path}[]")
        elif wk == "map":
            self.check((wn["values"], wns), (rn["values"], rns), f"{path}{{}}")
        elif wk in _NAMED:
            self._check_named((wn, wns), (rn, rns), wk, path)

    def _names_match(self, w: tuple[dict, str | None], r: tuple[dict, str | None]) -> bool:
        (wn, wns), (rn, rns) = w, r
        w_full = _qualify(wn["name"], wn.get("namespace", wns))
        r_ns = _enclosing(rn, rns)
        aliases = {_qualify(a, r_ns) for a in rn.get("aliases", [])}
        return _short(w_full) == _short(rn["name"]) or w_full in aliases or any(
            _short(a) == _short(w_full) for a in aliases
        )

    def _check_named(self, w: tuple[Any, Any], r: tuple[Any, Any], kind: str, path: str) -> None:
        (wn, wns), (rn, rns) = w, r
        if not self._names_match(w, r):
            self.problems.append(
                f"{path}: {kind} name changed from {wn['name']} to {rn['name']}; "
                f"add \"aliases\": [\"{wn['name']}\"] to the new {kind}"
            )
            return
        if kind == "fixed":
            if wn["size"] != rn["size"]:
                self.problems.append(
                    f"{path}: fixed size changed from {wn['size']} to {rn['size']}"
                )
        elif kind == "enum":
            missing = [s for s in wn["symbols"] if s not in rn["symbols"]]
            if missing and "default" not in rn:
                self.problems.append(
                    f"{path}: enum symbols {missing} were removed and the new enum has no "
                    "default; old data holding them cannot be read"
                )
        else:
            key = (id(wn), id(rn))
            if key not in self._seen:
                self._seen.add(key)
                self._check_fields(w, r, path)

    def _check_fields(self, w: tuple[dict, Any], r: tuple[dict, Any], path: str) -> None:
        (wn, _), (rn, _) = w, r
        w_ns, r_ns = _enclosing(wn, w[1]), _enclosing(rn, r[1])
        w_fields = {f["name"]: f for f in wn["fields"]}
        for field in rn["fields"]:
            fpath = f"{path}.{field['name']}"
            names = [field["name"], *field.get("aliases", [])]
            old = next((w_fields[n] for n in names if n in w_fields), None)
            if old is not None:
                self.check((old["type"], w_ns), (field["type"], r_ns), fpath)
            elif "default" not in field:
                self.problems.append(
                    f"{fpath}: field added without a default; data written with the old "
                    "schema has no value for it (add a default, or an alias if it was renamed)"
                )

    def _check_into_union(self, w: tuple[Any, Any], r: tuple[list, Any], path: str) -> None:
        """A non-union writer type resolves to the first reader branch that matches it."""
        (wn, wns), (rn, rns) = w, r
        wk = _kind(wn)
        branches = [self.reader.resolve(b, rns) for b in rn]
        for bn, bns in branches:  # exact type (and name) first, as the spec requires
            if _kind(bn) == wk and (wk not in _NAMED or self._names_match(w, (bn, bns))):
                self.check(w, (bn, bns), path)
                return
        if any(_kind(bn) in _PROMOTIONS.get(wk, ()) for bn, _ in branches):
            return
        self.problems.append(
            f"{path}: old values of type {self.describe(wn, wns, self.writer)} have no "
            f"matching branch in the new {self.describe(rn, rns, self.reader)}"
        )
