#!/usr/bin/env bash
# Whole training runs with CUDA graphs (issue 6), within 374 s (32 px), 524 s (64 px) or 504 s
# (224 px) of caps on a GPU, each run's kill grace and 40 s of fixed work counted (with --step
# 606, 766 or 736 s, so with --mode or --skip-graphs there): does `compile: true` with
# `compile_mode: reduce-overhead` train as the run without them does, through the evaluation
# and checkpoints of every epoch and each epoch's last, shorter batch, and how long does an
# epoch take then?
#
# ViT-S, batch 256, fused AdamW, bf16 autocast, on a CIFAR-10 in the official pickle format
# written here with random pixels (the machine has no datasets; tests/fixtures/formats.py).
# Pretrain and supervised each run twice from the same seed, so with the same initial weights and
# batches: their per-epoch training losses must agree to bf16 rounding, not just land near each
# other. torch's logs of recompiles, graph breaks and skipped CUDA graphs (`cudagraphs`,
# `perf_hints`) go to the compiled runs' logs.
#   --size 32 (default): ViT-S/4, a Table 1 CIFAR-size run; 10,000 training images (39 full
#     batches and one of 16 per epoch), 1,000 test images, 4 epochs; eager against CUDA graphs.
#   --size 64: ViT-S/8 on those images upscaled to 64 px (Tiny-ImageNet's run, N = 64 as at
#     32 px), otherwise as 32 px but for the baseline: compiled, as the paper tier runs it.
#   --size 224: ViT-S/16 on those images upscaled to 224 px; 5,000 training images (19 full
#     batches and one of 136), 500 test images, 3 epochs; compiled (torch.compile's default mode,
#     as the paper tier runs 224 px) against CUDA graphs.
#   --patch P: another ViT patch (dividing the size), e.g. 32 at 224 px: Table 1's
#     Flowers-102 and ImageNet runs (N = 49); ViT-S/16 at 224 px is the detection backbones'.
#   --step: a third run of each mode, CUDA graphs with `compile_step: true` (the step from its
#     draws to its loss, the batch's jitter, permutation and normalisation, the model and the
#     losses, compiled as one region, so that the graphs cover all of it), against the same
#     baseline (caps as the CUDA-graph runs').
#   --mode pretrain|supervised: that mode's runs only (default both): 224 px with --step takes
#     448 s (pretrain) and 328 s (supervised).
#   --skip-graphs: with --step, leave out the runs with CUDA graphs of the model alone: the
#     baseline against the step region only, so that both modes fit in one call (374, 524 and
#     504 s at 32, 64 and 224 px), and their pretrain / supervised ratios come from one call.
#   --budget S: on the GPU, refuse to start when the caps (plus 6 s a run for the kill grace
#     and start-up, and 40 s of fixed work) exceed S whole seconds (default and most 570,
#     inside a device call's 600 s): pass the device time left, less the machine's start, so
#     that the call is never cut by the session's end.
# Everything lands in $OUT (default ./gpu-run-check-out): summary.txt (the comparison table;
# with both modes also each pretrain run against the supervised run of its kind, their step-time
# and peak-memory ratios, and for ViT-S/4 at 32 px a CIFAR-10 row's hours at their rates),
# runs.tar.gz (each run's log, config.yaml, history.csv, metrics.json). Both comparison.txt
# (the pairs finished so far) and runs.tar.gz are rewritten after every run, so that a call
# cut at its time limit still returns what had finished. The data and the runs' checkpoints
# stay in a scratch folder. The exit status is 0 however the runs end: read summary.txt.
#
#   PYTHONPATH=. bash bench/gpu_run_check.sh [--size 32|64|224] [--patch P]
#                                            [--step [--skip-graphs]] [--mode M] [--budget S]
#   bash bench/gpu_run_check.sh --device cpu [--size 224] [--step]   # dry run: tiny, no compile
set -uo pipefail

DEVICE=cuda
SIZE=32
PATCH=""
STEP=0
GRAPHS_ALONE=1
BUDGET=570
CALL_LIMIT=570  # a device call's 600 s, less a margin (the default budget since it was added)
FIXED=40  # the versions line, the data, compare_runs.py's calls: an estimate, not measured
MODES=(pretrain supervised)
while (( $# )); do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --patch) PATCH="$2"; shift 2 ;;
    --step) STEP=1; shift ;;
    --skip-graphs) GRAPHS_ALONE=0; shift ;;
    --mode) MODES=("$2"); shift 2
      if [[ "${MODES[0]}" != pretrain && "${MODES[0]}" != supervised ]]; then
        echo "--mode: pretrain or supervised, not ${MODES[0]}" >&2; exit 2
      fi ;;
    *) echo "unknown argument: $1 (--device cuda|cpu, --size 32|64|224, --patch P, --step," \
         "--skip-graphs, --mode pretrain|supervised, --budget S)" >&2; exit 2 ;;
  esac
done
if ! [[ "$BUDGET" =~ ^[0-9]+$ ]]; then
  echo "--budget: whole seconds, not $BUDGET" >&2; exit 2
fi
BUDGET=$(( 10#$BUDGET ))  # 0380 is 380 (bash reads a leading 0 as octal)
if (( BUDGET > CALL_LIMIT )); then
  echo "--budget: $BUDGET s is over a device call's $CALL_LIMIT s: using $CALL_LIMIT" >&2
  BUDGET=$CALL_LIMIT
fi
if (( ! GRAPHS_ALONE && ! STEP )); then
  echo "--skip-graphs needs --step: without both kinds of CUDA-graph run only the baseline" \
    "would run" >&2; exit 2
fi
case "$SIZE" in
  32|64|224) ;;
  *) echo "--size: 32, 64 or 224, not $SIZE" >&2; exit 2 ;;
esac
# ViT-S/4 and /8 as the registry's 32- and 64-px datasets; /16 at 224 px, the detection backbones'
PATCH="${PATCH:-$(( SIZE == 224 ? 16 : SIZE / 8 ))}"
if ! [[ "$PATCH" =~ ^[1-9][0-9]*$ ]] || (( SIZE % PATCH )); then
  echo "--patch: a whole number dividing the size ($SIZE px), not $PATCH" >&2; exit 2
fi

# caps in seconds of the baseline and the CUDA-graph runs, pretrain and supervised (a graph
# takes 10-30 s to compile on the lent H100's CPU; a run compiled the model, the jitter and the
# loss chunks for both batch shapes until the twenty-third session, which runs the last, shorter
# batch eagerly: a 32-px pretrain run's first epoch took 76 s on the H100, 90 s on the H200,
# where the whole run took 116 s)
if [[ "$SIZE" == 32 ]]; then
  BASE=(); BASE_NAME=eager; BASE_LOGS=""; T_BASE=(45 45); T_GRAPHS=(130 90)
  N_TRAIN=10000; N_TEST=1000; EPOCHS=4
elif [[ "$SIZE" == 64 ]]; then  # compiled, as the paper tier runs Tiny-ImageNet
  BASE=(--set compile=true); BASE_NAME=compiled; BASE_LOGS=recompiles,graph_breaks
  T_BASE=(130 100); T_GRAPHS=(130 100)
  N_TRAIN=10000; N_TEST=1000; EPOCHS=4
else
  BASE=(--set compile=true); BASE_NAME=compiled; BASE_LOGS=recompiles,graph_breaks
  T_BASE=(130 90); T_GRAPHS=(130 90)
  N_TRAIN=5000; N_TEST=500; EPOCHS=3
fi
MODEL=()
if [[ "$DEVICE" != cuda ]]; then
  T_BASE=(120 120); T_GRAPHS=(120 120); N_TRAIN=300; N_TEST=40; EPOCHS=2
  MODEL=(--set model.embed_dim=36 --set model.depth=1 --set model.num_heads=3)
else  # the runs' caps, each with 6 s for its kill grace (timeout -k 5) and start-up
  TOTAL=$FIXED
  for mode in "${MODES[@]}"; do
    i=0; [[ "$mode" == supervised ]] && i=1
    TOTAL=$(( TOTAL + T_BASE[i] + T_GRAPHS[i] * (GRAPHS_ALONE + STEP)
              + 6 * (1 + GRAPHS_ALONE + STEP) ))
  done
  if (( TOTAL > BUDGET )); then
    echo "the runs' caps come to $TOTAL s (with $FIXED s of fixed work), over the budget of" \
      "$BUDGET s (--budget): run" \
      "fewer (--mode pretrain|supervised; with --step, --skip-graphs) or pass the device" \
      "time left" >&2
    exit 2
  fi
fi

# after the checks above, so that a refusal costs no Python start-up
DEFAULT_OUT=gpu-run-check-out EXTRA_PYTHONPATH=tests source "$(dirname "$0")/gpu_common.sh"

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/gpu-run-check.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
DATA="$SCRATCH/data"
"$PY" -c "from pathlib import Path; from fixtures.formats import write_cifar
write_cifar(Path('$DATA/cifar10'), 10, $N_TRAIN, $N_TEST)"
summary "CIFAR-10 pickles with random pixels: exit $? ($N_TRAIN train, $N_TEST test images;" \
  "ViT-S/$PATCH at $SIZE px)"

CONFIG="$OUT/run.yaml"
cat > "$CONFIG" <<EOF
device: $DEVICE
data: {name: cifar10, root: $DATA, workers: 0, image_size: $SIZE}
model: {backbone: vit_small, patch_size: $PATCH}
optim: {epochs: $EPOCHS, batch_size: 256}
EOF
RUNS="$SCRATCH/runs"
mkdir -p "$RUNS"
GRAPHS=(--set compile=true --set compile_mode=reduce-overhead)
COMPILED_LOGS=recompiles,graph_breaks,cudagraphs,perf_hints
PAIRS=()
# snapshot: the runs' files and the comparison of the pairs finished so far, in $OUT; each
# written beside and renamed, so that a call cut mid-write keeps the last whole one, and the
# archive first, so that a comparison comes with its runs' files
snapshot() {
  tar -czf "$OUT/.runs.tar.gz.part" -C "$RUNS" --exclude='*.pt' . \
    && mv "$OUT/.runs.tar.gz.part" "$OUT/runs.tar.gz"
  if (( ${#PAIRS[@]} )); then
    "$PY" bench/compare_runs.py "$RUNS" "${PAIRS[@]}" > "$OUT/.comparison.txt.part" 2>&1
    mv "$OUT/.comparison.txt.part" "$OUT/comparison.txt"
  fi
}
# run MODE NAME CAP [ARGS...]: one training run into $RUNS/NAME, its log beside it
run() {
  local mode=$1 name=$2 cap=$3; shift 3
  env ${TORCH_LOGS_RUN:+TORCH_LOGS=$TORCH_LOGS_RUN} timeout -k 5 "$cap" "$PY" -m relvit.cli "$mode" \
    --config "$CONFIG" --out "$RUNS/$name" --no-progress "${MODEL[@]}" "$@" \
    > "$RUNS/$name.log" 2>&1
  ended "$cap" "$mode $name"
  snapshot
}
for mode in "${MODES[@]}"; do
  i=0; [[ "$mode" == supervised ]] && i=1  # its caps' index
  TORCH_LOGS_RUN=$BASE_LOGS run "$mode" "$mode-$BASE_NAME" "${T_BASE[$i]}" "${BASE[@]}"
  if (( GRAPHS_ALONE )); then
    PAIRS+=("$mode-$BASE_NAME" "$mode-graphs")
    TORCH_LOGS_RUN=$COMPILED_LOGS run "$mode" "$mode-graphs" "${T_GRAPHS[$i]}" "${GRAPHS[@]}"
  fi
  if (( STEP )); then
    PAIRS+=("$mode-$BASE_NAME" "$mode-graphs-step")
    # and the decision's pair: the step region against the graphs of the model alone
    (( GRAPHS_ALONE )) && PAIRS+=("$mode-graphs" "$mode-graphs-step")
    TORCH_LOGS_RUN=$COMPILED_LOGS run "$mode" "$mode-graphs-step" "${T_GRAPHS[$i]}" \
      "${GRAPHS[@]}" --set compile_step=true
  fi
done

# with both modes: each pretrain run against the supervised run of its kind (the 1.10x target)
ACROSS=()
if (( ${#MODES[@]} == 2 )); then
  for kind in "$BASE_NAME" $( (( GRAPHS_ALONE )) && echo graphs) \
              $( (( STEP )) && echo graphs-step); do
    ACROSS+=(--across "pretrain-$kind" "supervised-$kind")
  done
  # a CIFAR-10 row's hours at those rates, for its own ViT-S/4 at 32 px only
  [[ "$SIZE" == 32 && "$PATCH" == 4 ]] && ACROSS+=(--project)
fi
"$PY" bench/compare_runs.py "$RUNS" "${PAIRS[@]}" "${ACROSS[@]}" >> "$OUT/summary.txt" 2>&1
summary "comparison: exit $?"
rm -f "$OUT/comparison.txt"  # in summary.txt now
summary "done"
