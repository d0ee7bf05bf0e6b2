"""``kmr compress`` and ``kmr_ref.compress`` (spec/compress.md) on tiny MLPs: every method and
meter against hand-computed costs, the TOML round trip, the outputs, the caller's model, config
errors by clause, interrupts and the CLI."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import sys
import textwrap
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import kmr_ref
from kmr_ref.cli import compress_cmd
from kmr_ref.compress import (
    CompressConfig,
    CompressReport,
    ConfigError,
    GreedyConfig,
    LowRankMethod,
    PhaseConfig,
    PruneMethod,
    QuantizeMethod,
    ScheduledConfig,
    StructuredMethod,
    compress,
    load_config,
    load_model,
)
from kmr_ref.core.trace import Status
from kmr_ref.methods.lowrank import LowRankFactors
from kmr_ref.methods.storage import composed_storage_bits

ROOT = Path(__file__).resolve().parent.parent


def mlp(sizes: tuple[int, ...] = (6, 8, 4), seed: int = 0) -> nn.Sequential:
    """Linear/ReLU stack with standard-normal weights (no zero entry, almost surely)."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    m = nn.Sequential(*layers)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


def np_nonzeros(m: nn.Module) -> int:
    return sum(int(np.count_nonzero(p.detach().numpy())) for p in m.parameters())


def linear_macs(m: nn.Module, batch: int) -> int:
    return sum(batch * mod.in_features * mod.out_features for mod in m.modules() if isinstance(mod, nn.Linear))


def state_bytes(m: nn.Module) -> dict[str, bytes]:
    return {k: v.detach().numpy().tobytes() for k, v in m.state_dict().items()}


def prune_cfg(values: tuple[str, ...] = ("1/4", "1/2", "3/4"), **kw: Any) -> CompressConfig:
    kw.setdefault("budget_fraction", "1/2")
    return CompressConfig(phases=(PhaseConfig(PruneMethod(), ScheduledConfig(values)),), meter="nonzeros", **kw)


def out_quality(x: torch.Tensor, ref: nn.Module) -> Any:
    y = ref(x).detach()
    return lambda m: -float(((m(x) - y) ** 2).mean())


# --------------------------------------------------------------------------------------------
# Methods and meters, against hand-computed costs


def test_prune_nonzeros_costs() -> None:
    """KMR.compress.methods KMR.compress.meters KMR.compress.phases: prune + nonzeros on a
    6-8-4 MLP: 92 nonzero parameters, 80 prunable weights; sparsity s removes floor(80 s)."""
    m = mlp()
    assert np_nonzeros(m) == 92
    rep = compress(m, prune_cfg())
    assert [r.cost_after for r in rep.steps] == [92 - (80 * n) // 4 for n in (1, 2, 3)]
    assert rep.status is Status.FEASIBLE and rep.budget == 46 and rep.cost_initial == 92
    assert np_nonzeros(rep.model) == rep.cost_final == 32
    assert rep.step_phases == ("prune",) * 3


def test_budget_fraction_is_exact() -> None:
    """KMR.compress.budget-fraction: B = f x C(M_0) with no rounding: 63/182 of 92 is 31.84...;
    cost 32 is above it (any rounding of B to an integer would call it feasible)."""
    rep = compress(mlp(), prune_cfg(budget_fraction="63/182"))
    assert rep.budget == Fraction(63, 182) * 92
    assert rep.cost_final == 32 and rep.status is Status.POLICY_STOP
    rep2 = compress(mlp(), prune_cfg(budget_fraction="8/23"))  # exactly 32
    assert rep2.budget == 32 and rep2.status is Status.FEASIBLE
    rep3 = compress(mlp(), prune_cfg(budget_fraction=0.25))  # KMR.exact.binary64: 0.25 = 1/4
    assert rep3.budget == 23


def test_quantize_storage_bits() -> None:
    """KMR.compress.methods KMR.compress.meters: symmetric per-channel b bits on a 6-8-4 MLP:
    80 b code bits + 12 fp32 scales + 12 fp32 biases (KMR.quant.storage-bits)."""
    cfg = CompressConfig(phases=(PhaseConfig(QuantizeMethod(), ScheduledConfig((8, 4))),),
                         meter="storage_bits", budget_fraction="2/5")
    rep = compress(mlp(), cfg)
    assert rep.cost_initial == 92 * 32
    assert [r.cost_after for r in rep.steps] == [80 * b + 24 * 32 for b in (8, 4)]
    assert rep.status is Status.FEASIBLE and rep.budget == Fraction(2, 5) * 92 * 32


def test_structured_params() -> None:
    """KMR.compress.methods KMR.compress.meters: structured pruning removes min(floor(f C), C - 1)
    of the C hidden channels of the *current* model (8 -> 6 -> 3); params = 6h + h + 4h + 4 for h
    kept channels; absolute budget."""
    cfg = CompressConfig(phases=(PhaseConfig(StructuredMethod(), ScheduledConfig(("1/4", "1/2"))),),
                         meter="params", budget=50)
    rep = compress(mlp(), cfg)
    assert [r.cost_after for r in rep.steps] == [11 * h + 4 for h in (6, 3)]
    assert rep.status is Status.FEASIBLE
    assert sum(p.numel() for p in rep.model.parameters()) == 37


def test_lowrank_macs() -> None:
    """KMR.compress.methods KMR.compress.meters: rank r on a 16-32-16 MLP, batch 3:
    MACs = 3 (16 r + 32 r + 32 r + 16 r); macs needs the example input."""
    x = torch.randn(3, 16)
    cfg = CompressConfig(phases=(PhaseConfig(LowRankMethod(), ScheduledConfig((8, 4), knob="rank")),),
                         meter="macs", budget_fraction="1/2")
    m = mlp((16, 32, 16))
    rep = compress(m, cfg, example_input=x)
    assert rep.cost_initial == linear_macs(m, 3) == 3 * 2 * 512
    assert [r.cost_after for r in rep.steps] == [3 * 96 * r for r in (8, 4)]
    assert rep.status is Status.FEASIBLE and linear_macs(rep.model, 3) == rep.cost_final
    assert any(isinstance(mod, LowRankFactors) for mod in rep.model.modules())


def test_prune_then_quantize_composed_storage() -> None:
    """KMR.compress.phases: records are tagged in config order (prune, then quantize), t runs
    on across phases, and the final cost is the composed storage of the returned model."""
    x = torch.randn(5, 6)
    m = mlp()
    phases = (PhaseConfig(PruneMethod(), ScheduledConfig(("1/2", "3/4"))),
              PhaseConfig(QuantizeMethod(), ScheduledConfig((8, 4))))
    cfg = CompressConfig(phases=phases, meter="composed_storage_bits", budget_fraction="1/5")
    rep = compress(m, cfg, quality=out_quality(x, m))
    tags = list(rep.step_phases)
    assert tags == sorted(tags, key=["prune", "quantize"].index) and tags[0] == "prune"
    assert [r.t for r in rep.steps] == list(range(len(rep.steps)))
    assert rep.cost_final == composed_storage_bits(rep.model)
    rev = compress(m, replace(cfg, phases=phases[::-1]), quality=out_quality(x, m))
    assert rev.step_phases[0] == "quantize" and rev.phases[0].name == "quantize"


def test_greedy_per_layer_climbs_the_ladder() -> None:
    """KMR.compress.policies: greedy "per-layer" = one sparsity@<param> knob per prunable tensor,
    each climbing its grid 1/20, 2/20, ... one rung per accepted step."""
    x = torch.randn(7, 6)
    m = mlp()
    cfg = CompressConfig(phases=(PhaseConfig(PruneMethod(), GreedyConfig()),), meter="nonzeros",
                         budget_fraction="3/4")
    rep = compress(m, cfg, quality=out_quality(x, m))
    assert rep.status is Status.FEASIBLE
    seen: dict[str, Fraction] = {}
    for r in rep.steps:
        assert r.knob in ("sparsity@0.weight", "sparsity@2.weight")
        assert r.value == seen.get(r.knob, Fraction(0)) + Fraction(1, 20)
        seen[r.knob] = Fraction(r.value)
    q = GreedyConfig(("bits",))
    rep_q = compress(m, CompressConfig(phases=(PhaseConfig(QuantizeMethod(), q),), meter="storage_bits",
                                       budget_fraction="1/2"), quality=out_quality(x, m))
    assert [r.value for r in rep_q.steps] == list(range(15, 15 - len(rep_q.steps), -1))


def test_kernel_option_is_bit_equal() -> None:
    """KMR.compress.methods: prune kernel = true gives the same bytes as the reference rule."""
    a = compress(mlp(), prune_cfg())
    b = compress(mlp(), replace(prune_cfg(), phases=(PhaseConfig(PruneMethod(kernel=True),
                                                                 ScheduledConfig(("1/4", "1/2", "3/4"))),)))
    assert state_bytes(a.model) == state_bytes(b.model)


# --------------------------------------------------------------------------------------------
# Outputs and the caller's model


def check_outputs(rep: CompressReport, out: Path, base: nn.Module) -> dict[str, Any]:
    """KMR.compress.outputs KMR.compress.load: the trace, the report, and a model that reloads
    (from the base model) to the returned model's exact bytes and storage."""
    lines = [json.loads(s) for s in (out / "trace.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    assert lines == report["steps"] == rep.step_json()
    assert len(lines) == len(rep.steps)
    back = kmr_ref.load(out, model=base)
    assert isinstance(back, nn.Module)
    assert state_bytes(back) == state_bytes(rep.model)
    assert composed_storage_bits(back) == composed_storage_bits(rep.model)
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    return dict(report)


def test_outputs(tmp_path: Path) -> None:
    """KMR.compress.outputs: trace.jsonl lines == report steps; model.safetensors == the returned
    model's state_dict; report.json keys; the config echo re-runs to the same steps."""
    x = torch.randn(4, 6)
    m = mlp()
    cfg = CompressConfig(phases=(PhaseConfig(PruneMethod(), ScheduledConfig(("1/4", "1/2"))),
                                 PhaseConfig(QuantizeMethod(scheme="asymmetric"), ScheduledConfig((8,)))),
                         meter="composed_storage_bits", budget_fraction="1/4", max_steps=10)
    rep = compress(m, cfg, quality=out_quality(x, m), out_dir=tmp_path / "out")
    report = check_outputs(rep, tmp_path / "out", m)
    assert set(report) == {"kmr_spec", "status", "meter", "unit", "budget", "initial", "final", "accepted_steps",
                           "resumed_steps", "phases", "steps", "config", "outputs", "seconds"}
    assert set(report["outputs"]["files"]) == {"run.json", "trace.jsonl", "manifest.json", "model.safetensors",
                                               "report.json"}
    assert report["status"] == rep.status.value
    assert Fraction(str(report["budget"])) == Fraction(1, 4) * rep.cost_initial
    assert [p["name"] for p in report["phases"]] == [p.name for p in rep.phases]
    assert report["final"]["cost"] == composed_storage_bits(rep.model)
    again = compress(m, CompressConfig.from_dict(report["config"]), quality=out_quality(x, m))
    assert again.step_json() == rep.step_json()


def test_caller_model_untouched(tmp_path: Path) -> None:
    """KMR.compress.outputs: the caller's tensors (bytes), parameter objects and module flags are
    untouched, even by a quality function that calls eval()."""
    m = mlp()
    m.train()
    before, params = state_bytes(m), [id(p) for p in m.parameters()]

    def q(model: nn.Module) -> float:
        model.eval()
        return float(model(torch.ones(1, 6)).sum())

    for method, vals in ((PruneMethod(), ("1/2",)), (QuantizeMethod(), (4,)), (StructuredMethod(), ("1/2",)),
                         (LowRankMethod(), ("1/2",))):
        cfg = CompressConfig(phases=(PhaseConfig(method, ScheduledConfig(vals)),), meter="composed_storage_bits",
                             budget=0)
        compress(m, cfg, quality=q, out_dir=tmp_path / method.method)
    assert state_bytes(m) == before and [id(p) for p in m.parameters()] == params
    assert all(mod.training for mod in m.modules())


def test_existing_results_refused(tmp_path: Path) -> None:
    """KMR.compress.outputs: a folder holding results is refused (nothing rewritten) unless
    overwrite; an output path equal to the input weights is always refused."""
    out = tmp_path / "out"
    compress(mlp(), prune_cfg(), out_dir=out)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError) as e:
        compress(mlp(), prune_cfg(("1/4",)), out_dir=out)
    assert e.value.clause == "KMR.compress.outputs"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    rep = compress(mlp(), prune_cfg(("1/4",)), out_dir=out, overwrite=True)
    check_outputs(rep, out, mlp())
    assert len(rep.steps) == 1
    weights = out / "model.safetensors"
    with pytest.raises(ConfigError) as e:
        compress(mlp(), replace(prune_cfg(), weights=weights, overwrite=True), out_dir=out)
    assert e.value.clause == "KMR.compress.outputs" and "input weights" in e.value.message


# --------------------------------------------------------------------------------------------
# Config errors: each names its clause, nothing is written


BASE: dict[str, Any] = {
    "meter": "nonzeros", "budget_fraction": "1/2",
    "phases": [{"method": "prune", "policy": {"type": "scheduled", "values": ["1/2"]}}],
}


def with_(path: str, value: Any) -> dict[str, Any]:
    d = json.loads(json.dumps(BASE))
    cur = d
    keys = path.split("/")
    for k in keys[:-1]:
        cur = cur[int(k)] if k.isdigit() else cur[k]
    if value is DELETE:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return dict(d)


DELETE = object()

CONFIG_ERRORS = [
    ("phases/0/method", "distill", "KMR.compress.methods", "unknown method"),
    ("meter", "flops", "KMR.compress.meters", "unknown meter"),
    ("budget", 10, "KMR.compress.config", "exactly one"),
    ("budget_fraction", DELETE, "KMR.compress.config", "exactly one"),
    ("budget_fraction", "3/2", "KMR.compress.budget-fraction", "[0, 1]"),
    ("budget_fraction", "a lot", "KMR.compress.budget-fraction", "rational"),
    ("budget_fraction", True, "KMR.compress.budget-fraction", "bool"),
    ("max_steps", -1, "KMR.compress.config", "max_steps"),
    ("colour", "red", "KMR.compress.config", "unknown key"),
    ("phases", [], "KMR.compress.config", "phase"),
    ("phases/0/scope", "sideways", "KMR.compress.methods", "scope"),
    ("phases/0/bits", 8, "KMR.compress.config", "unknown key"),
    ("phases/0/policy", {"type": "random"}, "KMR.compress.policies", "scheduled"),
    ("phases/0/policy", {"type": "scheduled", "values": []}, "KMR.compress.config", "non-empty"),
    ("quality", "no_colon_here", "KMR.compress.config", "import path"),
]


@pytest.mark.parametrize(("path", "value", "clause", "words"), CONFIG_ERRORS)
def test_config_errors_name_their_clause(path: str, value: Any, clause: str, words: str, tmp_path: Path) -> None:
    """KMR.compress.config: a bad config raises ConfigError naming the clause and the problem."""
    with pytest.raises(ConfigError) as e:
        CompressConfig.from_dict(with_(path, value))
    assert e.value.clause == clause and str(e.value).startswith(f"[{clause}]")
    assert words in e.value.message


def build_errors() -> list[tuple[CompressConfig, dict[str, Any], str, str]]:
    def one(method: Any, policy: Any, meter: str = "composed_storage_bits") -> CompressConfig:
        return CompressConfig(phases=(PhaseConfig(method, policy),), meter=meter, budget=0)

    return [
        (one(PruneMethod(), GreedyConfig()), {}, "KMR.compress.policies", "quality"),
        (one(StructuredMethod(), ScheduledConfig(("1/2",)), meter="macs"), {}, "KMR.compress.meters",
         "example input"),
        (one(PruneMethod(), ScheduledConfig(("1/2",), knob="sparsity@9.weight")), {}, "KMR.compress.policies",
         "unknown knob"),
        (one(PruneMethod(), ScheduledConfig(("3/2",))), {}, "KMR.compress.policies", "outside"),
        (one(QuantizeMethod(), ScheduledConfig((1,))), {}, "KMR.compress.policies", "bits"),
        (one(QuantizeMethod(), GreedyConfig(("bits@0.bias",))), {"quality": lambda m: 0.0},
         "KMR.compress.policies", "unknown knob"),
        (one(LowRankMethod(), GreedyConfig(("rank",))), {"quality": lambda m: 0.0}, "KMR.compress.policies",
         "grid"),
        (one(PruneMethod(), ScheduledConfig(("1/2",))), {"quality": 3}, "KMR.compress.config", "callable"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_build_errors_name_their_clause(case: int, tmp_path: Path) -> None:
    """KMR.compress.policies KMR.compress.meters: errors found while building the phases name
    their clause and are raised before any file is written."""
    cfg, kw, clause, words = build_errors()[case]
    with pytest.raises(ConfigError) as e:
        compress(mlp(), cfg, out_dir=tmp_path / "out", **kw)
    assert e.value.clause == clause and words in e.value.message
    assert not (tmp_path / "out").exists()


def test_typed_errors_in_python() -> None:
    """KMR.compress.config KMR.compress.methods: the dataclasses refuse bad values themselves."""
    with pytest.raises(ConfigError) as e:
        QuantizeMethod(granularity="row")  # type: ignore[arg-type]
    assert e.value.clause == "KMR.compress.methods"
    with pytest.raises(ConfigError) as e:
        StructuredMethod(p=3)
    assert e.value.clause == "KMR.compress.methods"
    with pytest.raises(ConfigError) as e:
        CompressConfig(phases=(PhaseConfig(PruneMethod(), ScheduledConfig(("1/2",)), name="a"),) * 2, budget=1)
    assert e.value.clause == "KMR.compress.config" and "unique" in e.value.message
    ok = CompressConfig(phases=[PhaseConfig(PruneMethod(), ScheduledConfig(["1/2"])),
                                PhaseConfig(PruneMethod(), ScheduledConfig(["3/4"]))], budget=1)
    assert ok.phase_names() == ["prune", "prune-2"]


# --------------------------------------------------------------------------------------------
# TOML round trip, and the CLI

FACTORY = '''
import torch
from torch import nn
CALLS = [0]
def build():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
def not_a_module():
    return 42
def quality(model):
    return -float(model(torch.ones(2, 6)).abs().sum())
def interrupting_quality(model):
    CALLS[0] += 1
    if CALLS[0] == 3:
        raise KeyboardInterrupt
    return 0.0
def example():
    return torch.ones(2, 6)
def failing_quality(model):
    CALLS[0] += 1
    if CALLS[0] == 3:
        raise RuntimeError("evaluation crashed")
    return 0.0
'''

TOML = '''
model = "{mod}:build"
weights = "w.safetensors"
quality = "{mod}:quality"
example_input = "{mod}:example"
meter = "macs"
budget_fraction = "2/3"
max_steps = 10
out_dir = "out"

[[phases]]
method = "structured"
policy = {{ type = "greedy", knobs = "per-layer" }}

[[phases]]
method = "lowrank"
name = "svd"
policy = {{ type = "scheduled", knob = "rank", values = [3, 2] }}
'''


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    mod = "kmr_compress_test_factory"
    (tmp_path / f"{mod}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, mod, raising=False)
    save_file(mlp().state_dict(), str(tmp_path / "w.safetensors"))
    return mod


def write_toml(tmp_path: Path, mod: str, text: str = TOML, **subst: str) -> Path:
    body = text.format(mod=mod)
    for k, v in subst.items():
        body = body.replace(k, v)
    p = tmp_path / "cfg.toml"
    p.write_text(textwrap.dedent(body))
    return p


def test_toml_round_trip(tmp_path: Path, factory: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """KMR.compress.toml: relative paths resolve against the TOML's folder (not the cwd); the model
    comes from the factory with the weights loaded strictly; the run equals the Python API's."""
    monkeypatch.chdir(ROOT)
    cfg = load_config(write_toml(tmp_path, factory))
    assert cfg.weights == tmp_path / "w.safetensors" and cfg.out_dir == tmp_path / "out"
    model = load_model(cfg)
    assert state_bytes(model) == state_bytes(mlp())
    rep = compress(model, cfg)
    check_outputs(rep, tmp_path / "out", mlp())
    # MACs 2 x 80 = 160, budget 160 x 2/3: the rungs 1/20 and 1/10 of 8 hidden channels remove none
    # and the ladder passes them (KMR.policy.ladder-advance); 3/20, 1/5, 1/4 remove one channel each
    # (20 MACs apiece), 160 -> 100 <= 106 2/3, so the structured phase ends feasible and the svd phase
    # is not run (KMR.alg10.skip)
    assert [(p.name, p.status) for p in rep.phases] == [("structured", Status.FEASIBLE)]
    assert [r.cost_after for r in rep.steps] == [140, 120, 100]
    assert rep.cost_final == linear_macs(rep.model, 2) == 100 and rep.status is Status.FEASIBLE
    mod = sys.modules[factory]
    py = CompressConfig(phases=(PhaseConfig(StructuredMethod(), GreedyConfig("per-layer")),
                                PhaseConfig(LowRankMethod(), ScheduledConfig((3, 2), knob="rank"), name="svd")),
                        meter="macs", budget_fraction="2/3", max_steps=10)
    rep_py = compress(mlp(), py, quality=mod.quality, example_input=mod.example())
    assert rep_py.step_json() == rep.step_json() and rep_py.status is rep.status
    assert state_bytes(rep_py.model) == state_bytes(rep.model)


@pytest.mark.parametrize(("old", "new", "words"), [
    (":build", ":not_a_module", "not a torch.nn.Module"),
    (":quality", ":missing", "no attribute"),
    ('weights = "w.safetensors"', 'weights = "nowhere.safetensors"', "not found"),
    ("kmr_compress_test_factory:build", "no_such_module_kmr:build", "cannot import"),
])
def test_toml_source_errors(tmp_path: Path, factory: str, old: str, new: str, words: str) -> None:
    """KMR.compress.toml: sources that cannot be loaded raise ConfigError naming the clause."""
    with pytest.raises(ConfigError) as e:
        cfg = load_config(write_toml(tmp_path, factory, **{old: new}))
        compress(load_model(cfg), cfg)
    assert e.value.clause == "KMR.compress.toml" and words in e.value.message
    assert not (tmp_path / "out").exists()


def test_toml_file_errors(tmp_path: Path, factory: str) -> None:
    """KMR.compress.toml: a missing file, invalid TOML, and weights of another shape."""
    for path, text in (("missing.toml", None), ("bad.toml", "model = [")):
        if text is not None:
            (tmp_path / path).write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(tmp_path / path)
        assert e.value.clause == "KMR.compress.toml"
    save_file(mlp((6, 5, 4)).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError) as e:
        load_model(load_config(write_toml(tmp_path, factory)))
    assert e.value.clause == "KMR.compress.toml" and "do not match" in e.value.message


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    p = argparse.ArgumentParser(prog="kmr")
    compress_cmd.register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = compress_cmd.run(args)
    return rc, out.getvalue(), err.getvalue()


def test_cli(tmp_path: Path, factory: str) -> None:
    """KMR.compress.exit-code: 0 feasible (--json prints the report), 2 refused existing results
    (clause on stderr), 1 above the budget; --out overrides out_dir."""
    toml = write_toml(tmp_path, factory)
    rc, out, _ = run_cli(["compress", str(toml), "--json"])
    rep = json.loads(out)
    assert rc == 0 and rep["status"] == "feasible"
    assert rep == json.loads((tmp_path / "out" / "report.json").read_text()) | {"seconds": rep["seconds"]}
    rc, out, err = run_cli(["compress", str(toml)])
    assert rc == 2 and "KMR.compress.outputs" in err and "{" not in out  # progress lines only
    rc, out, _ = run_cli(["compress", str(toml), "--overwrite"])
    assert rc == 0 and "feasible" in out
    tight = write_toml(tmp_path, factory, **{'budget_fraction = "2/3"': "budget = 0"})
    rc, _, _ = run_cli(["compress", str(tight), "--out", str(tmp_path / "o2")])
    assert rc == 1 and json.loads((tmp_path / "o2" / "report.json").read_text())["status"] != "feasible"


# --------------------------------------------------------------------------------------------
# Interrupts


@pytest.mark.parametrize("n", [2, 3, 4])
def test_interrupt_in_the_loop(n: int, tmp_path: Path) -> None:
    """KMR.compress.interrupt: a quality function raising KeyboardInterrupt on its n-th call ends
    the run with the last accepted model; report and model are still written."""
    calls = [0]

    def q(model: nn.Module) -> float:
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return 0.0

    rep = compress(mlp(), prune_cfg(budget_fraction="1/10"), quality=q, out_dir=tmp_path / "out")
    assert rep.status in (Status.INTERRUPTED, Status.FEASIBLE)
    report = check_outputs(rep, tmp_path / "out", mlp())
    assert report["status"] == rep.status.value
    acc = [r for r in rep.steps if r.accepted]
    assert np_nonzeros(rep.model) == rep.cost_final == (acc[-1].cost_after if acc else 92)
    assert len(acc) <= n - 2


def test_interrupt_between_phases(tmp_path: Path) -> None:
    """KMR.compress.interrupt: an interrupt during the second phase's initial measurement keeps the
    first phase's accepted model and outcome; the second phase is reported interrupted."""
    pruned_calls = [0]

    def q(model: nn.Module) -> float:
        if np_nonzeros(model) < 92:
            pruned_calls[0] += 1
            if pruned_calls[0] == 2:  # 1: phase 1 measures its proposal; 2: phase 2 starts
                raise KeyboardInterrupt
        return 0.0

    cfg = CompressConfig(phases=(PhaseConfig(PruneMethod(), ScheduledConfig(("1/4",))),
                                 PhaseConfig(QuantizeMethod(), ScheduledConfig((8,)))),
                         meter="composed_storage_bits", budget_fraction="1/10")
    rep = compress(mlp(), cfg, quality=q, out_dir=tmp_path / "out")
    assert rep.status is Status.INTERRUPTED
    assert [(p.name, p.status, p.steps) for p in rep.phases] == [
        ("prune", Status.POLICY_STOP, 1), ("quantize", Status.INTERRUPTED, 0)]
    assert np_nonzeros(rep.model) == 92 - 20
    assert rep.quality_initial == 0.0 and rep.quality_final == 0.0
    assert rep.cost_final == rep.steps[-1].cost_after == composed_storage_bits(rep.model)
    report = check_outputs(rep, tmp_path / "out", mlp())
    assert report["phases"][1]["status"] == "interrupted"


def test_cli_interrupt_exit_code(tmp_path: Path, factory: str) -> None:
    """KMR.compress.exit-code KMR.compress.interrupt: interrupted above the budget exits 130."""
    toml = write_toml(tmp_path, factory, **{":quality": ":interrupting_quality",
                                            'budget_fraction = "2/3"': 'budget_fraction = "1/100"'})
    rc, _, _ = run_cli(["compress", str(toml)])
    assert rc == 130
    assert json.loads((tmp_path / "out" / "report.json").read_text())["status"] == "interrupted"


def test_cli_user_code_error_exit_code(tmp_path: Path, factory: str) -> None:
    """KMR.compress.exit-code: an exception from the user's quality function exits 3 (not 1, which
    means "ended above the budget"), with the error on stderr; the streamed trace is kept."""
    toml = write_toml(tmp_path, factory, **{":quality": ":failing_quality"})
    rc, out, err = run_cli(["compress", str(toml), "--json"])
    assert rc == 3 and "RuntimeError: evaluation crashed" in err and out == ""
    assert (tmp_path / "out" / "trace.jsonl").exists()


# --------------------------------------------------------------------------------------------
# The shipped example


def test_digits_example_config() -> None:
    """KMR.compress.toml KMR.compress.phases KMR.compress.budget-units: the shipped example parses
    to prune-then-quantize at 12.5% (1/8) of composed storage bits, and every knob value and
    import path in it builds (a zero-step run on the untrained CNN, so no training here)."""
    from kmr_ref.examples import digits_factory

    cfg = load_config(ROOT / "kmr_ref" / "examples" / "compress_digits.toml")
    assert [p.method.method for p in cfg.phases] == ["prune", "quantize"]
    assert cfg.meter == "composed_storage_bits" and cfg.budget == "12.5%"
    rep = compress(digits_factory.cnn(), replace(cfg, max_steps=0))
    assert rep.status is Status.STEP_LIMIT and rep.budget == Fraction(1, 8) * rep.cost_initial
    assert 0.0 <= (rep.quality_initial or 0.0) <= 1.0
