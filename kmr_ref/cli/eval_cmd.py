"""``kmr eval RUN_DIR``: reload a compressed model and measure it again (``KMR.compress.eval``).

Prints ``{"cost", "quality"}`` (``--json``: as JSON on stdout) re-measured on the model that
``kmr_ref.load(RUN_DIR)`` rebuilds, with the meter, quality function and example input of the
run's config. Exit 0 when both equal ``report.json``'s ``final`` exactly, 1 when not, 2 when the run
directory or its config is refused, 3 when the user's code fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "eval", help="reload a kmr compress result and re-measure its cost and quality")
    p.add_argument("run_dir", type=Path, help="the output folder of kmr compress")
    p.add_argument("--json", action="store_true", help='print {"cost", "quality"} as JSON on stdout')
    p.set_defaults(func=run)


def evaluate(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``KMR.compress.eval``: (re-measured, report's final) for a run directory."""
    import torch

    from kmr_ref.compress import CompressConfig, ConfigError, build_meter, import_object, load
    from kmr_ref.compress.run import REPORT_FILE
    from kmr_ref.core.trace import json_value

    try:
        report = json.loads((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError("KMR.compress.eval", f"{run_dir / REPORT_FILE} is missing or unreadable: "
                                               "not a finished run directory") from None
    cfg = CompressConfig.from_dict(report["config"])
    model = load(run_dir)
    example = import_object(cfg.example_input, "example_input")() if cfg.example_input is not None else None
    cost = build_meter(cfg.meter, example)
    q: float | None = None
    if cfg.quality is not None:
        fn = import_object(cfg.quality, "quality")
        with torch.no_grad():
            q = float(fn(model))
    return {"cost": json_value(cost(model)), "quality": q}, dict(report["final"])


def run(args: argparse.Namespace) -> int:
    from kmr_ref.core.errors import KMRError

    try:
        got, want = evaluate(args.run_dir)
    except KMRError as e:
        print(f"kmr eval: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        print(f"kmr eval: the user's code failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 3
    same = got == want  # KMR.compress.eval: exactly report.json's final
    if args.json:
        print(json.dumps(got))
    else:
        print(f"cost {got['cost']}, quality {got['quality']}: "
              + ("equal to report.json's final" if same else f"report.json's final is {want}"))
    return 0 if same else 1
