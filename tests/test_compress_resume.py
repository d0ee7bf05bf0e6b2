"""KMR.compress.resume: kill -9 at random moments (seeded) and ``--resume`` give the model bytes,
trace and report of an uninterrupted run; torn records, other configs and other weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

from kmr_ref.compress import CompressConfig, ConfigError, compress, load_config, load_model
from kmr_ref.core.trace import Status

ROOT = Path(__file__).resolve().parent.parent
MOD = "kmr_resume_test_factory"

FACTORY = '''
import time
import torch
from torch import nn
def build():
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m
X = torch.linspace(-1, 1, 60).reshape(10, 6)
REF = build()(X).detach()
def quality(model):
    time.sleep(0.01)  # a real quality function takes time: kills land inside the run
    return -float(((model(X) - REF) ** 2).mean())
'''

# a greedy phase (20 records, its policy needs the history to resume) then a scheduled one (4)
TOML = f'''
model = "{MOD}:build"
quality = "{MOD}:quality"
meter = "composed_storage_bits"
budget = "25%"
max_steps = 100

[[phases]]
method = "prune"
policy = {{ type = "greedy", knobs = ["sparsity@4.weight"] }}

[[phases]]
method = "quantize"
policy = {{ type = "scheduled", values = [8, 6, 4, 3] }}
'''


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, CompressConfig, dict[str, Any]]:
    (tmp_path / f"{MOD}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MOD, raising=False)
    toml = tmp_path / "cfg.toml"
    toml.write_text(textwrap.dedent(TOML))
    cfg = load_config(toml)
    ref_dir = tmp_path / "ref"
    rep = compress(load_model(cfg), cfg, out_dir=ref_dir)
    assert rep.status is Status.FEASIBLE and len(rep.steps) == 24  # 20 prune + 4 quantize records
    return toml, cfg, {"dir": ref_dir, "model": (ref_dir / "model.safetensors").read_bytes(),
                       "steps": rep.step_json(), "phases": json.loads((ref_dir / "report.json").read_text())["phases"]}


def same_as_ref(out: Path, ref: dict[str, Any]) -> None:
    assert (out / "model.safetensors").read_bytes() == ref["model"]
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == ref["steps"] and report["phases"] == ref["phases"]
    lines = [json.loads(s) for s in (out / "trace.jsonl").read_text().splitlines()]
    assert lines == ref["steps"]


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def start(toml: Path, out: Path, tmp_path: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "kmr_ref", "compress", str(toml), "--out", str(out), "--json",
                             *extra], cwd=tmp_path, env=env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def kill_when_header(p: subprocess.Popen[bytes], out: Path, delay: float) -> None:
    """SIGKILL ``p`` ``delay`` seconds after its run header appears."""
    t0 = time.monotonic()
    while not (out / "run.json").exists() and p.poll() is None and time.monotonic() - t0 < 60:
        time.sleep(0.005)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()


def test_kill_9_then_resume_is_bit_identical(setup: Any, tmp_path: Path) -> None:
    """KMR.compress.resume: three runs SIGKILLed at seeded random moments (from the header's
    appearance: inside the run, or after it), then resumed: model.safetensors, the trace and the
    phases equal the uninterrupted run's. (The three start together: startup dominates.)"""
    toml, cfg, ref = setup
    rng = random.Random(7)
    delays = [rng.uniform(0.0, 1.0) for _ in range(3)]  # the run takes ~0.7 s after its header
    procs = []
    for i, delay in enumerate(delays):
        out = tmp_path / f"killed{i}"
        procs.append((out, delay, start(toml, out, tmp_path, [])))
    due: dict[int, float] = {}
    t0 = time.monotonic()
    while len(due) < len(procs) or any(p.poll() is None for _, _, p in procs):
        now = time.monotonic()
        for i, (out, delay, p) in enumerate(procs):
            if i not in due and ((out / "run.json").exists() or p.poll() is not None or now - t0 > 60):
                due[i] = now + delay
            if i in due and now >= due[i] and p.poll() is None:
                p.send_signal(signal.SIGKILL)
        time.sleep(0.002)
    kept = []
    for out, _, _ in procs:
        kept.append(len((out / "trace.jsonl").read_text().splitlines()) if (out / "trace.jsonl").exists() else 0)
        rep = compress(load_model(cfg), cfg, out_dir=out, resume=True)
        assert rep.resumed_steps == kept[-1]
        same_as_ref(out, ref)
    assert any(0 < k < 24 for k in kept), kept  # at least one kill landed inside the run


def test_kill_twice_and_resume_from_the_cli(setup: Any, tmp_path: Path) -> None:
    """KMR.compress.resume KMR.compress.exit-code: a run killed, resumed by `kmr compress --resume
    DIR` (config from run.json) and killed again, resumes again: exit 0, the same bytes."""
    toml, _, ref = setup
    out = tmp_path / "twice"
    kill_when_header(start(toml, out, tmp_path, []), out, 0.2)
    p = subprocess.Popen([sys.executable, "-m", "kmr_ref", "compress", "--resume", str(out), "--json"],
                         cwd=tmp_path, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True)
    before = (out / "trace.jsonl").stat().st_size
    t0 = time.monotonic()
    while (out / "trace.jsonl").stat().st_size == before and p.poll() is None and time.monotonic() - t0 < 60:
        time.sleep(0.005)  # the resumed run has appended a record: kill it there
    p.send_signal(signal.SIGKILL)
    p.wait()
    from tests.test_compress import run_cli

    rc, stdout, _ = run_cli(["compress", "--resume", str(out), "--json"])
    assert rc == 0 and json.loads(stdout)["status"] == "feasible"
    same_as_ref(out, ref)


def test_every_cut_point_resumes_identically(setup: Any, tmp_path: Path) -> None:
    """KMR.compress.resume: a run cut after any number k of records (the trace's first k lines,
    results deleted) resumes to the same result: the greedy phase's ladder and the scheduled
    phase's position are restored, phases that ended keep their status."""
    _, cfg, ref = setup
    lines = (ref["dir"] / "trace.jsonl").read_text().splitlines(keepends=True)
    header = (ref["dir"] / "run.json").read_text()
    for k in (None, 0, 1, 7, 19, 20, 21, 23, 24):  # None: killed before trace.jsonl existed
        out = tmp_path / f"cut{k}"
        out.mkdir()
        (out / "run.json").write_text(header)
        if k is not None:
            (out / "trace.jsonl").write_text("".join(lines[:k]))
        rep = compress(load_model(cfg), cfg, out_dir=out, resume=True)
        assert rep.resumed_steps == (k or 0)
        same_as_ref(out, ref)


def test_torn_last_record_is_dropped(setup: Any, tmp_path: Path) -> None:
    """KMR.compress.resume: a last line without its newline is not a record (dropped, cut off the
    file); a damaged complete line is refused."""
    _, cfg, ref = setup
    lines = (ref["dir"] / "trace.jsonl").read_text().splitlines(keepends=True)
    out = tmp_path / "torn"
    out.mkdir()
    (out / "run.json").write_text((ref["dir"] / "run.json").read_text())
    (out / "trace.jsonl").write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    rep = compress(load_model(cfg), cfg, out_dir=out, resume=True)
    assert rep.resumed_steps == 5
    same_as_ref(out, ref)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text((ref["dir"] / "run.json").read_text())
    (bad / "trace.jsonl").write_text("".join(lines[:2]) + '{"t": 2, "knob"\n' + lines[3])
    with pytest.raises(ConfigError) as e:
        compress(load_model(cfg), cfg, out_dir=bad, resume=True)
    assert e.value.clause == "KMR.compress.resume" and "line 3" in e.value.message
    gap = tmp_path / "gap"
    gap.mkdir()
    (gap / "run.json").write_text((ref["dir"] / "run.json").read_text())
    (gap / "trace.jsonl").write_text(lines[0] + lines[2])  # t = 0, then t = 2
    with pytest.raises(ConfigError) as e:
        compress(load_model(cfg), cfg, out_dir=gap, resume=True)
    assert e.value.clause == "KMR.compress.resume"


def test_replay_that_disagrees_is_refused(setup: Any, tmp_path: Path) -> None:
    """KMR.compress.resume: a record whose cost the replay does not reproduce is refused."""
    _, cfg, ref = setup
    recs = [json.loads(x) for x in (ref["dir"] / "trace.jsonl").read_text().splitlines()]
    out = tmp_path / "lie"
    out.mkdir()
    (out / "run.json").write_text((ref["dir"] / "run.json").read_text())
    recs[2]["cost"] += 1
    (out / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:3]) + '{"t": 3')
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError) as e:
        compress(load_model(cfg), cfg, out_dir=out, resume=True)
    assert e.value.clause == "KMR.compress.resume" and "t=2" in e.value.message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # refused before any file changes


def test_other_config_or_weights_refused(setup: Any, tmp_path: Path) -> None:
    """KMR.compress.resume: resuming with another config, other weights or another spec version
    is refused, and nothing in the folder changes."""
    _, cfg, ref = setup
    d = ref["dir"]
    files = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(ConfigError) as e:
        compress(load_model(cfg), replace(cfg, budget="30%"), out_dir=d, resume=True)
    assert e.value.clause == "KMR.compress.resume" and "config differs" in e.value.message
    other = load_model(cfg)
    w = other[0].weight
    with __import__("torch").no_grad():
        w[0, 0] += 1.0
    with pytest.raises(ConfigError) as e:
        compress(other, cfg, out_dir=d, resume=True)
    assert e.value.clause == "KMR.compress.resume" and "weights differ" in e.value.message
    hdr = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**hdr, "kmr_spec": "0.0.9"}))
    with pytest.raises(ConfigError) as e:
        compress(load_model(cfg), cfg, out_dir=d, resume=True)
    assert e.value.clause == "KMR.compress.resume" and "0.0.9" in e.value.message
    (d / "run.json").write_bytes(files["run.json"])
    assert {p.name: p.read_bytes() for p in d.iterdir()} == files
    # the weights file is hashed by content, so the same weights from another path are the same run
    save_file(load_model(cfg).state_dict(), str(tmp_path / "w.safetensors"))
    same = replace(cfg, weights=tmp_path / "w.safetensors")
    assert same.digest() == cfg.digest()


def test_resume_without_header_starts_afresh(setup: Any, tmp_path: Path) -> None:
    """KMR.compress.resume: a folder killed before run.json existed runs from the start."""
    _, cfg, ref = setup
    out = tmp_path / "early"
    out.mkdir()
    rep = compress(load_model(cfg), cfg, out_dir=out, resume=True)
    assert rep.resumed_steps == 0
    same_as_ref(out, ref)
    with pytest.raises(ConfigError) as e:
        compress(load_model(cfg), replace(cfg, out_dir=None), resume=True)
    assert e.value.clause == "KMR.compress.resume"


def test_cli_resume_with_another_config_exits_2(setup: Any, tmp_path: Path) -> None:
    """KMR.compress.resume KMR.compress.exit-code: `kmr compress OTHER.toml --resume DIR` is
    refused with exit 2 naming the clause; a folder with no header and no config also exits 2."""
    from tests.test_compress import run_cli

    toml, _, ref = setup
    other = tmp_path / "other.toml"
    other.write_text(toml.read_text().replace('budget = "25%"', 'budget = "20%"'))
    rc, _, err = run_cli(["compress", str(other), "--resume", str(ref["dir"]), "--json"])
    assert rc == 2 and "KMR.compress.resume" in err and "config differs" in err
    (tmp_path / "bare").mkdir()
    rc, _, err = run_cli(["compress", "--resume", str(tmp_path / "bare"), "--json"])
    assert rc == 2 and "KMR.compress.resume" in err
