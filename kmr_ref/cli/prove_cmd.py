"""``kmr prove``: discharge the Z3 proof obligations of Algorithm 1 / Proposition 1, of
Algorithm 10 (Composed-KMR: ``KMR.alg10.prop1`` across phases, skip, phase-break, status) and the
per-rule lemmas, run every mutant (each must be refuted), replay runs of the Python reference
through the encoding, and run CrossHair on the code (``proofs/README.md``).

Exit status: 0 when every obligation is proved and every mutant refuted; 1 otherwise. A
CrossHair obligation that is ``unknown`` (crosshair-tool not installed, or its exploration did
not finish in time) is shown but does not fail the run, unless ``--strict``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "prove", help="run the Z3 proofs (Algorithm 1, Proposition 1, Algorithm 10, rule lemmas) and their mutants")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strict", action="store_true",
                   help="also fail when a CrossHair obligation is unknown (tool missing or inconclusive)")
    p.add_argument("--no-crosshair", action="store_true", help="skip CrossHair (its obligations are unknown)")
    p.add_argument("--cases", type=int, default=30,
                   help="random runs replayed through the encoding (Algorithm 10: two thirds as many)")
    p.add_argument("--seed", type=int, default=0, help="seed of the replayed runs")
    p.add_argument("--show-counterexamples", action="store_true",
                   help="print the concrete trace refuting each mutant")
    p.add_argument("--mutation", action="store_true",
                   help="also run every code mutant of kmr_ref/core (each in a scratch copy; ~1-2 min) and "
                        "print the committed mutmut report (proofs/mutation_report.json, `make mutation`)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from kmr_proofs import run_all
    except ImportError as e:  # pragma: no cover - only when the wheel was built without proofs/
        print(f"kmr prove: the kmr_proofs package is not importable ({e})")
        return 2
    rep = run_all(cases=args.cases, seed=args.seed, crosshair=not args.no_crosshair)
    mut_code = 0
    if args.mutation:
        from kmr_proofs import mutation
        from kmr_proofs.runner import code_mutants

        code_mutants(rep)
        if args.json:
            rep_json = rep.to_json()
            rep_json["mutmut"] = mutation.load_report()
            print(json.dumps(rep_json, indent=2))
            return max(rep.exit_code(strict=args.strict), mutation.exit_code())
        mut_code = mutation.report()
    code = max(rep.exit_code(strict=args.strict), mut_code)
    if args.json:
        print(json.dumps(rep.to_json(), indent=2))
        return code
    _print_table(rep, args.show_counterexamples)
    return code


def _print_table(rep: Any, show_cex: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    colour = {"proved": "green", "failed": "red", "unknown": "yellow"}
    table = Table(title="kmr prove — proof obligations")
    for col in ("obligation", "clause", "method", "checks", "result", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for o in rep.obligations:
        table.add_row(o.id, o.clause, o.kind, o.checks, f"[{colour.get(o.result, 'white')}]{o.result}[/]",
                      f"{o.seconds:.2f}")
    mt = Table(title="mutants (each must be refuted)")
    for col in ("mutant", "obligation", "result"):
        mt.add_column(col)
    for m in rep.mutants:
        mt.add_row(m.id, m.obligation,
                   "[green]refuted-as-expected[/]" if m.refuted else "[red]SURVIVED[/]")
    con = Console()
    con.print(table)
    con.print(mt)
    for o in rep.obligations:
        if o.result != "proved":
            con.print(f"[bold]{o.id}[/] ({o.result}): {o.detail}", markup=True, highlight=False)
    for m in rep.mutants:
        if show_cex or not m.refuted:
            con.print(f"[bold]{m.id}[/] — {m.mutation}\n{m.counterexample}\n", markup=True, highlight=False)
    n_ok = sum(o.result == "proved" for o in rep.obligations)
    n_ref = sum(m.refuted for m in rep.mutants)
    con.print(f"{n_ok}/{len(rep.obligations)} obligations proved, {n_ref}/{len(rep.mutants)} mutants "
              f"refuted, {rep.total_seconds:.1f} s")
