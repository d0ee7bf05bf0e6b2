#!/usr/bin/env python3
"""Generate ``spec/vectors/<version>/compress_config.json``: vectors for the practitioner's config
(``spec/compress.md``: ``KMR.compress.config`` and the clauses it names), kind ``compress-config``.

Each vector holds a TOML text (``input.toml``, the file ``kmr compress`` reads) and either the
**normalized config** it stands for or the error it must raise (the clause, and the key the
message must name). Only what the text alone decides is here: no model is built, nothing is
imported (an import path is checked for its form only), no file is read but the TOML.

The expected values are written by hand from the text of ``spec/compress.md`` (each next to its
TOML); this file computes nothing from ``kmr_ref`` and imports nothing from it.

The normalized config (``expected.config``), language-neutral:
``{"meter", "max_steps", "budget": {"absolute": exact} | {"fraction": exact}, "overwrite",
"model", "quality", "example_input" (import-path strings or null), "weights", "out_dir" (the path
relative to the TOML file's folder, normalized, or null), "phases": [{"name", "method",
"include" (list or null), "exclude" (list), "policy": {"type": "scheduled", "knob", "values"} |
{"type": "greedy", "knobs": "per-layer" | [...]}}]}``: defaults filled in (``meter`` nonzeros,
``max_steps`` 100, ``overwrite`` false, the phase names of ``KMR.compress.phases``, the knob a
scheduled policy drives when it names none, ``KMR.compress.policies``), exact numbers as JSON
integers or ``"p/q"`` strings (``KMR.exact.binary64`` for floats).

Usage: ``python spec/vectors/generate_compress.py [OUT_DIR]`` (default: ``spec/vectors/0.1.0``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SPEC_VERSION = "0.1.0"
Json = Any
CONFIG = "KMR.compress.config"


def normalized(phases: list[Json], budget: Json, meter: str = "nonzeros", max_steps: int = 100,
               overwrite: bool = False, **sources: Json) -> Json:
    out = {"meter": meter, "max_steps": max_steps, "budget": budget, "overwrite": overwrite,
           "model": None, "quality": None, "example_input": None, "weights": None, "out_dir": None}
    out.update(sources)
    out["phases"] = phases
    return out


def phase(name: str, method: str, policy: Json, include: list[str] | None = None,
          exclude: list[str] | None = None) -> Json:
    return {"name": name, "method": method, "include": include, "exclude": exclude or [], "policy": policy}


def sched(knob: str, values: list[Json]) -> Json:
    return {"type": "scheduled", "knob": knob, "values": values}


PRUNE = '[[phases]]\nmethod = "prune"\npolicy = { type = "scheduled", values = ["1/10", "2/10"] }\n'
PRUNE_N = phase("prune", "prune", sched("sparsity", ["1/10", "1/5"]))


def vec(vid: str, primary: str, clauses: list[str], description: str, toml: str, expected: Json,
        features: list[str] | None = None) -> Json:
    feats = set(features or ())
    if "error" in expected:
        feats.add("input-checks")
        clauses = [*clauses, "KMR.error.names-clause"]
    return {"id": vid, "primary": primary, "clauses": sorted({primary, CONFIG, *clauses}), "features": sorted(feats),
            "description": description, "input": {"toml": toml}, "expected": expected, "tolerance": None}


def err(clause: str, key: str | None) -> Json:
    """The error the config must raise: its clause, and the key its message must name (None: no key,
    e.g. a file that is not TOML)."""
    return {"error": clause, "key": key}


def vectors() -> list[Json]:
    v: list[Json] = []
    # --- accepted configs, normalized -----------------------------------------------------------
    v.append(vec("config-minimal-defaults", CONFIG, ["KMR.compress.phases", "KMR.compress.policies",
                                                     "KMR.compress.budget-fraction"],
                 "One phase and a budget fraction: meter nonzeros, max_steps 100, overwrite false, the phase named "
                 "after its method, the scheduled knob defaulting to sparsity; \"2/10\" is 1/5.",
                 'budget_fraction = "1/2"\n' + PRUNE, {"config": normalized([PRUNE_N], {"fraction": "1/2"})}))
    v.append(vec("config-phase-names-repeat", "KMR.compress.phases", ["KMR.compress.policies", "KMR.compress.meters"],
                 "Phases named by their method, then <method>-2, -3 on repeats; quantize's knob defaults to bits; "
                 "composed_storage_bits accepts both methods.",
                 'meter = "composed_storage_bits"\nbudget_fraction = "1/8"\nmax_steps = 7\n' + PRUNE
                 + '[[phases]]\nmethod = "quantize"\npolicy = { type = "scheduled", values = [8, 4] }\n' + PRUNE
                 + '[[phases]]\nmethod = "prune"\nname = "last"\npolicy = { type = "greedy" }\n',
                 {"config": normalized([PRUNE_N, phase("quantize", "quantize", sched("bits", [8, 4])),
                                        phase("prune-2", "prune", sched("sparsity", ["1/10", "1/5"])),
                                        phase("last", "prune", {"type": "greedy", "knobs": "per-layer"})],
                                       {"fraction": "1/8"}, meter="composed_storage_bits", max_steps=7)}))
    v.append(vec("config-default-knobs", "KMR.compress.policies", [],
                 "The knob of a scheduled policy that names none: fraction (structured), energy (lowrank); a named "
                 "knob is kept; greedy knobs listed by name.",
                 'meter = "params"\nbudget = 1000\n'
                 '[[phases]]\nmethod = "structured"\npolicy = { type = "scheduled", values = ["1/4"] }\n'
                 '[[phases]]\nmethod = "lowrank"\npolicy = { type = "scheduled", values = ["9/10", 0.5] }\n'
                 '[[phases]]\nmethod = "lowrank"\npolicy = { type = "scheduled", knob = "rank", values = [8] }\n'
                 '[[phases]]\nmethod = "structured"\npolicy = { type = "greedy", knobs = ["fraction@0"] }\n',
                 {"config": normalized([phase("structured", "structured", sched("fraction", ["1/4"])),
                                        phase("lowrank", "lowrank", sched("energy", ["9/10", "1/2"])),
                                        phase("lowrank-2", "lowrank", sched("rank", [8])),
                                        phase("structured-2", "structured",
                                              {"type": "greedy", "knobs": ["fraction@0"]})],
                                       {"absolute": 1000}, meter="params")}))
    v.append(vec("config-select-and-sources", "KMR.compress.select", ["KMR.compress.toml"],
                 "include / exclude lists are kept; import paths are kept as written (their form checked, nothing "
                 "imported); weights and out_dir resolve against the TOML file's folder.",
                 'model = "pkg.models:make"\nquality = "pkg.eval:accuracy"\nexample_input = "pkg.data:batch"\n'
                 'weights = "w/../model.safetensors"\nout_dir = "runs/a"\noverwrite = true\nbudget_fraction = "1/4"\n'
                 '[[phases]]\nmethod = "prune"\ninclude = ["features.*", "classifier.weight"]\nexclude = ["*.bias"]\n'
                 'policy = { type = "scheduled", values = ["1/2"] }\n',
                 {"config": normalized([phase("prune", "prune", sched("sparsity", ["1/2"]),
                                              include=["features.*", "classifier.weight"], exclude=["*.bias"])],
                                       {"fraction": "1/4"}, overwrite=True, model="pkg.models:make",
                                       quality="pkg.eval:accuracy", example_input="pkg.data:batch",
                                       weights="model.safetensors", out_dir="runs/a")}))
    v.append(vec("config-values-binary64", "KMR.exact.binary64", ["KMR.compress.policies"],
                 "Scheduled values as TOML floats denote their shortest decimal: 0.1 is 1/10, 0.3 is 3/10; an "
                 "integer value stays an integer.",
                 'budget_fraction = 0.125\n[[phases]]\nmethod = "prune"\n'
                 'policy = { type = "scheduled", values = [0.1, 0.3, 1] }\n',
                 {"config": normalized([phase("prune", "prune", sched("sparsity", ["1/10", "3/10", 1]))],
                                       {"fraction": "1/8"})}))
    units = [("budget-decimal-prefix", '"2.5M"', "params", {"absolute": 2500000},
              "\"2.5M\" parameters: the decimal literal read exactly, times 10^6 (never a binary float)."),
             ("budget-megabytes", '"18MB"', "composed_storage_bits", {"absolute": 144000000},
              "\"18MB\" = 18 x 10^6 bytes x 8 = 144 000 000 bits (a bit meter)."),
             ("budget-kibibytes", '"1.5KiB"', "storage_bits", {"absolute": 12288},
              "\"1.5KiB\" = 1.5 x 2^10 bytes x 8 = 12 288 bits."),
             ("budget-kilobits", '"3kbit"', "storage_bits", {"absolute": 3000}, "\"3kbit\" = 3000 bits."),
             ("budget-percent", '"12.5%"', "nonzeros", {"fraction": "1/8"},
              "\"12.5%\" is the fraction 1/8 of the initial cost, as budget_fraction."),
             ("budget-rational-string", '"7/2"', "nonzeros", {"absolute": "7/2"},
              "A \"p/q\" budget stays an exact rational (no rounding)."),
             ("budget-decimal-string", '"2.5"', "macs", {"absolute": "5/2"},
              "A decimal string without prefix is exact: 5/2 (here MACs: structured lowers them)."),
             ("budget-float", "0.1", "nonzeros", {"absolute": "1/10"},
              "A TOML float budget denotes its shortest decimal (KMR.exact.binary64).")]
    for vid, text, meter, budget, desc in units:
        method = {"params": "structured", "macs": "structured", "storage_bits": "quantize"}.get(meter, "prune")
        pol = '["1/2"]' if method != "quantize" else "[8]"
        toml = (f'meter = "{meter}"\nbudget = {text}\n[[phases]]\nmethod = "{method}"\n'
                f'policy = {{ type = "scheduled", values = {pol} }}\n')
        knob = {"prune": "sparsity", "quantize": "bits", "structured": "fraction"}[method]
        vals = ["1/2"] if method != "quantize" else [8]
        v.append(vec(f"config-{vid}", "KMR.compress.budget-units", [], desc, toml,
                     {"config": normalized([phase(method, method, sched(knob, vals))], budget, meter=meter)}))
    v.append(vec("config-budget-fraction-percent", "KMR.compress.budget-fraction", ["KMR.compress.budget-units"],
                 "budget_fraction takes a percentage too: \"25%\" is 1/4.",
                 'budget_fraction = "25%"\n' + PRUNE, {"config": normalized([PRUNE_N], {"fraction": "1/4"})}))
    # --- refused configs: the clause and the key --------------------------------------------------
    bad = [
        ("config-error-not-toml", "KMR.compress.toml", "budget = \n[[phases]\n", None,
         "Not valid TOML: ConfigError naming KMR.compress.toml."),
        ("config-error-unknown-key", CONFIG, 'budget = 1\nbugdet_fraction = "1/2"\n' + PRUNE, "bugdet_fraction",
         "An unknown top-level key is refused, naming it."),
        ("config-error-no-phases", CONFIG, "budget = 1\n", "phases", "At least one phase is required."),
        ("config-error-empty-phases", CONFIG, "budget = 1\nphases = []\n", "phases", "An empty phase list is refused."),
        ("config-error-unknown-meter", "KMR.compress.meters", 'meter = "bogus"\nbudget = 1\n' + PRUNE, "meter",
         "An unknown meter name: KMR.compress.meters."),
        ("config-error-unknown-method", "KMR.compress.methods",
         'budget = 1\n[[phases]]\nmethod = "magic"\npolicy = { type = "scheduled", values = [1] }\n',
         "phases[0].method", "An unknown method: KMR.compress.methods, naming phases[0].method."),
        ("config-error-bad-option", "KMR.compress.methods",
         'budget = 1\n[[phases]]\nmethod = "prune"\nscope = "local"\npolicy = { type = "scheduled", values = [1] }\n',
         "phases[0].scope", "prune's scope must be global or per-tensor."),
        ("config-error-bits-range", "KMR.compress.methods",
         'meter = "storage_bits"\nbudget = 1\n[[phases]]\nmethod = "quantize"\nbits = 17\n'
         'policy = { type = "scheduled", values = [4] }\n', "phases[0].bits", "quantize's bits must lie in 2..16."),
        ("config-error-option-of-other-method", CONFIG,
         'budget = 1\n[[phases]]\nmethod = "prune"\nbits = 8\npolicy = { type = "scheduled", values = [1] }\n',
         "bits", "An option of another method (bits on prune) is an unknown key of the phase."),
        ("config-error-policy-type", "KMR.compress.policies",
         'budget = 1\n[[phases]]\nmethod = "prune"\npolicy = { type = "random", values = [1] }\n',
         "phases[0].policy.type", "A policy type other than scheduled / greedy: KMR.compress.policies."),
        ("config-error-empty-values", CONFIG,
         'budget = 1\n[[phases]]\nmethod = "prune"\npolicy = { type = "scheduled", values = [] }\n',
         "phases[0].policy.values", "A scheduled policy needs at least one value."),
        ("config-error-greedy-knobs", CONFIG,
         'budget = 1\n[[phases]]\nmethod = "prune"\npolicy = { type = "greedy", knobs = "all" }\n',
         "phases[0].policy.knobs", "greedy knobs must be \"per-layer\" or a non-empty list of knob names."),
        ("config-error-both-budgets", CONFIG, 'budget = 1\nbudget_fraction = "1/2"\n' + PRUNE, "budget",
         "Exactly one of budget and budget_fraction: both given."),
        ("config-error-no-budget", CONFIG, PRUNE, "budget", "Exactly one of budget and budget_fraction: none given."),
        ("config-error-unit-not-bits", "KMR.compress.budget-units", 'meter = "nonzeros"\nbudget = "18MB"\n' + PRUNE,
         "budget", "A byte unit with a meter that counts no bits."),
        ("config-error-binary-prefix-bits", "KMR.compress.budget-units",
         'meter = "storage_bits"\nbudget = "4Kibit"\n[[phases]]\nmethod = "quantize"\n'
         'policy = { type = "scheduled", values = [8] }\n', "budget", "A binary prefix goes with bytes only."),
        ("config-error-percent-above", "KMR.compress.budget-units", 'budget = "120%"\n' + PRUNE, "budget",
         "A percentage above 100%."),
        ("config-error-negative-budget", "KMR.compress.budget-units", "budget = -1\n" + PRUNE, "budget",
         "A budget below 0."),
        ("config-error-budget-words", "KMR.compress.budget-units", 'budget = "a lot"\n' + PRUNE, "budget",
         "A budget string that is no number, unit or percentage."),
        ("config-error-bool-budget", "KMR.compress.budget-units", "budget = true\n" + PRUNE, "budget",
         "A boolean budget is refused (booleans are not numbers)."),
        ("config-error-fraction-above-one", "KMR.compress.budget-fraction", 'budget_fraction = "3/2"\n' + PRUNE,
         "budget_fraction", "budget_fraction must lie in [0, 1]."),
        ("config-error-fraction-unit", "KMR.compress.budget-fraction", 'budget_fraction = "10kB"\n' + PRUNE,
         "budget_fraction", "budget_fraction takes no unit."),
        ("config-error-max-steps-negative", CONFIG, "budget = 1\nmax_steps = -1\n" + PRUNE, "max_steps",
         "max_steps must be an integer >= 0."),
        ("config-error-max-steps-float", CONFIG, "budget = 1\nmax_steps = 2.5\n" + PRUNE, "max_steps",
         "max_steps must be an integer."),
        ("config-error-import-path", CONFIG, 'model = "pkg.models.make"\nbudget = 1\n' + PRUNE, "model",
         "An import path not of the form package.module:attr."),
        ("config-error-overwrite-type", CONFIG, 'overwrite = "yes"\nbudget = 1\n' + PRUNE, "overwrite",
         "overwrite must be a boolean."),
        ("config-error-repeated-name", CONFIG,
         'budget = 1\n[[phases]]\nmethod = "prune"\nname = "stage-x"\npolicy = { type = "scheduled", values = [1] }\n'
         '[[phases]]\nmethod = "prune"\nname = "stage-x"\npolicy = { type = "scheduled", values = [1] }\n', "stage-x",
         "Two phases with the same name."),
        ("config-error-include-empty-pattern", "KMR.compress.select",
         'budget = 1\n[[phases]]\nmethod = "prune"\ninclude = [""]\npolicy = { type = "scheduled", values = [1] }\n',
         "phases[0].include", "An include pattern must be a non-empty string."),
        ("config-error-exclude-not-list", "KMR.compress.select",
         'budget = 1\n[[phases]]\nmethod = "prune"\nexclude = "*.bias"\n'
         'policy = { type = "scheduled", values = [1] }\n',
         "phases[0].exclude", "exclude must be a list of patterns."),
        ("config-error-pair-prune-params", "KMR.compress.pairs", 'meter = "params"\nbudget = 1\n' + PRUNE,
         "phases[0]", "Unstructured pruning cannot lower the parameter count: refused with the reason."),
        ("config-error-pair-quantize-nonzeros", "KMR.compress.pairs",
         'budget = 1\n[[phases]]\nmethod = "quantize"\npolicy = { type = "scheduled", values = [8] }\n',
         "phases[0]", "Quantization cannot lower the nonzero count (the default meter)."),
        ("config-error-shallowest-first", CONFIG,
         'budget = 1\nextra = 1\n[[phases]]\nmethod = "prune"\npolicy = { type = "random" }\n', "extra",
         "Two violations: the shallowest key (the unknown top-level key) is the one reported."),
    ]
    for vid, clause, toml, key, desc in bad:
        v.append(vec(vid, clause, [], desc, toml, err(clause, key)))
    return v


def document() -> Json:
    return {"kind": "compress-config", "spec_version": SPEC_VERSION, "generator": "spec/vectors/generate_compress.py",
            "description": "The practitioner's config (spec/compress.md): a TOML text in, the normalized config or the "
                           "error clause and key out. See spec/vectors/README.md.",
            "vectors": vectors()}


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / SPEC_VERSION
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(document(), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    (out / "compress_config.json").write_bytes(data.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
