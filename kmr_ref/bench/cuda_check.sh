#!/usr/bin/env bash
# The prepared CUDA check of issue 13, for a session that has a CUDA GPU (none was available when
# this was written: the CUDA path is tested only by tests that skip without a device, and unmeasured).
#
#   bash kmr_ref/bench/cuda_check.sh            # from the repository root; results under $OUT
#
# It needs a Python with a CUDA build of torch (>= 2.4), hypothesis, pytest, numpy and rich, and
# the repository on PYTHONPATH (set below). Budget: about 6 minutes on an H100/H200 (each step has
# its own timeout, so one slow step cannot eat the others' time). It writes:
#   $OUT/env.txt                 GPU name, memory clock, bus width, torch and CUDA versions
#   $OUT/tests.txt               the bit-equality tests on CUDA (tests/test_kernels.py, cuda + device cases)
#   $OUT/bench-cuda-100M.json    kmr bench --device cuda --size 100M --compile (bandwidth_fraction per case)
#   $OUT/summary.txt             one line per case: ours / compiled / peer / copy times, fraction of HBM peak
# Goal (issue 13): bandwidth_fraction >= 0.70 on an H100/H200, results bit-equal to the reference.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-/tmp/kmr-cuda-check}
SIZE=${SIZE:-100M}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="$OUT/inductor-cache"

{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>&1 || true
  "$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: nothing to check"
p = torch.cuda.get_device_properties(0)
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", p.name,
      "memory_clock_rate_khz", getattr(p, "memory_clock_rate", None), "bus_bits", getattr(p, "memory_bus_width", None))
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
grep -q "no CUDA device" "$OUT/env.txt" && exit 2

# 1. the same Hypothesis bit-equality tests, now on CUDA (they skip without a device)
HYPOTHESIS_PROFILE=ci timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py \
  -k "cuda or matches_rule" > "$OUT/tests.txt" 2>&1
echo "tests rc=$?" | tee -a "$OUT/tests.txt"
tail -3 "$OUT/tests.txt"

# 2. the bench on CUDA: eager and torch.compile'd (Triton) quantize, prune, copies; fraction of HBM peak
timeout 420 "$PY" -c "import sys; from kmr_ref.cli import main; sys.exit(main(sys.argv[1:]))" \
  bench --json --device cuda --size "$SIZE" --repeats 5 --compile > "$OUT/bench-cuda-$SIZE.json" 2> "$OUT/bench.err"
echo "bench rc=$?"

"$PY" - "$OUT/bench-cuda-$SIZE.json" > "$OUT/summary.txt" <<'EOF'
import json, sys
rep = json.load(open(sys.argv[1]))
print(f"device {rep['device_name']}, peak {rep['peak_bandwidth_bytes_per_s'] or 0:.3e} B/s, torch {rep['torch']}")
for c in rep["cases"]:
    frac = c["bandwidth_fraction"]
    comp = c.get("ours_compiled_s")
    print(f"{c['name']}: ours {c['ours_s']:.4f} s, compiled {comp if comp is None else round(comp, 4)} s "
          f"(compile {c.get('compile_s')}), peer {c['peer_s']:.4f} s, copy {c['copy_s']:.4f} s, "
          f"copy-into {c['copy_into_s']:.4f} s, agree {c['agree']}, "
          f"HBM fraction ours {frac if frac is None else round(frac, 3)}, "
          f"copy-into {c['copy_into_bandwidth_fraction'] and round(c['copy_into_bandwidth_fraction'], 3)}, "
          f"compiled {frac and comp and round(frac * c['ours_s'] / comp, 3)}")
EOF
cat "$OUT/summary.txt"
