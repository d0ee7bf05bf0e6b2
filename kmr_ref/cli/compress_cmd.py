"""``kmr compress CONFIG.toml``: compress your own model as a TOML file says (``spec/compress.md``).

Exit codes (``KMR.compress.exit-code``): 0 the budget is met (status ``feasible``); 1 the run ended
above the budget (``stalled``, ``step-limit``, ``policy-stop``); 2 the config, its sources or a rule
refused the input (the message names the clause); 3 the user's code failed; 130 interrupted above
the budget. ``--resume RUN_DIR`` continues a killed run (``KMR.compress.resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "compress", help="compress your own torch.nn.Module to a budget, as a TOML file says")
    p.add_argument("config", type=Path, nargs="?", default=None,
                   help="the TOML config (see spec/compress.md); with --resume it may be left out")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for run.json, trace.jsonl, model.safetensors, manifest.json, report.json "
                        "(default: out_dir in the TOML; neither: nothing is written)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run recorded in RUN_DIR (same config, same weights)")
    p.add_argument("--dense", action="store_true", help="also write the dense fp32 model.dense.safetensors")
    p.add_argument("--json", action="store_true",
                   help="print report.json's object on stdout (progress goes to stderr)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in the output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from kmr_ref.compress import CompressConfig, ConfigError, compress, load_config, load_model
    from kmr_ref.compress.progress import RichProgress
    from kmr_ref.compress.run import HEADER_FILE, RESUME
    from kmr_ref.core.errors import KMRError
    from kmr_ref.core.trace import Status

    out = args.out
    sink = RichProgress(Console(stderr=True) if args.json else Console())  # KMR.compress.progress
    try:
        if args.resume is not None:
            out = args.resume
            if args.config is not None:
                cfg = load_config(args.config)
            else:  # KMR.compress.resume: the config recorded in the run header
                try:
                    header = json.loads((args.resume / HEADER_FILE).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    raise ConfigError(RESUME, f"{args.resume / HEADER_FILE} is missing or unreadable; "
                                              "give the config: kmr compress CONFIG --resume DIR") from None
                cfg = CompressConfig.from_dict(header["config"])
        elif args.config is None:
            raise ConfigError("KMR.compress.config", "give a config: kmr compress CONFIG.toml")
        else:
            cfg = load_config(args.config)
        sink.loading(f"the model ({cfg.model})")  # KMR.compress.progress: a real model takes a while
        model = load_model(cfg)
        rep = compress(model, cfg, out_dir=out, overwrite=args.overwrite, resume=args.resume is not None,
                       save_dense=args.dense, progress=sink)
    except KeyboardInterrupt:  # outside Algorithm 10 (loading, replay, saving): every record is on disk
        print("kmr compress: interrupted; continue with kmr compress --resume DIR", file=sys.stderr)
        return 130
    except KMRError as e:  # KMR.compress.exit-code: 2, the message names the clause
        print(f"kmr compress: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # KMR.compress.exit-code: 3, the user's code (factory, quality, input) failed
        kept = " (trace.jsonl keeps every step streamed before it)" if out is not None else ""
        print(f"kmr compress: the run failed in user code: {type(e).__name__}: {e}{kept}", file=sys.stderr)
        return 3
    if args.json:  # KMR.compress.progress: stdout holds the report only
        print(json.dumps(rep.to_json(), indent=1))
    if rep.status is Status.FEASIBLE:  # KMR.compress.exit-code
        return 0
    return 130 if rep.status is Status.INTERRUPTED else 1
