"""The audit of torch's own pruning, quantization and SVD: ``python -m kmr_ref.conformance.torch_audit``.

Runs the frozen pruning, quantization and low-rank vectors through the adapters of ``torch_impl.py``
(torch as a user calls it, and torch pruning with its pruned entries read as +0.0, to see past its
first deviation), and writes

- ``docs/results/torch-audit.md``: per adapter, which clauses pass and where torch deviates, each
  deviation with the vectors that show it, the runner's diagnosis and a reproduction command;
- ``kmr_ref/conformance/torch.xfail``: the expected failures of ``--impl torch`` (strict: a
  vector torch starts to pass is reported), so ``kmr conform --impl torch`` exits 0 while torch
  behaves as audited.

``--check`` writes nothing and exits 1 if either file would change (``tests/test_conformance_torch.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kmr_ref import SPEC_VERSION
from kmr_ref.conformance.report import REPO_ROOT, FileRun, build_report, run_all
from kmr_ref.conformance.torch_impl import TorchLowRank, TorchPrune, TorchQuant
from kmr_ref.conformance.vectors import ADAPTER_RUNNERS, RunOptions
from kmr_ref.spec_index import spec_root

Json = Any
MD = REPO_ROOT / "docs" / "results" / "torch-audit.md"
XFAIL = Path(__file__).parent / "torch.xfail"

# Why torch deviates, per clause it fails (read from torch/nn/utils/prune.py and
# torch/ao/quantization/observer.py; checked by the vectors listed under each).
WHY = {
    "KMR.prune.zero-value": "`prune` stores `weight = weight_orig * weight_mask`: a pruned negative entry becomes "
                            "`-0.0` (80000000), not `+0.0`; a kept entry keeps its bits.",
    "KMR.prune.count": "`amount` is turned into a count with Python `round(amount * n)` (half to even), not "
                       "`floor(s * n)`: s = 1/2 of n = 3 prunes 2, not 1; and an *integer* `amount` is a count, "
                       "not a fraction.",
    "KMR.prune.tie-break": "ties in |w| are broken by `torch.topk` (order unspecified; here not the spec's "
                           "(tensor index, flat index)).",
    "KMR.prune.tensor-order": "`global_unstructured` concatenates the parameters in the order they are passed and "
                              "breaks ties by `topk`: the module-tree order of the spec is not what decides.",
    "KMR.prune.nonfinite": "no input check: NaN and inf are ranked (NaN as the largest magnitude) instead of refused.",
    "KMR.prune.empty": "no input check: an empty tensor is accepted.",
    "KMR.prune.identity-ends": "consequence of the -0.0 above: s = 1 leaves -0.0 entries.",
    "KMR.quant.nonfinite": "observers do not refuse NaN / inf: they produce a NaN or inf range.",
    "KMR.quant.magnitude": "no magnitude limit: |w| > 2^126 is accepted (the scale overflows to inf or the "
                           "range is silently lost).",
    "KMR.quant.empty": "an empty weight is not refused.",
    "KMR.quant.bits": "a 17-bit range is accepted by the qint32 observer (the spec's knob stops at 16).",
    "KMR.lowrank.sign": "`torch.linalg.svd` fixes no sign: each (u_i, v_i) comes as LAPACK leaves it, so the "
                        "factors differ from the spec's by a sign per singular pair.",
    "KMR.lowrank.split": "the user's split `U[:, :r] * S[:r].sqrt()` runs in the weight's dtype (binary32): "
                         "the square root and the product are rounded in binary32, not computed in binary64 and "
                         "cast once, so last bits differ.",
    "KMR.lowrank.applicable": "no applicability test: a layer is factorized even when r (m + n) >= m n, which "
                              "raises its parameter count.",
    "KMR.lowrank.rank-range": "no range check: rank 0 or a rank >= min(m, n) is sliced as given.",
    "KMR.lowrank.refactor": "a LowRankFactors is not a layer torch knows: it is left as is, never re-factorized.",
    "KMR.lowrank.nonfinite": "no input check: NaN / inf reach the SVD (torch raises its own error or returns NaN).",
    "KMR.lowrank.dtype": "no input check: an integer weight reaches `torch.linalg.svd`, which raises its own error.",
    "KMR.lowrank.scope": "no scope check: a configured name that is not a layer is ignored.",
    "KMR.lowrank.empty": "a zero-size weight reaches the SVD.",
    "KMR.knob.domain-real": "no domain check of energy.",
    "KMR.knob.unknown": "the adapter maps knob names; a name for a non-layer is refused as unknown.",
}


def _run(kind: str, adapter: Any, files: Sequence[Path]) -> FileRun:
    (run,) = run_all(files, type(adapter).__name__, {kind: ADAPTER_RUNNERS[kind](adapter)},
                     options=RunOptions(repro=lambda p, vid: _repro(vid, p)))
    return run


def _repro(vid: str, path: str | Path) -> str:
    return f"python -m kmr_ref.conformance --impl torch --no-builtin-xfail --show --id {vid} {_rel(path)}"


def _rel(path: str | Path) -> str:
    p = Path(path)
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def _first(diff: str) -> str:
    """The first line of a diff that says what differs, without a leading clause tag."""
    line = next((x for x in diff.splitlines() if not x.startswith("adapter call")), "")
    head, sep, rest = line.partition(": ")
    return rest if sep and head.startswith("KMR.") else line


def audit() -> tuple[str, str]:
    """(markdown, xfail file text)."""
    vdir = spec_root() / "vectors" / SPEC_VERSION
    cases = [("torch.nn.utils.prune (l1_unstructured, global_unstructured)", "prune-magnitude", TorchPrune(),
              vdir / "pruning.json", True),
             ("torch.nn.utils.prune, pruned entries read as +0.0 (to see past -0.0)", "prune-magnitude",
              TorchPrune(plus_zero=True), vdir / "pruning.json", False),
             ("torch.ao.quantization PerChannelMinMaxObserver + fake_quantize_per_channel_affine", "quant-uniform",
              TorchQuant(), vdir / "quantization.json", True),
             ("torch.linalg.svd, truncated and split as a user writes it (the vector's factors)", "lowrank-factors",
              TorchLowRank(), vdir / "lowrank.json", True),
             ("torch.linalg.svd as above, with the spec's sign convention applied (to see past it)",
              "lowrank-factors", TorchLowRank(spec_signs=True), vdir / "lowrank.json", False),
             ("torch.linalg.svd, its own SVD in binary32 (tolerance vectors)", "lowrank-svd",
              TorchLowRank(given_factors=False), vdir / "lowrank_svd.json", True),
             ("torch.linalg.svd, its own SVD, with the spec's sign convention applied", "lowrank-svd",
              TorchLowRank(given_factors=False, spec_signs=True), vdir / "lowrank_svd.json", False)]
    md = [
        "# Audit: torch's own pruning, quantization and SVD against the KMR spec",
        "",
        f"Generated by `python -m kmr_ref.conformance.torch_audit` (torch {torch.__version__.split('+')[0]}, "
        f"spec {SPEC_VERSION}); do not edit. The adapters (`kmr_ref/conformance/torch_impl.py`) call torch as a "
        "user would (`amount = float(s)`) and translate nothing else. `kmr conform --impl torch` runs the first and "
        "last of them against every vector with the expected failures of `kmr_ref/conformance/torch.xfail` "
        "(strict: a vector torch starts to pass is reported). Each failure is charged to one clause: the vector's "
        "primary clause, or the clause the runner's own checks pin it to.",
        "",
    ]
    xfail = ["# Expected failures of `kmr conform --impl torch` (torch " + torch.__version__.split("+")[0] + ").",
             "# Generated by python -m kmr_ref.conformance.torch_audit; see docs/results/torch-audit.md.", ""]
    reports = [(title, kind, path, in_impl, build_report([_run(kind, adapter, [path])], title))
               for title, kind, adapter, path, in_impl in cases]
    md += ["## Summary", ""]
    for kinds, name in ((("prune-magnitude",), "Pruning"), (("quant-uniform",), "Quantization"),
                        (("lowrank-factors", "lowrank-svd"), "Low-rank (torch.linalg.svd)")):
        reps = [r for _, k, _, _, r in reports if k in kinds]
        dev = sorted({c for r in reps for c, d in r["summary"]["clauses"].items() if d["status"] == "fail"})
        ok = sorted({c for r in reps for c, d in r["summary"]["clauses"].items() if d["status"] == "pass"} - set(dev))
        md += [f"- **{name}**: deviates on {', '.join(f'`{c}`' for c in dev) or 'nothing'}; "
               f"agrees on {', '.join(f'`{c}`' for c in ok) or 'nothing'}."]
    md += ["", "A passing vector credits every clause it cites; a failing one is charged to one clause only, so a "
           "clause can show as passed in one table while a deviation hidden behind another (here -0.0) shows in "
           "the next.", ""]
    for title, _kind, path, in_impl, rep in reports:
        run_n = rep["summary"]["files"][0]["vectors"]
        s = rep["summary"]
        passed = sorted(c for c, d in s["clauses"].items() if d["status"] == "pass")
        failed = sorted(c for c, d in s["clauses"].items() if d["status"] == "fail")
        t = s["totals"]
        md += [f"## {title}", "",
               f"{t['pass']} of {run_n} vectors pass ({_rel(path)}). "
               f"Clauses passed ({len(passed)}): {', '.join(f'`{c}`' for c in passed) or 'none'}.", ""]
        if not failed:
            md += ["No deviation.", ""]
        else:
            md += ["| clause | vectors | why | diagnosis (first vector) |", "|---|---|---|---|"]
            for c in failed:
                fs = [f for f in rep["failures"] if f["clause"] == c]
                first = _first(fs[0]["diff"])
                first = first.replace("|", "\\|")
                if len(first) > 160:
                    first = first[:157] + "..."
                ids = ", ".join(f"`{f['id']}`" for f in fs)
                md.append(f"| `{c}` | {len(fs)}: {ids} | {WHY.get(c, '')} | {first} |")
            md += ["", "Minimal reproductions (from the repository root, with the project's interpreter):", ""]
            for c in failed:
                f = next(x for x in rep["failures"] if x["clause"] == c)
                md.append(f"- `{c}`: `{f['reproduction']}`")
            md.append("")
        if in_impl:
            for f in rep["failures"]:
                xfail.append(f"{f['id']}  # {f['clause']}: {_first(f['diff'])[:100]}")
    md += ["## Where torch agrees",
           "",
           "torch's per-channel observers and `fake_quantize_per_channel_affine` compute exactly Algorithm Q on "
           "every valid quantization vector: the scale `fp32(fp32(hi - lo) / qmax)` (two binary32 roundings), "
           "the floor `finfo(float32).eps` = 2^-23, the product `x * fp32(1/s)` rounded half to even; the spec's "
           "choices there were made to match it. Its deviations are input checks only. torch's pruning agrees "
           "on which magnitudes go first, but not on counting, ties, the sign of a pruned zero, or input checks. "
           "`torch.linalg.svd` agrees with the spec's factorization within the tolerance once the spec's sign "
           "convention is applied (the `lowrank-svd` vectors); with the vector's factors, the split in binary32 "
           "differs in last bits, and the applicability and input checks are the user's to write.",
           ""]
    return "\n".join(md), "\n".join(xfail) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kmr_ref.conformance.torch_audit", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    a = ap.parse_args(argv)
    md, xf = audit()
    if a.check:
        stale = [str(p) for p, text in ((MD, md), (XFAIL, xf))
                 if not p.is_file() or p.read_text(encoding="utf-8") != text]
        if stale:
            print("stale: " + ", ".join(stale) + "; rerun python -m kmr_ref.conformance.torch_audit", file=sys.stderr)
            return 1
        return 0
    MD.parent.mkdir(parents=True, exist_ok=True)
    MD.write_text(md, encoding="utf-8")
    XFAIL.write_text(xf, encoding="utf-8")
    print(f"wrote {MD} and {XFAIL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
