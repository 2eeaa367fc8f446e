#!/usr/bin/env bash
# Follow-up of bench/gpu_check.sh in what is left of a lease (at most 6 minutes on an H100):
#   (a) the compiled CUDA tests, which now also check that compiled code ran, and the bench test
#       that counting FLOPs and ops leaves compiled functions compiled (under torch 2.11 it did
#       not: the compiled steps timed after the count ran their jitter and loss eagerly);
#   (b) the eager train steps and the relation head + loss stage (chunk budgets, head width);
#   (c) the compiled train steps at 224 px (torch.compile's default mode) and at 32 px with
#       CUDA graphs (--compile-mode reduce-overhead), with torch's recompile log.
# Everything lands in $OUT (default ./gpu-check-out): summary.txt, tests.txt, bench.{txt,json},
# compile{224,32}.{txt,json}.
#
#   PYTHONPATH=. bash bench/gpu_recheck.sh
set -uo pipefail
source "$(dirname "$0")/gpu_common.sh"

timeout -k 5 50 "$PY" -m pytest -q -p no:cacheprovider -rfE --tb=short \
  tests/test_fast_paths.py tests/test_bench.py -k "cuda and compiled or compiled_functions" \
  > "$OUT/tests.txt" 2>&1
summary "tests: exit $? ($(tail -n 1 "$OUT/tests.txt"))"
timeout -k 5 60 "$PY" bench/bench_relvit.py --device cuda --only steps memory --steps 15 \
  --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
ended 60 "eager steps + relation head"
TORCH_LOGS=recompiles timeout -k 5 120 "$PY" bench/bench_relvit.py --device cuda --only steps \
  --compile --sizes 224 --steps 20 --json "$OUT/compile224.json" > "$OUT/compile224.txt" 2>&1
ended 120 "compiled steps, 224 px"
TORCH_LOGS=recompiles timeout -k 5 110 "$PY" bench/bench_relvit.py --device cuda --only steps \
  --compile --compile-mode reduce-overhead --sizes 32 --steps 20 \
  --json "$OUT/compile32.json" > "$OUT/compile32.txt" 2>&1
ended 110 "compiled steps (CUDA graphs), 32 px"
