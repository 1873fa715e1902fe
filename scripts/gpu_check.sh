#!/usr/bin/env bash
# The GPU check of issue 16: `fwbench check --device cuda` and a quick GPU run of mlp, lenet and
# lstm on torch, jax and flax, on a machine with one NVIDIA GPU, its own PyTorch, JAX, Flax,
# optax and NumPy 2 (no TensorFlow, no MindSpore) and NO internet.
#
# 1. Here, on a machine with PyPI (once):     bash scripts/gpu_check.sh prepare
#    writes .gpu/ (ignored through .git/info/exclude; about 40 MiB):
#      .gpu/wheels/    the pure-Python wheels the GPU image lacks or has too old for fwbench
#                      (pip download, CPython 3.12 x86-64): pooch, platformdirs (missing
#                      there), typer 0.29 with pydantic, pydantic-core, annotated-types,
#                      typing-inspection and typing-extensions (typer 0.29 needs them)
#      .gpu/datasets/  mnist/ and imdb/ copied from FWBENCH_DATA_DIR (the quick profile's data)
# 2. On the GPU machine (the device tool: run with carry [".gpu"], timeout_s 600):
#                                              bash scripts/gpu_check.sh
#    fwbench goes in with `pip install --no-deps`, beside the machine's own frameworks;
#    the results come back in $OUT (at most 8 files).
#
# Budget (one H200 lease: 10 minutes a command, 15 minutes in all, a start is 1-2 minutes):
# install ~20 s; check: 3 probe processes x 3 tasks on the shipped sample, ~1-2 min (imports
# and XLA compilation dominate); run: 3 tasks x 3 backends x 2 processes (the training run +
# 1 timing-only repeat: --repeats 1) = 18 worker processes at ~5-15 s each (import, IMDB
# tokenisation once, one epoch on the GPU), ~4 min. Every step has its own `timeout`, and
# the whole script stops itself at 560 s, inside the 600 s of one call, so what it found
# still comes back. If it runs out of time: drop --repeats to 0, or lstm.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
    set -e
    data="${FWBENCH_DATA_DIR:-../shared/datasets}"
    mkdir -p .gpu/wheels .gpu/datasets
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .gpu/wheels \
        pooch==1.9.0 platformdirs==4.14.9 typer==0.29.2 pydantic==2.14.4 pydantic_core==2.50.5 \
        annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
    cp -r "$data/mnist" "$data/imdb" .gpu/datasets/
    rm -f .gpu/datasets/imdb/aclImdb_v1.tar.gz  # the labelled CSV is enough (and smaller)
    du -sh .gpu
    exit 0
fi

OUT="${OUT:-/tmp/gpu-check-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FWBENCH_DATA_DIR="$PWD/.gpu/datasets" FWBENCH_CACHE_DIR=/tmp/fwbench-cache
deadline=$((SECONDS + 560))
left() { echo $((deadline - SECONDS)); }
fw() { python3 -m fwbench.harness.cli "$@"; }

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,mig.mode.current --format=csv || true
python3 -c 'import sys, numpy, torch, jax; print(sys.version.split()[0], "numpy", numpy.__version__, "torch", torch.__version__, torch.version.cuda, torch.cuda.is_available(), "jax", jax.__version__, jax.devices())' || true

echo "== install (no network: carried wheels, fwbench --no-deps)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site  # the workers inherit it
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
fw env --json > "$OUT/env.json" 2>&1 || true
fw list 2>&1 | grep -E "^ *(torch|jax|flax) " || true

echo "== fwbench check --device cuda"
timeout "$(( $(left) < 200 ? $(left) : 200 ))" python3 -m fwbench.harness.cli check --device cuda \
    --backends torch,jax,flax --tasks mlp,lenet,lstm 2>&1 | tee "$OUT/check.txt"
check=${PIPESTATUS[0]}

echo "== fwbench run --device cuda (quick, 1 epoch, 2 processes per cell)"
timeout "$(left)" python3 -m fwbench.harness.cli run --device cuda --profile quick --repeats 1 \
    --backends torch,jax,flax --tasks mlp,lenet,lstm --timeout 150 --allow-busy \
    --out /tmp/gpu-run 2>&1 | tee "$OUT/run.txt"
run=${PIPESTATUS[0]}

echo "== report"
fw report /tmp/gpu-run --out /tmp/gpu-run > /dev/null 2>&1
for f in results.jsonl run.json report.md report.html; do cp /tmp/gpu-run/$f "$OUT/" 2>/dev/null; done
tar czf "$OUT/logs.tar.gz" -C /tmp/gpu-run logs 2>/dev/null
python3 - <<'EOF' 2>&1 | tee -a "$OUT/run.txt"
from pathlib import Path
from fwbench.harness import records
run = records.load_run(Path("/tmp/gpu-run"))
c = run.meta.calibration
print("idle baseline:", c.idle_w if c else None, "W,", c.idle_source if c else None, c.idle_reason if c else None)
for r in run.records:
    g, m, a, u = r.gpu, r.device_memory, r.allocator_memory, r.gpu_utilization
    print(f"{r.task:6} {r.backend:5} r{r.repeat} {r.status:8} {r.device} | {g.name if g else None} "
          f"drv {g.driver if g else None} cuda {g.cuda if g else None} cudnn {g.cudnn if g else None} "
          f"| step {r.step_time_ms.p50} ms first {r.first_step_s} s | alloc {a.peak_mib if a else None} "
          f"MiB | nvml proc {m.process_peak_mib if m else None} dev {m.device_used_peak_mib if m else None} "
          f"MiB | util {u.gpu_pct_mean if u else None}% | {r.energy_j} J, {r.energy_j_per_sample} J/sample "
          f"| gemm {r.device_gemm.get('gflops')} GFLOP/s, {r.pct_of_gemm_peak} % | hw {r.hardware.id if r.hardware else None}"
          + (f" | {r.error}" if r.error else ""))
EOF
sed -n '/^## mlp/,/^## lstm/p' /tmp/gpu-run/report.md 2>/dev/null | head -40
echo "== check exit $check, run exit $run"
