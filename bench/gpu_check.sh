#!/usr/bin/env bash
# One-shot GPU check of issue 6 (fast paths and speed), under 7 minutes on an H100:
#   (a) the device-parametrised equality tests (fused vs plain relation loss, CPU vs CUDA jitter);
#   (b) the benchmark at ViT-S/4 32 px and ViT-S/16 224 px, batch 256, bf16 autocast, fused AdamW:
#       input stages, train steps (supervised / pretrain plain / pretrain fused), MFU, memory;
#   (c) the train steps again with torch.compile, each size under its own time cap, and at 224 px
#       with channels-last inputs and weights (eager).
# Everything lands in $OUT (default ./gpu-check-out): summary.txt, tests.txt, bench.{txt,json},
# compile.txt (both compile runs and the channels-last run), compile32.json, compile224.json,
# channels_last.json. The caps add up to 400 s; a part that hits its cap is cut short (exit 124)
# and the rows it finished are still in its .txt (stderr lines).
#
#   PYTHONPATH=. bash bench/gpu_check.sh                 # on the GPU machine, from the repo root
#   bash bench/gpu_check.sh --device cpu                 # dry run of every code path, tiny sizes
set -uo pipefail

DEVICE=cuda
if [[ "${1:-}" == "--device" ]]; then DEVICE="$2"; fi
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
[[ -x .venv/bin/python && "$DEVICE" == cpu ]] && PY=.venv/bin/python

if [[ "$DEVICE" == cuda ]]; then
  # caps in seconds: tests, eager bench, compile per size (H100 budget: 7 minutes in all)
  T_TESTS=60; T_BENCH=150; T_COMPILE=75; T_CL=40
  BENCH=(--device cuda --workers 8)
  COMPILE=(--device cuda --only steps --compile --steps 15)
else  # tiny sizes: checks that every path runs, not how fast
  T_TESTS=120; T_BENCH=300; T_COMPILE=240; T_CL=120
  BENCH=(--device cpu --batch 4 --embed-dim 36 --depth 1 --num-heads 3 --steps 1 --warmup 0
         --pipeline-batch 8 --decode-images 16 --reference-images 2 --memory-batch 8
         --memory-dim 36 --repeats 1)
  COMPILE=("${BENCH[@]}" --only steps --compile)
fi

start=$(date +%s)
summary() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
"$PY" -c 'import sys, torch, torchvision, timm
print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision",
      torchvision.__version__, "timm", timm.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"{p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")' \
  >> "$OUT/summary.txt" 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm \
  --format=csv >> "$OUT/summary.txt" 2>&1

timeout -k 5 "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider tests/test_fast_paths.py \
  > "$OUT/tests.txt" 2>&1
summary "tests: exit $? ($(tail -n 1 "$OUT/tests.txt"))"

timeout -k 5 "$T_BENCH" "$PY" bench/bench_relvit.py "${BENCH[@]}" --json "$OUT/bench.json" \
  > "$OUT/bench.txt" 2>&1
summary "bench (eager): exit $? (124: cut at its ${T_BENCH} s cap)"

: > "$OUT/compile.txt"
for size in 32 224; do
  timeout -k 5 "$T_COMPILE" "$PY" bench/bench_relvit.py "${COMPILE[@]}" --sizes "$size" \
    --json "$OUT/compile$size.json" >> "$OUT/compile.txt" 2>&1
  summary "bench (torch.compile, ${size} px): exit $? (124: cut at its ${T_COMPILE} s cap)"
done
timeout -k 5 "$T_CL" "$PY" bench/bench_relvit.py "${COMPILE[@]/--compile/--channels-last}" \
  --sizes 224 --json "$OUT/channels_last.json" >> "$OUT/compile.txt" 2>&1
summary "bench (channels-last, eager, 224 px): exit $?"
summary "done"
