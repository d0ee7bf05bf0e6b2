"""Load vector files and run them: one runner per file ``kind``, results per vector and clause.

Extension point: a new kind registers a runner with ``register_runner(kind, fn, impl=...)``;
``fn(vector) -> (ok, diff)``, and it may raise ``SkipVector`` (outcome ``skip``) or
``NotSupported`` (``not-supported``). Runners are kept per *implementation*: ``RUNNERS`` is the
reference's (``IMPLEMENTATIONS["reference"]``); ``IMPLEMENTATIONS["kernels"]`` drives the fast
kernels of ``kmr_ref.kernels``. Kinds without a runner report ``not-supported``. The method kinds
(``prune-magnitude``, ``quant-uniform``) are registered lazily, so that running ``alg1`` files
imports no torch. ``ADAPTER_RUNNERS[kind]`` turns a third-party adapter (``adapters.py``) into a
runner. Every failure carries a copy-paste reproduction
(``python -m kmr_ref.conformance.vectors FILE --id ID --show [--impl IMPL]``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kmr_ref.conformance.adapters import NotSupported, SkipVector
from kmr_ref.conformance.alg1_table import Alg1Adapter, reference_alg1

Json = Any
Outcome = Literal["pass", "fail", "skip", "xfail", "not-supported"]
VectorRunner = Callable[[Mapping[str, Json]], tuple[bool, str]]


@dataclass(frozen=True)
class VectorFile:
    """A loaded vector file: ``kind`` selects the runner."""

    path: Path
    kind: str
    spec_version: str
    vectors: list[dict[str, Json]]

    def __iter__(self) -> Iterator[dict[str, Json]]:
        return iter(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    def by_id(self, vid: str) -> dict[str, Json]:
        for v in self.vectors:
            if v["id"] == vid:
                return v
        raise KeyError(vid)


@dataclass(frozen=True)
class VectorResult:
    id: str
    kind: str
    clauses: tuple[str, ...]
    outcome: Outcome
    diff: str
    reproduction: str


def load_vectors(path: str | Path) -> VectorFile:
    """Read a vector file (``{"kind", "spec_version", "vectors": [...]}``)."""
    p = Path(path)
    doc = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("vectors"), list) or "kind" not in doc:
        raise ValueError(f"{p}: not a vector file (needs 'kind' and a 'vectors' list)")
    return VectorFile(p, str(doc["kind"]), str(doc.get("spec_version", "")), doc["vectors"])


# --- comparison ----------------------------------------------------------------------------------

def compare(expected: Json, got: Json, tolerance: Json = None, path: str = "expected") -> list[str]:
    """Differences between JSON values. Exact unless ``tolerance`` = {"abs", "rel"} is given, which
    then bounds float fields: |got - expected| <= abs + rel * |expected|. Booleans never equal numbers."""
    if isinstance(expected, dict) and isinstance(got, dict):
        out: list[str] = []
        for k in sorted(set(expected) | set(got)):
            if k not in got:
                out.append(f"{path}.{k}: missing (expected {expected[k]!r})")
            elif k not in expected:
                out.append(f"{path}.{k}: unexpected {got[k]!r}")
            else:
                out += compare(expected[k], got[k], tolerance, f"{path}.{k}")
        return out
    if isinstance(expected, list) and isinstance(got, list):
        out = [f"{path}: length {len(got)} != expected {len(expected)}"] if len(expected) != len(got) else []
        for i, (e, g) in enumerate(zip(expected, got, strict=False)):
            out += compare(e, g, tolerance, f"{path}[{i}]")
        return out
    num = (int, float)
    if (isinstance(expected, num) and isinstance(got, num) and not isinstance(expected, bool)
            and not isinstance(got, bool)):
        if expected == got:
            return []
        if tolerance and (isinstance(expected, float) or isinstance(got, float)):
            bound = float(tolerance.get("abs", 0.0)) + float(tolerance.get("rel", 0.0)) * abs(expected)
            if math.isfinite(got) and abs(got - expected) <= bound:
                return []
        return [f"{path}: got {got!r}, expected {expected!r}"]
    if type(expected) is type(got) and expected == got:
        return []
    return [f"{path}: got {got!r}, expected {expected!r}"]


# --- runners -------------------------------------------------------------------------------------

def run_alg1_vector(vec: Mapping[str, Json], adapter: Alg1Adapter = reference_alg1) -> tuple[bool, str]:
    """Run one ``alg1`` vector through ``adapter`` (default: the reference ``budgeted_kmr``)."""
    try:
        got = adapter(vec["input"])
    except Exception as e:  # an untyped crash is a failure, reported, not raised
        return False, f"adapter raised {type(e).__name__}: {e}"
    diffs = compare(vec["expected"], got, vec.get("tolerance"))
    return not diffs, "\n".join(diffs)


def lazy_runner(module: str, attr: str) -> VectorRunner:
    """A runner imported on first use (``module.attr``), so that torch loads only when needed."""

    def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
        fn: VectorRunner = getattr(importlib.import_module(module), attr)
        return fn(vec)

    return run


RUNNERS: dict[str, VectorRunner] = {
    "alg1": run_alg1_vector,
    "prune-magnitude": lazy_runner("kmr_ref.conformance.prune_runner", "reference_runner"),
    "quant-uniform": lazy_runner("kmr_ref.conformance.quant_runner", "reference_runner"),
}
IMPLEMENTATIONS: dict[str, dict[str, VectorRunner]] = {
    "reference": RUNNERS,
    "kernels": {  # Algorithm 1 has no kernel: alg1 files report not-supported
        "prune-magnitude": lazy_runner("kmr_ref.conformance.prune_runner", "kernels_runner"),
        "quant-uniform": lazy_runner("kmr_ref.conformance.quant_runner", "kernels_runner"),
    },
}


def _alg1_adapter_runner(adapter: Any) -> VectorRunner:
    def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
        return run_alg1_vector(vec, adapter)

    return run


def _lazy_factory(module: str) -> Callable[[Any], VectorRunner]:
    def factory(adapter: Any) -> VectorRunner:
        make: Callable[[Any], VectorRunner] = importlib.import_module(module).make_runner
        return make(adapter)

    return factory


ADAPTER_RUNNERS: dict[str, Callable[[Any], VectorRunner]] = {
    "alg1": _alg1_adapter_runner,
    "prune-magnitude": _lazy_factory("kmr_ref.conformance.prune_runner"),
    "quant-uniform": _lazy_factory("kmr_ref.conformance.quant_runner"),
}


def register_runner(kind: str, fn: VectorRunner, impl: str = "reference") -> None:
    """Extension point: the runner of vector files whose top-level ``kind`` is ``kind``, for ``impl``."""
    IMPLEMENTATIONS.setdefault(impl, {})[kind] = fn


def reproduction(path: str | Path, vid: str, impl: str = "reference") -> str:
    """A copy-paste command that reruns one vector and prints its diff."""
    extra = "" if impl == "reference" else f" --impl {impl}"
    return f"python -m kmr_ref.conformance.vectors {path} --id {vid} --show{extra}"


def run_vector(kind: str, vec: Mapping[str, Json], path: str | Path = "<file>", impl: str = "reference",
               runners: Mapping[str, VectorRunner] | None = None) -> VectorResult:
    """Run one vector with ``impl``'s runner for ``kind`` (or with ``runners`` when given)."""
    table = IMPLEMENTATIONS.get(impl, {}) if runners is None else runners
    runner = table.get(kind)
    clauses = tuple(vec.get("clauses", ()))
    repro = reproduction(path, vec["id"], impl)
    if runner is None:
        return VectorResult(vec["id"], kind, clauses, "not-supported", f"no {impl} runner for kind {kind!r}", repro)
    try:
        ok, diff = runner(vec)
    except NotSupported as e:
        return VectorResult(vec["id"], kind, clauses, "not-supported", str(e), repro)
    except SkipVector as e:
        return VectorResult(vec["id"], kind, clauses, "skip", str(e), repro)
    return VectorResult(vec["id"], kind, clauses, "pass" if ok else "fail", diff, repro)


def run_file(path: str | Path, ids: Sequence[str] | None = None, impl: str = "reference",
             runners: Mapping[str, VectorRunner] | None = None) -> list[VectorResult]:
    vf = load_vectors(path)
    return [run_vector(vf.kind, v, path, impl, runners) for v in vf if ids is None or v["id"] in ids]


def clause_report(results: Sequence[VectorResult]) -> dict[str, Outcome]:
    """Per clause: ``fail`` if any vector citing it fails, else ``pass`` if any passes, else the
    common outcome (e.g. ``not-supported``)."""
    by: dict[str, list[Outcome]] = {}
    for r in results:
        for c in r.clauses:
            by.setdefault(c, []).append(r.outcome)
    order: list[Outcome] = ["fail", "pass", "xfail", "skip", "not-supported"]
    return {c: next(o for o in order if o in outs) for c, outs in sorted(by.items())}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmr_ref.conformance.vectors",
                                 description="Run KMR conformance vectors against the reference.")
    ap.add_argument("files", nargs="+", help="vector files (e.g. spec/vectors/0.1.0/alg1.json)")
    ap.add_argument("--id", action="append", dest="ids", help="run only this vector id (repeatable)")
    ap.add_argument("--show", action="store_true", help="print the vector's input and expected JSON")
    ap.add_argument("--clauses", action="store_true", help="print the per-clause report")
    ap.add_argument("--impl", default="reference", choices=sorted(IMPLEMENTATIONS),
                    help="which implementation runs the vectors (default: reference)")
    a = ap.parse_args(argv)
    results: list[VectorResult] = []
    for f in a.files:
        vf = load_vectors(f)
        for v in vf:
            if a.ids and v["id"] not in a.ids:
                continue
            r = run_vector(vf.kind, v, f, a.impl)
            results.append(r)
            print(f"{r.outcome:13} {r.id}")
            if r.outcome in ("skip", "not-supported"):
                print(f"  {r.diff}")
            if r.outcome == "fail":
                print("  " + r.diff.replace("\n", "\n  "))
                print(f"  reproduce: {r.reproduction}")
            if a.show:
                print(json.dumps({k: v[k] for k in ("input", "expected", "tolerance") if k in v}, indent=1,
                                 sort_keys=True))
    if a.clauses:
        for c, o in clause_report(results).items():
            print(f"{o:13} {c}")
    n_fail = sum(r.outcome == "fail" for r in results)
    print(f"{len(results)} vectors: {len(results) - n_fail} not failed, {n_fail} failed")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
