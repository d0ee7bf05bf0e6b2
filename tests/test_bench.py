"""``kmr bench``: a tiny-size smoke run of the JSON contract (no timing assertions:
KMR.meter.informative — wall time is reported, never judged by a test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kmr_ref.bench.models import layer_shapes, make_tensors, parse_size
from kmr_ref.cli import main


def test_parse_size() -> None:
    assert parse_size("10M") == 10_000_000 and parse_size("100m") == 100_000_000
    assert parse_size("2.5k") == 2500 and parse_size("12345") == 12345
    for bad in ("", "-3", "1.5", "ten", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize("size", [1, 7, 1000, 12_345, 10**6 + 3])
def test_model_has_exactly_size_parameters(size: int) -> None:
    shapes = layer_shapes(size)
    assert sum(r * c for r, c in shapes) == size
    if size <= 12_345:
        ts = make_tensors(size)
        assert [tuple(t.shape) for t in ts] == shapes
        assert all(t.dtype.is_floating_point and t.element_size() == 4 for t in ts)


def test_bench_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    """The contract: {"device", "threads", "cases": [{"name", "size", "ours_s", "peer_s", "copy_s",
    "speedup", "vs_copy", "peak_extra_bytes", "model_bytes", "agree"}]} with both case names."""
    size = 20_000
    assert main(["bench", "--json", "--size", "20k", "--repeats", "2", "--threads", "1"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"device", "threads", "cases"} <= rep.keys()
    assert rep["threads"] == 1 and rep["device"] == "cpu"
    assert [c["name"] for c in rep["cases"]] == ["global_prune", "quant_per_channel"]
    for c in rep["cases"]:
        for key in ("name", "size", "ours_s", "peer_s", "copy_s", "speedup", "vs_copy",
                    "peak_extra_bytes", "model_bytes", "agree"):
            assert key in c, key
        assert c["size"] == size and c["model_bytes"] == 4 * size
        assert min(c["ours_s"], c["peer_s"], c["copy_s"]) > 0
        assert c["speedup"] == pytest.approx(c["peer_s"] / c["ours_s"], rel=1e-12)
        assert c["vs_copy"] == pytest.approx(c["ours_s"] / c["copy_s"], rel=1e-12)
        assert isinstance(c["agree"], bool) and c["agree"] == (c["mismatches"] == 0)
        assert isinstance(c["peak_extra_bytes"], int)
        for impl in ("ours", "peer", "copy"):
            raw = c["raw"][impl]
            assert len(raw["times"]) == 2
            assert raw["result_bytes"] >= 0
        assert c["copy_into_s"] > 0 and c["ours_1t_s"] > 0
        assert "quiet" not in c and rep["load"] == 0
        # the honest-baseline labels: threads, the workers ours chose at each of its calls, the load
        assert c["threads"] == 1 and c["workers"] == [1, 1]
        assert len(c["loadavg"]) == 3 and c["copy_into_bandwidth_bytes_per_s"] > 0
        assert "ours_compiled_s" not in c and rep["compile"] is False
    prune, quant = rep["cases"]
    # torch's topk may break ties differently; on this seeded Gaussian model there are none at the
    # boundary, and the quantization arithmetic is the same IEEE operations as torch's fake-quant
    assert prune["agree"] and quant["agree"]
    # ours keeps exactly the pruned copies (all tensors change at sparsity 7/10); torch keeps the
    # new weights and their float masks
    assert prune["raw"]["ours"]["result_bytes"] == 4 * size
    assert prune["raw"]["peer"]["result_bytes"] == 8 * size


def test_bench_load_and_baseline(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``--load K``: each case carries ``quiet`` and ``loaded`` timings (ours_s, peer_s, copy_s) and
    the busy processes are gone afterwards; ``--baseline DIR`` times older kernels beside ours."""
    import shutil

    import kmr_ref.kernels as kernels

    src = Path(kernels.__file__).parent
    for name in ("prune_select.py", "quant_fused.py"):
        shutil.copy(src / name, tmp_path / name)
    assert main(["bench", "--json", "--size", "5k", "--repeats", "1", "--threads", "1", "--load", "1",
                 "--baseline", str(tmp_path), "--case", "quant_per_channel"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["load"] == 1 and rep["loadavg_loaded"] is not None
    (c,) = rep["cases"]
    for phase in ("quiet", "loaded"):
        for key in ("ours_s", "peer_s", "copy_s", "copy_into_s", "baseline_s"):
            assert c[phase][key] > 0, (phase, key)
    assert c["quiet"]["ours_s"] == c["ours_s"] and c["baseline_s"] > 0
    assert c["growth_vs_copy"] == pytest.approx(c["growth"]["ours"] / c["growth"]["copy"])
    assert isinstance(c["load_goal_met"], bool)


def test_busy_load_stops_on_error() -> None:
    """The busy processes stop when the measured block raises (as on Ctrl-C)."""
    from kmr_ref.bench.runner import busy_load

    with pytest.raises(KeyboardInterrupt), busy_load(2) as procs:
        assert all(p.poll() is None for p in procs)
        raise KeyboardInterrupt
    assert all(p.poll() is not None for p in procs)


@pytest.mark.slow
def test_bench_compile_reports_compile_apart(capsys: pytest.CaptureFixture[str]) -> None:
    """``--compile``: the quantization case also times the ``torch.compile``d quantize pass; its
    steady state (``ours_compiled_s``) and its warm-up with the compile (``compile_s``) are apart,
    and the compiled results agree with torch's fake-quant as ours do (0 entries differ)."""
    import shutil

    if shutil.which("cc") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    assert main(["bench", "--json", "--size", "5k", "--repeats", "2", "--threads", "1", "--compile",
                 "--case", "quant_per_channel"]) == 0
    rep = json.loads(capsys.readouterr().out)
    (c,) = rep["cases"]
    assert rep["compile"] is True and c["agree"]
    assert len(c["raw"]["ours_compiled"]["times"]) == 2
    assert c["ours_compiled_s"] > 0 and c["compile_s"] > c["ours_compiled_s"]
    assert c["vs_copy_compiled"] == pytest.approx(c["ours_compiled_s"] / c["copy_s"])


def test_every_timed_call_starts_from_released_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaved timing returns the allocator's free memory to the OS before each timed call
    on CPU (every implementation's results on fresh pages, whichever ran before it), and glibc's
    malloc_trim is really found and called here."""
    from kmr_ref.bench import worker

    assert worker.release_free_memory() is True  # glibc on this platform
    calls: list[int] = []
    real = worker.release_free_memory

    def counted() -> bool:
        calls.append(1)
        return real()

    monkeypatch.setattr(worker, "release_free_memory", counted)
    out = worker.interleave("quant_per_channel", ["ours", "copy"], 4096, 3, 1, "cpu")
    assert len(calls) == 3 * 2 and all(len(v) == 3 for v in out["times"].values())
    assert all(len(v) == 3 and min(v) >= 0 for v in out["system_s"].values())
