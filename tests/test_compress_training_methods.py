"""KMR.compress.training-methods KMR.compress.training-artifacts: LoRA, early exit and embedding
distillation as `kmr compress` methods (TOML and Python), their runs reloaded through
kmr_ref.load and `kmr eval`, and bad knobs refused before anything runs, the caller's model untouched."""

from __future__ import annotations

import tomllib
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn

import kmr_ref
from kmr_ref.cli import main as kmr_main
from kmr_ref.compress import CompressConfig, PhaseConfig, ScheduledConfig, compress
from kmr_ref.compress.artifacts import LoadError, module_changes
from kmr_ref.compress.config import (
    ConfigError,
    DistillMethod,
    EarlyExitMethod,
    EmbeddingDistillMethod,
    LoRAMethod,
)
from kmr_ref.examples import digits, shifted_digits
from kmr_ref.methods.early_exit import EarlyExit
from kmr_ref.methods.lora import LoRALinear
from kmr_ref.methods.meters import parameter_count
from kmr_ref.methods.training import state_bytes

STEPS = 20  # the contract, not the accuracy

LORA_TOML = f"""
model = "kmr_ref.examples.digits_factory:trained_cnn"
quality = "kmr_ref.examples.shifted_digits:val_accuracy"
meter = "trained_params"
budget_fraction = "1/10"
[[phases]]
method = "lora"
steps = {STEPS}
policy = {{ type = "scheduled", values = [8, 4] }}
"""

EXIT_TOML = f"""
model = "kmr_ref.examples.digits_factory:trained_cnn"
quality = "kmr_ref.examples.digits_factory:val_accuracy"
example_input = "kmr_ref.examples.shifted_digits:digits_val_inputs"
meter = "expected_macs"
budget_fraction = "1/2"
[[phases]]
method = "early-exit"
positions = [1, 4]
steps = {STEPS}
policy = {{ type = "scheduled", values = ["9/10", "7/10", "1/2", "3/10"] }}
"""


def _cfg(text: str, **over: object) -> CompressConfig:
    d = tomllib.loads(text)
    for k, v in over.items():
        if k.startswith("phase_"):
            d["phases"][0][k[6:]] = v
        else:
            d[k] = v
    return CompressConfig.from_dict(d)


def _eval_rc(run: Path) -> int:
    return kmr_main(["eval", str(run), "--json"])


def test_lora_from_toml_saves_and_reloads(tmp_path: Path) -> None:
    """KMR.compress.training-methods (lora, trained_params), KMR.compress.training-artifacts (lora)."""
    cfg = _cfg(LORA_TOML)
    m0 = digits.pretrained()
    before = state_bytes(m0)
    rep = compress(m0, cfg, quality=shifted_digits.val_accuracy, out_dir=tmp_path)
    assert state_bytes(m0) == before and not any(isinstance(m, LoRALinear) for m in m0.modules())
    assert rep.status.value == "feasible"
    # KMR.lora.cost-meter: 38 282 for full fine-tuning, 650 r for rank r on the digits CNN
    assert (rep.cost_initial, rep.cost_final) == (38282, 2600)
    back = kmr_ref.load(tmp_path)  # the factory of the TOML
    assert state_bytes(back) == state_bytes(rep.model)
    assert [n for n, m in back.named_modules() if isinstance(m, LoRALinear)] == ["6", "8"]
    x = shifted_digits.load(0).val.x[:32]
    with torch.no_grad():
        assert torch.equal(back(x), rep.model(x))
    assert _eval_rc(tmp_path) == 0


def test_early_exit_from_python_saves_and_reloads(tmp_path: Path) -> None:
    """KMR.compress.training-methods (early-exit, expected_macs), KMR.compress.training-artifacts (early-exit)."""
    cfg = CompressConfig(
        phases=[PhaseConfig(EarlyExitMethod(positions=[1, 4], steps=STEPS),
                            ScheduledConfig(["9/10", "7/10", "1/2", "3/10"]))],
        meter="expected_macs", budget_fraction="1/2", model="kmr_ref.examples.digits_factory:trained_cnn",
        quality="kmr_ref.examples.digits_factory:val_accuracy",
        example_input="kmr_ref.examples.shifted_digits:digits_val_inputs")
    m0 = digits.pretrained()
    before = state_bytes(m0)
    rep = compress(m0, cfg, out_dir=tmp_path)
    assert state_bytes(m0) == before
    assert rep.status.value == "feasible" and rep.cost_initial == 337536  # KMR.exit.macs: the CNN alone
    assert isinstance(rep.model, EarlyExit) and rep.model.threshold in (Fraction(1, 2), Fraction(3, 10))
    assert Fraction(rep.cost_final) <= Fraction(337536, 2)
    back = kmr_ref.load(tmp_path)
    assert isinstance(back, EarlyExit) and back.positions == (1, 4) and back.threshold == rep.model.threshold
    assert state_bytes(back) == state_bytes(rep.model)
    x = digits.load(0).val.x
    with torch.no_grad():
        assert torch.equal(back(x), rep.model(x))
    assert _eval_rc(tmp_path) == 0
    # the same config from TOML gives the same model bytes (KMR.rule.deterministic)
    rep2 = compress(digits.pretrained(), _cfg(EXIT_TOML))
    assert state_bytes(rep2.model) == state_bytes(rep.model)


class TinyEmbedder(nn.Module):
    """A small sentence embedder of the MiniLM shape (an embedding table, a layer list, mean
    pooling over the mask, L2 normalisation): the contract of KMR.distill.layers-knob ff. at test cost."""

    def __init__(self, layers: int = 4, d: int = 8, vocab: int = 20) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([nn.Linear(d, d) for _ in range(layers)])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        for b in self.blocks:
            h = h + torch.tanh(b(h))
        m = mask.to(h.dtype).unsqueeze(-1)
        return nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1.0), dim=1)


def tiny_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 20, (40, 6), generator=g)
    mask = torch.ones(40, 6, dtype=torch.int64)
    mask[::3, 4:] = 0
    return ids * mask, mask


def test_embedding_distillation_saves_and_reloads(tmp_path: Path) -> None:
    """KMR.compress.training-methods (embedding-distillation), KMR.compress.training-artifacts (truncate)."""
    m0 = TinyEmbedder()
    before = state_bytes(m0)
    cfg = CompressConfig(
        phases=[PhaseConfig(EmbeddingDistillMethod(steps=3, data="tests.test_compress_training_methods:tiny_inputs",
                                                   layers_path="blocks"), ScheduledConfig([2]))],
        meter="params", budget_fraction="9/10")
    rep = compress(m0, cfg, out_dir=tmp_path)
    assert state_bytes(m0) == before and len(m0.blocks) == 4
    assert rep.status.value == "feasible" and rep.cost_final == 20 * 8 + 2 * 72  # the table + 2 layers
    back = kmr_ref.load(tmp_path, model=TinyEmbedder())
    assert isinstance(back, TinyEmbedder) and len(back.blocks) == 2
    assert state_bytes(back) == state_bytes(rep.model)
    with pytest.raises(ConfigError, match=r"KMR\.compress\.policies.*not one of \[1, 2, 3, 4\]"):  # 5 > 4 layers
        compress(m0, CompressConfig(phases=[PhaseConfig(EmbeddingDistillMethod(
            data="tests.test_compress_training_methods:tiny_inputs", layers_path="blocks"), ScheduledConfig([5]))],
            meter="params", budget_fraction="9/10"))
    assert state_bytes(m0) == before


def test_a_lost_module_is_refused_not_rebuilt_wrong() -> None:
    """KMR.compress.training-artifacts: a module of M_0 the model lost without a recorded change."""
    base = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    ch, why = module_changes(nn.Sequential(base[0], base[1]), base)
    assert ch == [{"path": "", "kind": "truncate", "length": 2}] and why is None  # a prefix: recorded
    ch, why = module_changes(nn.Sequential(base[0], base[2]), base)  # child 1 is a Linear, M_0's a ReLU
    assert ch == [] and why is not None
    odd = nn.Sequential()
    odd.add_module("0", nn.Linear(2, 2))
    odd.add_module("2", nn.Linear(2, 2))
    ch, why = module_changes(odd, base)
    assert ch == [] and why is not None and "'1'" in why


BAD = [
    # (config text, overrides, clause the ConfigError names, text in the message)
    (LORA_TOML, {"phase_policy": {"type": "scheduled", "values": [0]}}, "KMR.compress.policies",
     "0 is outside [1, 64]"),  # r <= 0 (KMR.knob.domain-int)
    (LORA_TOML, {"phase_policy": {"type": "scheduled", "values": [-2]}}, "KMR.compress.policies",
     "-2 is outside [1, 64]"),
    (LORA_TOML, {"phase_targets": ["0"]}, "KMR.lora.targets", "'0'"),  # a Conv2d, not a Linear
    (LORA_TOML, {"phase_targets": ["nope"]}, "KMR.lora.targets", "'nope'"),
    (LORA_TOML, {"meter": "params"}, "KMR.compress.pairs", "adapter"),
    (EXIT_TOML, {"phase_positions": [1, 8]}, "KMR.exit.positions", "position 8 does not exist"),
    (EXIT_TOML, {"phase_positions": [4, 1]}, "KMR.exit.positions", "ascending"),
    (EXIT_TOML, {"phase_positions": [-1]}, "KMR.exit.positions", "phases[0].positions"),
    (EXIT_TOML, {"phase_policy": {"type": "scheduled", "values": ["3/2"]}}, "KMR.compress.policies",
     "3/2 is outside [0, 1]"),  # KMR.knob.domain-real
    (EXIT_TOML, {"meter": "storage_bits"}, "KMR.compress.pairs", "exit heads"),
    (EXIT_TOML, {"example_input": "kmr_ref.examples.shifted_digits:rotated_train"}, "KMR.compress.meters",
     "evaluation set"),
    (EXIT_TOML, {"phase_include": ["0.*"]}, "KMR.compress.config", "include"),
]


@pytest.mark.parametrize("text,over,clause,needle", BAD)
def test_bad_knobs_are_refused_before_anything_runs(tmp_path: Path, text: str, over: dict[str, object],
                                                    clause: str, needle: str) -> None:
    """KMR.compress.training-methods, KMR.exit.positions, KMR.lora.targets, KMR.knob.domain-int,
    KMR.compress.pairs, KMR.compress.meters: typed errors naming the clause; nothing written; M_0 untouched."""
    m0 = digits.pretrained()
    before = state_bytes(m0)
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as e:
        compress(m0, _cfg(text, **over), out_dir=out)
    assert e.value.clause == clause and needle in str(e.value), str(e.value)
    assert state_bytes(m0) == before and not out.exists()


def test_bad_methods_in_python() -> None:
    """KMR.compress.training-methods: tau <= 0, alpha outside [0, 1], steps, positions, targets; and
    a model that is not a backbone (KMR.exit.backbone) or has no layer list (KMR.distill.embedding-teacher)."""
    for bad in ({"temperature": 0}, {"temperature": -1}, {"alpha": "3/2"}, {"alpha": -0.5}):
        with pytest.raises(ConfigError, match=r"KMR\.compress\.methods"):
            DistillMethod(**bad)  # type: ignore[arg-type]
    for kw in ({"steps": 0}, {"seed": -1}, {"targets": []}, {"targets": "6"}):
        with pytest.raises(ConfigError, match=r"KMR\.compress\.methods"):
            LoRAMethod(**kw)  # type: ignore[arg-type]
    for pos in ((), (2, 2), (True,)):
        with pytest.raises(ConfigError, match=r"KMR\.exit\.positions"):
            EarlyExitMethod(positions=pos)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"KMR\.compress\.methods"):
        EmbeddingDistillMethod(layers_path="")
    m0 = TinyEmbedder()
    before = state_bytes(m0)
    exit_cfg = CompressConfig(phases=[PhaseConfig(EarlyExitMethod(), ScheduledConfig(["1/2"]))],
                              meter="expected_macs", budget_fraction="1/2")
    with pytest.raises(ConfigError) as e:
        compress(m0, exit_cfg, example_input=torch.zeros(2, 1, 8, 8))
    assert e.value.clause == "KMR.exit.backbone"
    emb_cfg = CompressConfig(phases=[PhaseConfig(EmbeddingDistillMethod(
        data="tests.test_compress_training_methods:tiny_inputs"), ScheduledConfig([1]))],
        meter="params", budget_fraction="1/2")
    with pytest.raises(ConfigError) as e:
        compress(m0, emb_cfg)  # no bert.encoder.layer
    assert e.value.clause == "KMR.distill.embedding-teacher"
    assert state_bytes(m0) == before
    assert parameter_count(m0) == 20 * 8 + 4 * 72


def test_load_refuses_a_refused_rebuild(tmp_path: Path) -> None:
    """KMR.compress.load with KMR.compress.training-artifacts: rebuild_refused is refused by load."""
    import json

    cfg = _cfg(LORA_TOML, phase_steps=1, phase_policy={"type": "scheduled", "values": [1]})
    compress(digits.pretrained(), cfg, out_dir=tmp_path)
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert [c["kind"] for c in man["modules"]] == ["lora", "lora"]
    man["rebuild_refused"] = "module '7' of M_0 is missing"
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(LoadError, match=r"KMR\.compress\.load"):
        kmr_ref.load(tmp_path)
