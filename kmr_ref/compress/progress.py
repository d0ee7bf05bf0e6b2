"""The live display of a run (``KMR.compress.progress``, informative): a line per trace record
as it happens and a bar over the step limit N, with rich."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kmr_ref.compress.config import decimal
from kmr_ref.core.exact import Exact
from kmr_ref.core.trace import StepRecord

if TYPE_CHECKING:
    from kmr_ref.compress.run import CompressReport


def step_line(phase: str, r: StepRecord, unit: str, replayed: bool = False) -> str:
    """One record for humans: t, phase: knob = value, cost, quality, accepted (decimals)."""
    q = "" if r.quality is None else f"  quality {r.quality:.4f}"
    verdict = "accepted" if r.accepted else f"rejected ({r.reason})"
    tag = "  (replayed)" if replayed else ""
    return f"t={r.t:<3d} {phase}: {r.knob} = {decimal(r.value)}  cost {decimal(r.cost_after)} {unit}{q}  {verdict}{tag}"


class RichProgress:
    """``KMR.compress.progress``: prints to ``console`` (the CLI passes stderr with ``--json``)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.bar: Progress | None = None
        self.task: int | None = None
        self.unit = ""

    def measuring(self) -> None:
        self.console.print("kmr compress: measuring the initial cost and quality ...", markup=False,
                           highlight=False, soft_wrap=True)

    def started(self, *, meter: str, unit: str, budget: Exact, cost: Exact, quality: float | None,
                max_steps: int, resumed: int) -> None:
        self.unit = unit
        q = "" if quality is None else f", quality {quality:.4f}"
        share = f" ({decimal(100 * budget / cost, 4)}% of it)" if cost else ""
        self.console.print(f"initial {meter}: {decimal(cost)} {unit}{q}; budget {decimal(budget)} {unit}{share}; "
                           f"at most {max_steps} steps" + (f"; resuming after {resumed} records" if resumed else ""),
                           markup=False, highlight=False, soft_wrap=True)
        self.bar = Progress(TextColumn("steps"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=self.console, transient=False)
        self.task = self.bar.add_task("steps", total=max_steps)
        self.bar.start()

    def step(self, phase: str, record: StepRecord, replayed: bool) -> None:
        con = self.bar.console if self.bar is not None else self.console
        con.print(step_line(phase, record, self.unit, replayed), markup=False, highlight=False, soft_wrap=True)
        if record.accepted and self.bar is not None and self.task is not None:
            self.bar.advance(self.task)  # type: ignore[arg-type]

    def loading(self, what: str) -> None:
        self.console.print(f"kmr compress: loading {what} ...", markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def finished(self, report: CompressReport) -> None:
        self.close()
        q0 = "" if report.quality_initial is None else f" (quality {report.quality_initial:.4f})"
        q1 = "" if report.quality_final is None else f" (quality {report.quality_final:.4f})"
        self.console.print("phases: " + ", ".join(f"{p.name} -> {p.status.value}" for p in report.phases),
                           markup=False, highlight=False, soft_wrap=True)
        u = report.unit
        self.console.print(f"status {report.status.value}: cost {decimal(report.cost_initial)} {u}{q0} -> "
                           f"{decimal(report.cost_final)} {u}{q1}, budget {decimal(report.budget)} {u}; "
                           f"{report.seconds:.1f} s", markup=False, highlight=False, soft_wrap=True)
        where = (f"written to {report.out_dir}" if report.out_dir is not None
                 else "nothing written (no --out, no out_dir)")
        self.console.print(where, markup=False, highlight=False, soft_wrap=True)
