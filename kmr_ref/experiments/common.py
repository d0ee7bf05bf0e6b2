"""What every experiment shares: the digits test bed, counted meters and rules, and writing the
three outputs (markdown, PNG, JSON)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kmr_ref.core.exact import Exact
from kmr_ref.core.knobs import Knob, KnobValue
from kmr_ref.core.meters import CostMeter, QualityMeter
from kmr_ref.core.rules import KMRTriple, Rule
from kmr_ref.core.trace import json_value
from kmr_ref.examples import digits

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


@dataclass
class Counts:
    """How much work a run did: rule applications and meter evaluations."""

    rule: int = 0
    cost: int = 0
    quality: int = 0

    def to_json(self) -> dict[str, int]:
        return {"rule_applications": self.rule, "cost_evaluations": self.cost, "quality_evaluations": self.quality}


@dataclass
class CountedRule:
    """A rule that counts its applications (the counted rule is the same rule: same outputs)."""

    inner: Rule[nn.Module]
    counts: Counts = field(default_factory=Counts)

    def knobs(self) -> Sequence[Knob]:
        return self.inner.knobs()

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        self.counts.rule += 1
        return self.inner.apply(model, knob, value)


def counted_triple(name: str, rule: Rule[nn.Module], cost: CostMeter[nn.Module],
                   quality: QualityMeter[nn.Module]) -> tuple[KMRTriple[nn.Module], Counts]:
    """The triple with every rule application and meter evaluation counted."""
    counted = CountedRule(rule)
    n = counted.counts

    def c(m: nn.Module) -> Exact:
        n.cost += 1
        return cost(m)

    def q(m: nn.Module) -> float:
        n.quality += 1
        return quality(m)

    return KMRTriple(name, counted, CostMeter(cost.name, c, cost.unit), QualityMeter(quality.name, q)), n


@dataclass(frozen=True)
class Digits:
    """The digits test bed: shipped weights (``digits.pretrained``), validation split for the
    policies, test split for the report."""

    model: nn.Module
    data: digits.Digits

    def val(self) -> QualityMeter[nn.Module]:
        return digits.accuracy_meter(self.data.val)

    def test_accuracy(self, m: nn.Module) -> float:
        return digits.accuracy(m, self.data.test)


def digits_bed() -> Digits:
    torch.use_deterministic_algorithms(True)
    return Digits(digits.pretrained(), digits.load(digits.PRETRAINED_SEED))


def fmt_exact(x: Exact) -> str:
    """An exact number for a table: an integer as is, a fraction as a decimal to 1 place."""
    if isinstance(x, int) or (isinstance(x, Fraction) and x.denominator == 1):
        return str(int(x))
    return f"{float(x):.1f}"


def machine() -> dict[str, Any]:
    """Where the timings in a JSON were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_at_start": load, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def write_outputs(out: Path, name: str, markdown: str, payload: dict[str, Any], figure: Any) -> list[Path]:
    """``name.md`` (no timings), ``name.png`` and ``name.json``; each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.md", out / f"{name}.json", out / f"{name}.png"]
    _atomic(paths[0], markdown.encode())
    _atomic(paths[1], (json.dumps(payload, indent=1, default=json_value) + "\n").encode())
    tmp = paths[2].with_name(f".{paths[2].name}.tmp")
    figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    os.replace(tmp, paths[2])
    return paths


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    right = right or [True] * len(header)
    sep = ["---:" if r else "---" for r in right]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# MiniLM (``--model minilm``): the second test bed, outside the default test run


MODELS = ("digits", "minilm")
# the FFN matrices of the six encoder layers (2/3 of the encoder's weights): per-layer policies see
# 12 knobs, not 36, so that a greedy step costs 12 quality evaluations (~1.5 s each, quiet CPU)
MINILM_FFN = tuple(f"bert.encoder.layer.{i}.{part}.dense.weight" for i in range(6)
                   for part in ("intermediate", "output"))


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown test bed {model!r}; one of {', '.join(MODELS)}")


@dataclass(frozen=True)
class CoarseGrid:
    """The same rule with a coarser policy grid on its real knobs (``KMR.knob.domain-real``:
    the grid is what policies enumerate; the domain and the rule's outputs are unchanged)."""

    inner: Rule[nn.Module]
    step: Fraction

    def knobs(self) -> Sequence[Knob]:
        from dataclasses import replace

        from kmr_ref.core.knobs import RealInterval

        return [replace(k, domain=replace(k.domain, step=self.step)) if isinstance(k.domain, RealInterval) else k
                for k in self.inner.knobs()]

    def apply(self, model: nn.Module, knob: str, value: KnobValue) -> nn.Module:
        return self.inner.apply(model, knob, value)
