"""A greedy step costs O(changed layers): path copies (KMR.rule.path-copy), one analysis per model
object in a policy call (KMR.rule.analysis-scope), incremental nonzero meters (KMR.meter.delta),
reuse of the policy's T(M, k, v) by Algorithm 1 (KMR.rule.reuse), the ladder past flat rungs
(KMR.policy.ladder-advance), and the ``greedy_scaling`` bench case (informative: no timing is
asserted, KMR.meter.informative)."""

from __future__ import annotations

import copy
import json
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kmr_ref.core import CostMeter, GreedyPolicy, KMRResult, KMRTriple, Proposal, QualityMeter, ScheduledPolicy
from kmr_ref.core.budgeted import budgeted_kmr
from kmr_ref.core.meters import derivation
from kmr_ref.core.policy import ladder_candidates
from kmr_ref.core.rules import analysis_scope, current_scope, reusing
from kmr_ref.methods.meters import NonzeroCounter, nonzero_count, nonzero_meter
from kmr_ref.methods.modules import _shallow, clone_tree
from kmr_ref.methods.pruning import MagnitudePruning, nonzero_prunable, prunable_nonzero_meter
from kmr_ref.methods.training import state_bytes


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class Net(nn.Module):
    """Nested blocks, a weight tied between two modules, a module object reachable at two paths,
    a Conv1d, a BatchNorm (buffers) and a LayerNorm (a non-prunable parameter)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.Sequential(Block(6), nn.ReLU(), Block(6))
        self.shared = nn.Linear(6, 6)
        self.again = nn.Sequential(self.shared, nn.LayerNorm(6))  # self.shared reachable twice
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm1d(2)
        self.head = nn.Linear(6, 3)
        self.tail = nn.Linear(3, 6)
        self.tail.weight = nn.Parameter(self.head.weight.detach().t().contiguous())
        self.head2 = nn.Linear(6, 3, bias=False)
        self.head2.weight = self.head.weight  # tied: one tensor, two holders

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.again(self.shared(self.blocks(x)))
        c = self.bn(self.conv(h.unsqueeze(1))).mean(1)
        return self.head(c) + self.head2(h)


def _meter_fn(m: CostMeter[nn.Module]) -> NonzeroCounter:
    assert isinstance(m.fn, NonzeroCounter)
    return m.fn


steps_st = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 3)), min_size=1, max_size=10)


@settings(max_examples=20)
@given(seed=st.integers(0, 3), steps=steps_st)
def test_incremental_meters_equal_full_recount(seed: int, steps: list[tuple[int, int, int]]) -> None:
    """KMR.meter.delta, KMR.rule.analysis-scope: inside one scope, random step sequences (global and
    per-tensor knobs, each step applied to the latest model or to an earlier one, so siblings and
    chains of records both occur) measured by the incremental nonzero meters give exactly the full
    recounts (nonzero_prunable, nonzero_count) of the same models; the incremental path is taken."""
    m0 = Net(seed)
    rule = MagnitudePruning.for_model(m0)
    knobs = [k.name for k in rule.knobs()]
    pm, am = prunable_nonzero_meter(), nonzero_meter()
    models = [m0]
    with analysis_scope():
        for ki, si, back in steps:
            parent = models[max(0, len(models) - 1 - back)]
            out = rule.apply(parent, knobs[ki % len(knobs)], Fraction(si, 20))
            models.append(out)
            assert pm(out) == nonzero_prunable(out)
            assert am(out) == nonzero_count(out)
            assert pm(parent) == nonzero_prunable(parent) and am(parent) == nonzero_count(parent)
    assert _meter_fn(pm).incremental >= 1 and _meter_fn(am).incremental >= 1
    for m in models:  # outside the scope: full counts
        assert pm(m) == nonzero_prunable(m) and am(m) == nonzero_count(m)


def test_delta_record_of_the_pruning_rule() -> None:
    """KMR.meter.delta: the rule records its output's parent and the names it replaced (a tied
    tensor at its first name); a value that prunes nothing new records no name; outside a scope the
    meters count in full (the incremental counter is not used)."""
    m = Net(0)
    rule = MagnitudePruning.for_model(m)
    out = rule.apply(m, "sparsity@head.weight", Fraction(1, 2))
    assert derivation(out) == (m, frozenset({"head.weight"}))
    same = rule.apply(m, "sparsity@head.weight", 0)
    assert derivation(same) == (m, frozenset())
    g = rule.apply(m, "sparsity", Fraction(1, 2))
    d = derivation(g)
    assert d is not None and d[0] is m and d[1] == {n for n, _ in rule.targets(m)}
    pm = prunable_nonzero_meter()
    assert pm(out) == nonzero_prunable(out) and _meter_fn(pm).incremental == 0


def test_path_copy() -> None:
    """KMR.rule.path-copy, KMR.rule.no-mutation: only the modules on the paths to the changed
    parameter's holders are new objects (root included); every other module is shared; tied
    weights stay tied; a module reachable twice stays one object; the input is untouched."""
    m = Net(1)
    before = state_bytes(m)
    ids = [id(x) for x in m.modules()]
    rule = MagnitudePruning.for_model(m)
    out = rule.apply(m, "sparsity@head.weight", Fraction(1, 2))
    assert out is not m and out.head is not m.head and out.head2 is not m.head2
    assert out.head.weight is out.head2.weight and out.head.weight is not m.head.weight
    assert out.blocks is m.blocks and out.again is m.again and out.conv is m.conv and out.tail is m.tail
    assert out.head.bias is m.head.bias
    assert state_bytes(m) == before and [id(x) for x in m.modules()] == ids
    # a module reachable twice: both paths lead to the one copy
    o2 = rule.apply(m, "sparsity@shared.weight", Fraction(1, 2))
    assert o2.shared is o2.again[0] and o2.shared is not m.shared and o2.again is not m.again
    assert o2.again[1] is m.again[1] and o2.blocks is m.blocks
    assert int(torch.count_nonzero(o2.shared.weight)) == 18 and state_bytes(m) == before
    # nested: root -> blocks -> blocks[2] -> b copied, blocks[0] shared
    o3 = rule.apply(m, "sparsity@blocks.2.b.weight", Fraction(1, 4))
    assert o3.blocks is not m.blocks and o3.blocks[2] is not m.blocks[2] and o3.blocks[2].b is not m.blocks[2].b
    assert o3.blocks[0] is m.blocks[0] and o3.blocks[2].a is m.blocks[2].a
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    ref = clone_tree(m)  # the full-copy reference: same tensors, so equal outputs
    ref.head.weight = nn.Parameter(out.head.weight.detach())
    ref.head2.weight = ref.head.weight
    with torch.no_grad():
        assert torch.equal(out.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("make", [lambda: nn.Linear(3, 2), lambda: nn.Conv2d(1, 2, 3), lambda: nn.BatchNorm1d(3),
                                  lambda: nn.Sequential(nn.Linear(2, 2), nn.ReLU()), lambda: nn.LayerNorm(4),
                                  lambda: nn.MultiheadAttention(4, 2), lambda: Block(3)])
def test_shallow_copy_equals_copy_copy(make: object) -> None:
    """KMR.rule.path-copy: the fast shallow copy of a module holds exactly what copy.copy gives
    (same class, same keys, the same attribute objects)."""
    m = make()  # type: ignore[operator]
    a, b = _shallow(m), copy.copy(m)
    assert type(a) is type(b) is type(m) and a is not m
    assert a.__dict__.keys() == b.__dict__.keys()
    assert all(a.__dict__[k] is b.__dict__[k] for k in a.__dict__)


def _quality(x: torch.Tensor, ref: torch.Tensor) -> QualityMeter[nn.Module]:
    def q(model: nn.Module) -> float:
        with torch.no_grad():
            return -float(((clone_tree(model).eval()(x) - ref) ** 2).mean())
    return QualityMeter("neg_mse", q)


def _jsonl(res: KMRResult[nn.Module]) -> bytes:
    return b"".join(json.dumps(r.to_json(), sort_keys=True).encode() + b"\n" for r in res.trace)


def test_greedy_trace_identical_with_and_without_reuse() -> None:
    """KMR.rule.reuse, KMR.rule.analysis-scope, KMR.meter.delta, KMR.policy.greedy: on a torch
    model with a quality meter, greedy over the per-tensor ladder writes byte-identical JSONL
    records with the reusing wrapper and without it; replaying its proposals through the plain rule
    and the plain full-count meter (no scope, no records used) gives the same records again; and
    every accepted step is the brute-force greedy choice among the ladder's candidates measured
    in full, outside any scope."""
    m0 = Net(2)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = clone_tree(m0).eval()(x)
    qm = _quality(x, ref)
    rule = MagnitudePruning.for_model(m0)
    names = [f"sparsity@{n}" for n in rule.tensor_names]
    budget = nonzero_prunable(m0) * 2 // 5
    inner = MagnitudePruning.for_model(m0)
    wrapped = reusing(inner)
    runs = []
    for r in (wrapped, rule):
        tri = KMRTriple("prune", r, prunable_nonzero_meter(), qm)
        runs.append(budgeted_kmr(m0, tri, GreedyPolicy(ladder_candidates(names)), budget, 12))
    a, b = runs
    assert len(a.trace) >= 5 and _jsonl(a) == _jsonl(b) and a.status == b.status
    assert wrapped.reused == len(a.trace) and wrapped.held <= 1
    plain = KMRTriple("prune", MagnitudePruning.for_model(m0), CostMeter("nz", nonzero_prunable), qm)
    sched = ScheduledPolicy[nn.Module](tuple(Proposal(r.knob, r.value) for r in a.trace))
    replay = budgeted_kmr(m0, plain, sched, budget, 12)
    assert _jsonl(replay) == _jsonl(a)
    # brute force at every state, outside any scope, full counts
    cur, hist = m0, []
    for rec in a.trace:
        assert current_scope() is None
        c, q = nonzero_prunable(cur), qm(cur)
        rows = []
        for i, p in enumerate(ladder_candidates(names)(_state(cur, c, q, plain, tuple(hist)))):
            v = Fraction(p.value)
            while v <= 1:  # KMR.policy.ladder-advance: up the grid (step 1/20) to the first lowering rung
                m2 = plain.rule.apply(cur, p.knob, v)
                c2 = nonzero_prunable(m2)
                if c2 < c:
                    rows.append(((Fraction(qm(m2)) - Fraction(q)) / (c - c2), c - c2, -i, Proposal(p.knob, v), m2))
                    break
                v += Fraction(1, 20)
        best = max(rows, key=lambda r: r[:3])
        assert (best[3].knob, best[3].value) == (rec.knob, rec.value)
        cur = best[4]
        hist.append(rec)


def _state(model: nn.Module, c: int, q: float, tri: KMRTriple[nn.Module], hist: tuple[object, ...]) -> object:
    from kmr_ref.core.policy import PolicyState

    return PolicyState(model, c, q, len(hist), 0, tri, hist)  # type: ignore[arg-type]


def _sparse_mlp(frac_zero: Fraction) -> nn.Sequential:
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for lin in (m[0], m[2], m[4]):
            w = lin.weight.reshape(-1)
            k = (frac_zero.numerator * w.numel()) // frac_zero.denominator
            w[torch.argsort(w.abs(), stable=True)[:k]] = 0.0
    return m


def test_ladder_advances_on_an_already_sparse_model() -> None:
    """KMR.policy.ladder-advance, KMR.alg1.strict-progress: a model already 90% sparse in every
    tensor: the rungs 1/20 .. 18/20 prune nothing new, so the bare ladder stops after 0 steps
    (policy-stop), while greedy over the ladder proposes 19/20 and reaches the budget, every step
    strictly lowering cost."""
    m = _sparse_mlp(Fraction(9, 10))
    rule = MagnitudePruning.for_model(m)
    names = [f"sparsity@{n}" for n in rule.tensor_names]
    tri = KMRTriple("prune", reusing(rule), prunable_nonzero_meter())
    c0 = nonzero_prunable(m)
    assert c0 == 26 + 26 + 7  # 256 - 230, 256 - 230, 64 - 57
    lad = ladder_candidates(names)
    bare = budgeted_kmr(m, tri, GreedyPolicy(lambda s: lad(s)), c0 - 20, 10)
    assert bare.status.value == "policy-stop" and bare.accepted_steps == 0
    res = budgeted_kmr(m, tri, GreedyPolicy(lad), c0 - 20, 10)
    assert res.status.value == "feasible" and res.accepted_steps >= 1
    assert res.trace[0].value == Fraction(19, 20)
    assert all(r.accepted and r.cost_after < r.cost_before for r in res.trace)


def test_greedy_scaling_case_fields() -> None:
    """The bench case (informative, KMR.meter.informative): per L the fields ``layers`` and
    ``step_s`` and the ratio of the largest L's step to the smallest's; nothing about speed is
    asserted."""
    from kmr_ref.bench.greedy import greedy_scaling, mlp, table

    assert len(list(mlp(3).modules())) == 7
    case = greedy_scaling(layers=(2, 4), steps=2, rounds=1)
    assert case["name"] == "greedy_scaling" and [p["layers"] for p in case["points"]] == [2, 4]
    assert all(p["step_s"] > 0 and len(p["times"]) == 1 for p in case["points"])
    assert case["ratio"] == pytest.approx(case["points"][1]["step_s"] / case["points"][0]["step_s"], rel=1e-12)
    assert isinstance(case["goal_met"], bool) and case["goal"] == 5.0 and case["threads"] == 1
    assert table(case).row_count == 2


def test_bench_cli_greedy_case(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``kmr bench --case greedy_scaling --json``: the case in the report's cases (shrunk here to
    L = 2, 3 so the test stays quick; the bench's own L are 50 and 200)."""
    from kmr_ref.bench import greedy
    from kmr_ref.cli import main

    assert greedy.LAYERS == (50, 200)
    monkeypatch.setattr(greedy, "LAYERS", (2, 3))
    monkeypatch.setattr(greedy, "ROUNDS", 1)
    assert main(["bench", "--case", "greedy_scaling", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    (c,) = rep["cases"]
    assert c["name"] == "greedy_scaling" and [p["layers"] for p in c["points"]] == [2, 3]
    assert {"layers", "step_s"} <= c["points"][0].keys() and "ratio" in c
    assert main(["bench", "--case", "greedy_scaling"]) == 0
    assert "greedy_scaling" in capsys.readouterr().out
