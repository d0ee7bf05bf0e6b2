"""The kit catches deviations, on the right primary clause (``tests/conformance_deviants.py``).

An implementation written from the spec text alone passes every method vector; each deliberate
deviation of it fails, and the report blames exactly the clause the deviation breaks (never the
runner-level clauses ``KMR.rule.no-mutation`` / ``KMR.rule.deterministic`` it does not break).
Among them the two deviations the 0.1.0 kit missed: k = floor(float(s) * n) (``KMR.prune.count``,
caught at s = 29/100, n = 100) and the asymmetric scale rounded once (``KMR.quant.scale``, b = 14).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.report import build_report, run_all
from kmr_ref.conformance.vectors import ADAPTER_RUNNERS, RunOptions, XFail
from tests.conformance_deviants import DEVIANTS, NumpyIntCostPrune, SpecPrune, SpecQuant

ROOT = Path(__file__).resolve().parent.parent
VDIR = ROOT / "spec" / "vectors" / SPEC_VERSION
FILE_OF = {"prune-magnitude": VDIR / "pruning.json", "quant-uniform": VDIR / "quantization.json"}
# the empty-input vectors (KMR.prune.empty skips a zero-size tensor; Algorithm Q refuses an empty w)
EMPTY = ("prune-empty-tensor-skipped", "quant-error-empty-group")


def _report(kind: str, adapter: Any, options: RunOptions | None = None) -> dict[str, Any]:
    runs = run_all([FILE_OF[kind]], "adapter", {kind: ADAPTER_RUNNERS[kind](adapter)}, options=options)
    return build_report(runs, type(adapter).__name__)


@pytest.mark.parametrize("kind,adapter", [("prune-magnitude", SpecPrune()), ("quant-uniform", SpecQuant()),
                                          ("prune-magnitude", NumpyIntCostPrune())],
                         ids=["spec-prune", "spec-quant", "numpy-int64-cost"])
def test_spec_implementations_pass(kind: str, adapter: Any) -> None:
    """Written from the spec alone: every vector passes (a numpy.int64 cost is an exact integer)."""
    rep = _report(kind, adapter)
    assert rep["summary"]["ok"], [(f["id"], f["diff"][:300]) for f in rep["failures"]]
    assert rep["summary"]["totals"]["pass"] == rep["summary"]["files"][0]["vectors"]


CASES = [(kind, cls, clause) for kind, d in DEVIANTS.items() for cls, clause in d.items()]


@pytest.mark.parametrize("kind,cls,clause", CASES, ids=[c.__name__ for _, c, _ in CASES])
def test_deviant_fails_on_its_primary_clause(kind: str, cls: type, clause: str) -> None:
    """Each deviant fails, and every failure is charged to the one clause it breaks."""
    rep = _report(kind, cls())
    failed = {c for c, d in rep["summary"]["clauses"].items() if d["status"] == "fail"}
    assert failed == {clause}, (failed, [(f["id"], f["clause"]) for f in rep["failures"]])
    assert {f["clause"] for f in rep["failures"]} == {clause}
    assert rep["summary"]["clauses"]["KMR.rule.no-mutation"]["status"] == "pass"


def test_missed_deviations_now_caught_where_documented() -> None:
    """The two deviations of the issue fail on the vectors built for them."""
    from tests.conformance_deviants import FloatKPrune, OneRoundingQuant

    rep = _report("prune-magnitude", FloatKPrune())
    ids = {f["id"] for f in rep["failures"]}
    assert {"prune-count-n100-29-100", "prune-count-n100-binary64-0.29", "prune-count-n300-41-100"} <= ids
    rep = _report("quant-uniform", OneRoundingQuant())
    ids = {f["id"] for f in rep["failures"]}
    assert "quant-asym-scale-two-roundings-b14" in ids
    assert ids == {f"quant-asym-scale-two-roundings-b{b}" for b in range(2, 17)} | (ids & set(EMPTY)) or ids >= {
        f"quant-asym-scale-two-roundings-b{b}" for b in range(2, 17)}


def test_float_cost_refused_numpy_int_accepted() -> None:
    """KMR.meter.cost-exact: 5.0 fails (blamed on KMR.meter.cost-exact), numpy.int64(5) passes."""
    from tests.conformance_deviants import FloatCostPrune

    rep = _report("prune-magnitude", FloatCostPrune())
    f = next(x for x in rep["failures"] if x["id"] == "prune-count-7-of-10")
    assert f["clause"] == "KMR.meter.cost-exact" and "float" in f["diff"]


def test_xfail_strict_and_xpass() -> None:
    """An expected-failures file turns a deviant's failures into xfail (report ok); a listed vector
    that passes is an XPASS, a failure unless not strict."""
    from tests.conformance_deviants import FloatKPrune

    xf = XFail.parse("prune-count-n* # float k\nprune-count-n300-41-100\n")
    rep = _report("prune-magnitude", FloatKPrune(), RunOptions(xfail=xf))
    assert rep["summary"]["ok"], rep["failures"]
    assert rep["summary"]["clauses"]["KMR.prune.count"]["status"] == "pass"  # other count vectors pass
    assert rep["summary"]["totals"]["xfail"] >= 3
    # prune-count-n1000... does not exist; prune-count-n100-per-tensor-58-100 fails too; the spec
    # implementation passes all of them: each listed one is an XPASS
    rep = _report("prune-magnitude", SpecPrune(), RunOptions(xfail=xf))
    assert not rep["summary"]["ok"] and all("XPASS" in f["diff"] for f in rep["failures"])
    rep = _report("prune-magnitude", SpecPrune(), RunOptions(xfail=XFail(xf.entries, strict=False)))
    assert rep["summary"]["ok"]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmr_ref.conformance", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, check=False)


def test_cli_deviant_reproduction_runs_as_printed(tmp_path: Path) -> None:
    """From the CLI: exit 1, the failure names its clause, and the printed reproduction runs from
    another directory and shows the adapter's input."""
    proc = _cli("--json", "--adapter", "prune-magnitude=tests.conformance_deviants:FloatKPrune",
                "--id", "prune-count-n100-29-100", str(FILE_OF["prune-magnitude"]))
    assert proc.returncode == 1, proc.stderr
    rep = json.loads(proc.stdout)
    (f,) = rep["failures"]
    assert f["clause"] == "KMR.prune.count"
    proc2 = subprocess.run(f["reproduction"], shell=True, capture_output=True, text=True, cwd=tmp_path,
                           timeout=300, check=False)
    assert proc2.returncode == 1, proc2.stderr
    assert "adapter call: prune(" in proc2.stdout and "sparsity=Fraction(29, 100)" in proc2.stdout
    assert "input: {" in proc2.stdout


@pytest.mark.parametrize("args,needle", [
    (["--id", "no-such-vector"], "unknown vector id"),
    (["--adapter", "prune-magnitude=no_such_module:X"], "cannot import"),
    (["--adapter", "prune-magnitude=tests.conformance_deviants:Nope"], "has no attribute"),
    (["--adapter", "nokind=tests.conformance_deviants:SpecPrune"], "no adapter protocol"),
    (["--adapter", "garbage"], "KIND=module:attr"),
    (["--xfail", "/nonexistent/file"], "--xfail"),
    (["/nonexistent/vectors.json"], "no such vector file"),
])
def test_cli_usage_errors(args: list[str], needle: str) -> None:
    """Bad arguments: exit 2 and one clear line on stderr, no traceback."""
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stdout[-500:] + proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_cli_list_select_features_junit(tmp_path: Path) -> None:
    """--list, --clause and --feature select vectors; --unsupported-feature makes them
    not-supported; --junit writes one testcase per vector."""
    proc = _cli("--list", "--clause", "KMR.prune.tensor-order", "--feature", "module-tree")
    assert proc.returncode == 0
    rows = [x.split("\t") for x in proc.stdout.splitlines()]
    assert len(rows) == 3 and all(r[2] == "KMR.prune.tensor-order" and "module-tree" in r[3] for r in rows)
    junit = tmp_path / "j.xml"
    proc = _cli("--json", "--unsupported-feature", "module-tree", "--junit", str(junit),
                str(FILE_OF["prune-magnitude"]))
    rep = json.loads(proc.stdout)
    tree = [r for r in rep["results"] if "module-tree" in r["features"]]
    assert len(tree) == 3 and all(r["outcome"] == "not-supported" for r in tree)
    assert junit.read_text(encoding="utf-8").count("<testcase") == len(rep["results"])


def test_structured_spec_passes_and_deviant_caught() -> None:
    """prune-structured: the spec oracle as an adapter passes; scoring by L2 whatever p fails on
    KMR.structured.score."""
    from tests.conformance_deviants import l2_only_structured, spec_structured

    path = VDIR / "structured.json"
    rep = build_report(run_all([path], "a", {"prune-structured": ADAPTER_RUNNERS["prune-structured"](spec_structured)}),
                       "a")
    assert rep["summary"]["ok"], rep["failures"]
    rep = build_report(run_all([path], "a", {"prune-structured": ADAPTER_RUNNERS["prune-structured"](
        l2_only_structured)}), "a")
    assert {f["clause"] for f in rep["failures"]} == {"KMR.structured.score"}
