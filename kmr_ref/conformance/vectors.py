"""Load vector files and run them: one runner per file ``kind``, results per vector and clause.

Extension point: a new kind registers a runner with ``register_runner(kind, fn, impl=...)``;
``fn(vector) -> (ok, diff)``, and it may raise ``SkipVector`` (outcome ``skip``) or
``NotSupported`` (``not-supported``). Runners are kept per *implementation*: ``RUNNERS`` is the
reference's (``IMPLEMENTATIONS["reference"]``); ``IMPLEMENTATIONS["kernels"]`` drives the fast
kernels of ``kmr_ref.kernels``, ``IMPLEMENTATIONS["torch"]`` torch's own pruning and quantization
(``torch_impl.py``). Kinds without a runner report ``not-supported``. The method kinds are
registered lazily, so that running table-world files imports no torch. ``ADAPTER_RUNNERS[kind]``
turns a third-party adapter (``adapters.py``) into a runner.

Every vector names one **primary** clause: a failure is blamed on it alone, unless a runner-level
check pins it to another clause (``KMR.rule.no-mutation``, ``KMR.rule.deterministic``,
``KMR.meter.cost-exact``, and the method runners' diagnoses, e.g. an entry that is neither kept nor
+0.0 is ``KMR.prune.zero-value`` whatever vector shows it; their diff lines start with the clause
ID). Results: ``pass``,
``fail``, ``skip``, ``xfail`` (listed in an implementation's expected-failures file; an
unexpected pass fails unless not strict) and ``not-supported`` (no runner, ``NotSupported``, or a
``features`` tag the implementation declares it lacks).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import math
import re
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from kmr_ref.conformance.adapters import NotSupported, SkipVector
from kmr_ref.conformance.alg1_table import Alg1Adapter, reference_alg1

Json = Any
Outcome = Literal["pass", "fail", "skip", "xfail", "not-supported"]
VectorRunner = Callable[[Mapping[str, Json]], tuple[bool, str]]
_CLAUSE_LINE = re.compile(r"^(KMR\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+):")


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
    primary: str = ""
    blame: str = ""  # the clause a fail / xfail is charged to ("" otherwise)
    features: tuple[str, ...] = ()
    file: str = ""


def primary_of(vec: Mapping[str, Json]) -> str:
    """The vector's primary clause (older files without one: its first cited clause)."""
    p = vec.get("primary")
    if isinstance(p, str):
        return p
    cl = vec.get("clauses") or [""]
    return str(cl[0])


def blame_of(primary: str, diff: str) -> str:
    """The clause a failure is charged to: the vector's primary clause, unless a runner-level check
    pinned the failure to a clause of its own (a diff line that starts with a clause ID, e.g.
    ``KMR.rule.no-mutation: ...``, ``KMR.meter.cost-exact: ...``, or a method runner's diagnosis such
    as ``KMR.prune.zero-value: an entry became 80000000``); the first such line wins."""
    for line in diff.splitlines():
        m = _CLAUSE_LINE.match(line)
        if m:
            return m.group(1)
    return primary


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
    then bounds float fields: |got - expected| <= abs + rel * |expected|. Booleans never equal
    numbers, and an exact (integer) expectation is never met by a float (``5.0`` is not ``5``)."""
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
        if isinstance(expected, int) and isinstance(got, float):
            return [f"{path}: got the float {got!r}, expected the integer {expected!r}"]
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


_HEX = re.compile(r"^(?:[0-9a-f]{8}|[0-9a-f]{16})$")


def decode_floats(x: Json) -> Json:
    """Every list of binary32 / binary64 bit patterns (8 / 16 hex digits) inside ``x`` as floats,
    for kinds whose tolerance bounds tensor entries (``lowrank-svd``)."""
    if isinstance(x, dict):
        return {k: decode_floats(v) for k, v in x.items()}
    if isinstance(x, list):
        if x and all(isinstance(b, str) and _HEX.match(b) for b in x):
            fmt = {8: ">f", 16: ">d"}
            return [float(struct.unpack(fmt[len(b)], bytes.fromhex(b))[0]) for b in x]
        return [decode_floats(v) for v in x]
    return x


# kinds whose float tensors (bit patterns) are compared within the vector's tolerance
TOLERANT_TENSORS = {"lowrank-svd"}


def named_key(expected: Json, got: Json) -> Json:
    """``compress-config``: an error answer ``{"error", "message"}`` as ``{"error", "key"}``, where
    key is the vector's key when the message names it (``KMR.compress.config``: the message names
    the offending key) and otherwise says it does not."""
    if not (isinstance(expected, dict) and "error" in expected and isinstance(got, dict) and "error" in got):
        return got
    key = expected.get("key")
    msg = str(got.get("message", ""))
    named = key if key is None or key in msg else f"<not named in the message: {msg[:200]!r}>"
    return {"error": got["error"], "key": named}


def compare_kind(kind: str, expected: Json, got: Json, tolerance: Json = None) -> list[str]:
    """:func:`compare`, after :func:`decode_floats` for kinds in ``TOLERANT_TENSORS`` (their
    tolerance bounds each tensor entry), after :func:`named_key` for ``compress-config``; exact,
    bit pattern for bit pattern, for every other kind."""
    if kind == "compress-config":
        return compare(expected, named_key(expected, got), tolerance)
    if kind in TOLERANT_TENSORS:
        return compare(decode_floats(expected), decode_floats(got), tolerance)
    return compare(expected, got, tolerance)


# --- runners -------------------------------------------------------------------------------------

def run_alg1_vector(vec: Mapping[str, Json], adapter: Alg1Adapter = reference_alg1) -> tuple[bool, str]:
    """Run one ``alg1`` vector through ``adapter`` (default: the reference ``budgeted_kmr``)."""
    try:
        got = adapter(vec["input"])
    except (NotSupported, SkipVector):
        raise
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
    "alg10": lazy_runner("kmr_ref.conformance.alg10_table", "run_alg10_vector"),
    "prune-magnitude": lazy_runner("kmr_ref.conformance.prune_runner", "reference_runner"),
    "quant-uniform": lazy_runner("kmr_ref.conformance.quant_runner", "reference_runner"),
    "prune-structured": lazy_runner("kmr_ref.conformance.structured_runner", "reference_runner"),
    "lowrank-factors": lazy_runner("kmr_ref.conformance.lowrank_runner", "factors_runner"),
    "lowrank-svd": lazy_runner("kmr_ref.conformance.lowrank_runner", "svd_runner"),
    "compress-config": lazy_runner("kmr_ref.conformance.compress_runner", "reference_runner"),
}
IMPLEMENTATIONS: dict[str, dict[str, VectorRunner]] = {
    "reference": RUNNERS,
    "kernels": {  # Algorithms 1 and 10 have no kernel: their files report not-supported
        "prune-magnitude": lazy_runner("kmr_ref.conformance.prune_runner", "kernels_runner"),
        "quant-uniform": lazy_runner("kmr_ref.conformance.quant_runner", "kernels_runner"),
    },
    "torch": {  # torch's own pruning and quantization, audited (docs/results/torch-audit.md)
        "prune-magnitude": lazy_runner("kmr_ref.conformance.torch_impl", "prune_runner"),
        "quant-uniform": lazy_runner("kmr_ref.conformance.torch_impl", "quant_runner"),
        "lowrank-factors": lazy_runner("kmr_ref.conformance.torch_impl", "lowrank_factors_runner"),
        "lowrank-svd": lazy_runner("kmr_ref.conformance.torch_impl", "lowrank_svd_runner"),
    },
}
# files of expected failures shipped with a built-in implementation (``--xfail`` adds more)
BUILTIN_XFAIL: dict[str, str] = {"torch": "torch.xfail", "reference": "reference.xfail"}


def _alg1_adapter_runner(adapter: Any) -> VectorRunner:
    def run(vec: Mapping[str, Json]) -> tuple[bool, str]:
        return run_alg1_vector(vec, adapter)

    return run


def _lazy_factory(module: str, attr: str = "make_runner") -> Callable[[Any], VectorRunner]:
    def factory(adapter: Any) -> VectorRunner:
        make: Callable[[Any], VectorRunner] = getattr(importlib.import_module(module), attr)
        return make(adapter)

    return factory


ADAPTER_RUNNERS: dict[str, Callable[[Any], VectorRunner]] = {
    "alg1": _alg1_adapter_runner,
    "alg10": _lazy_factory("kmr_ref.conformance.alg10_table"),
    "prune-magnitude": _lazy_factory("kmr_ref.conformance.prune_runner"),
    "quant-uniform": _lazy_factory("kmr_ref.conformance.quant_runner"),
    "prune-structured": _lazy_factory("kmr_ref.conformance.structured_runner"),
    "lowrank-factors": _lazy_factory("kmr_ref.conformance.lowrank_runner"),
    "lowrank-svd": _lazy_factory("kmr_ref.conformance.lowrank_runner", "make_svd_runner"),
    "compress-config": _lazy_factory("kmr_ref.conformance.compress_runner"),
}


def register_runner(kind: str, fn: VectorRunner, impl: str = "reference") -> None:
    """Extension point: the runner of vector files whose top-level ``kind`` is ``kind``, for ``impl``."""
    IMPLEMENTATIONS.setdefault(impl, {})[kind] = fn


# --- expected failures (array-api-tests style, strict) ------------------------------------------

@dataclass(frozen=True)
class XFail:
    """Vector-id patterns (``fnmatch``) an implementation is expected to fail, each with its reason.
    File format: one pattern per line, ``# reason`` after it; blank lines and ``#`` lines ignored."""

    entries: tuple[tuple[str, str], ...] = ()
    strict: bool = True

    @staticmethod
    def parse(text: str, strict: bool = True) -> XFail:
        out: list[tuple[str, str]] = []
        for line in text.splitlines():
            body, _, reason = line.partition("#")
            if body.strip():
                out.append((body.strip(), reason.strip()))
        return XFail(tuple(out), strict)

    @staticmethod
    def load(path: str | Path, strict: bool = True) -> XFail:
        return XFail.parse(Path(path).read_text(encoding="utf-8"), strict)

    def __add__(self, other: XFail) -> XFail:
        return XFail(self.entries + other.entries, self.strict and other.strict)

    def reason(self, vid: str) -> str | None:
        for pat, why in self.entries:
            if fnmatch.fnmatchcase(vid, pat):
                return why or "(no reason given)"
        return None


@dataclass(frozen=True)
class RunOptions:
    """How vectors are run: the unsupported ``features`` an implementation declares, its expected
    failures, and the reproduction command prefix (``report.py`` builds one that runs as printed)."""

    unsupported_features: frozenset[str] = frozenset()
    xfail: XFail = field(default_factory=XFail)
    repro: Callable[[str | Path, str], str] | None = None


def reproduction(path: str | Path, vid: str, impl: str = "reference") -> str:
    """A command that reruns one vector from any directory and shows its input, output and diff."""
    from kmr_ref.conformance.report import repro_command  # the one place that builds commands

    return repro_command(path, vid, ["--impl", impl] if impl != "reference" else [])


def run_vector(kind: str, vec: Mapping[str, Json], path: str | Path = "<file>", impl: str = "reference",
               runners: Mapping[str, VectorRunner] | None = None, options: RunOptions | None = None) -> VectorResult:
    """Run one vector with ``impl``'s runner for ``kind`` (or with ``runners`` when given)."""
    opts = options or RunOptions()
    table = IMPLEMENTATIONS.get(impl, {}) if runners is None else runners
    runner = table.get(kind)
    clauses = tuple(vec.get("clauses", ()))
    primary = primary_of(vec)
    features = tuple(vec.get("features", ()))
    repro = opts.repro(path, vec["id"]) if opts.repro else reproduction(path, vec["id"], impl)
    base = VectorResult(vec["id"], kind, clauses, "not-supported", "", repro, primary, "", features, str(path))
    lacking = sorted(set(features) & opts.unsupported_features)
    if runner is None:
        return replace(base, diff=f"no {impl} runner for kind {kind!r}")
    if lacking:
        return replace(base, diff=f"feature(s) {', '.join(lacking)} declared not supported")
    try:
        ok, diff = runner(vec)
    except NotSupported as e:
        return replace(base, diff=str(e))
    except SkipVector as e:
        return replace(base, outcome="skip", diff=str(e))
    why = opts.xfail.reason(vec["id"])
    if ok:
        if why is not None and opts.xfail.strict:
            return replace(base, outcome="fail", blame=primary,
                           diff=f"XPASS: listed as an expected failure ({why}) but passed (strict)")
        return replace(base, outcome="pass", diff=diff)
    blame = blame_of(primary, diff)
    if why is not None:
        return replace(base, outcome="xfail", blame=blame, diff=f"expected failure: {why}\n{diff}")
    return replace(base, outcome="fail", blame=blame, diff=diff)


def run_file(path: str | Path, ids: Sequence[str] | None = None, impl: str = "reference",
             runners: Mapping[str, VectorRunner] | None = None,
             options: RunOptions | None = None) -> list[VectorResult]:
    vf = load_vectors(path)
    return [run_vector(vf.kind, v, path, impl, runners, options) for v in vf if ids is None or v["id"] in ids]


def clause_report(results: Sequence[VectorResult]) -> dict[str, Outcome]:
    """Per clause: ``fail`` if a failure is blamed on it (``blame``), else ``pass`` if a vector citing
    it passed, else ``xfail`` if one is blamed on it, else the outcome the vectors citing it share
    (``skip``, ``not-supported``). A failing vector's other clauses are charged nothing (a clause
    cited only by vectors that failed on another clause has no status: nothing is known of it)."""
    by: dict[str, list[Outcome]] = {}
    for r in results:
        if r.outcome in ("fail", "xfail"):
            by.setdefault(r.blame or r.primary or (r.clauses[0] if r.clauses else ""), []).append(r.outcome)
        else:
            for c in r.clauses:
                by.setdefault(c, []).append(r.outcome)
    order: list[Outcome] = ["fail", "pass", "xfail", "skip", "not-supported"]
    return {c: next(o for o in order if o in outs) for c, outs in sorted(by.items()) if c and outs}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kmr_ref.conformance.vectors FILE... [--id ID]``: the report with ``--show``."""
    from kmr_ref.conformance.report import main as report_main

    args = list(sys.argv[1:] if argv is None else argv)
    return report_main([*args, "--show"] if "--show" not in args else args)


if __name__ == "__main__":
    sys.exit(main())
