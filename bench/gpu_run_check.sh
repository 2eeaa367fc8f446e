#!/usr/bin/env bash
# Whole training runs with CUDA graphs (issue 6), at most ~6.5 minutes on an H100: does
# `compile: true` with `compile_mode: reduce-overhead` train as the eager run does, through the
# evaluation and checkpoints of every epoch and each epoch's last, shorter batch, and how long does
# an epoch take then?
#
# ViT-S/4 at 32 px (a Table 1 CIFAR-size run), batch 256, fused AdamW, bf16 autocast, on a
# CIFAR-10 in the official pickle format written here with random pixels (the machine has no
# datasets; tests/fixtures/formats.py): 10,000 training images, so 39 full batches and one of 16
# per epoch, and 1,000 test images. Pretrain and supervised each run eagerly and with CUDA graphs
# from the same seed: the same initial weights and batches, so their per-epoch training losses
# must agree to bf16 rounding, not just land near each other. torch's recompile log goes to the
# graph runs' logs. Everything lands in $OUT (default ./gpu-run-check-out): summary.txt (the
# comparison table), runs.tar.gz (each run's log, config.yaml, history.csv, metrics.json).
#
#   PYTHONPATH=. bash bench/gpu_run_check.sh              # on the GPU machine, from the repo root
#   bash bench/gpu_run_check.sh --device cpu              # dry run: tiny model, compile not applied
set -uo pipefail

DEVICE=cuda
if [[ "${1:-}" == "--device" ]]; then DEVICE="$2"; fi
OUT="${OUT:-gpu-run-check-out}"
mkdir -p "$OUT"
export PYTHONPATH=".:tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
[[ -x .venv/bin/python && "$DEVICE" == cpu ]] && PY=.venv/bin/python

if [[ "$DEVICE" == cuda ]]; then
  # caps in seconds: eager run, pretrain with graphs, supervised with graphs (a graph takes
  # 25-30 s to compile on the lent H100's CPU; each run compiles its two batch shapes)
  T_EAGER=45; T_PRETRAIN=150; T_SUPERVISED=110
  N_TRAIN=10000; N_TEST=1000; EPOCHS=4
  MODEL=()
else
  T_EAGER=120; T_PRETRAIN=120; T_SUPERVISED=120
  N_TRAIN=300; N_TEST=40; EPOCHS=2
  MODEL=(--set model.embed_dim=36 --set model.depth=1 --set model.num_heads=3)
fi

start=$(date +%s)
summary() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
"$PY" -c 'import torch; print("torch", torch.__version__,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")' >> "$OUT/summary.txt"

DATA="$OUT/data"
"$PY" -c "from pathlib import Path; from fixtures.formats import write_cifar
write_cifar(Path('$DATA/cifar10'), 10, $N_TRAIN, $N_TEST)"
summary "CIFAR-10 pickles with random pixels: exit $? ($N_TRAIN train, $N_TEST test images)"

CONFIG="$OUT/run.yaml"
cat > "$CONFIG" <<EOF
device: $DEVICE
data: {name: cifar10, root: $DATA, workers: 0}
model: {backbone: vit_small}
optim: {epochs: $EPOCHS, batch_size: 256}
EOF
RUNS="$OUT/runs"
rm -rf "$RUNS" && mkdir -p "$RUNS"
GRAPHS=(--set compile=true --set compile_mode=reduce-overhead)
# run MODE NAME CAP [ARGS...]: one training run into $RUNS/NAME, its log beside it
run() {
  local mode=$1 name=$2 cap=$3; shift 3
  env ${TORCH_LOGS_RUN:+TORCH_LOGS=$TORCH_LOGS_RUN} timeout -k 5 "$cap" "$PY" -m relvit.cli "$mode" \
    --config "$CONFIG" --out "$RUNS/$name" --no-progress "${MODEL[@]}" "$@" \
    > "$RUNS/$name.log" 2>&1
  summary "$mode $name: exit $? (124: cut at its $cap s cap)"
}
run pretrain pretrain-eager "$T_EAGER"
TORCH_LOGS_RUN=recompiles run pretrain pretrain-graphs "$T_PRETRAIN" "${GRAPHS[@]}"
run supervised supervised-eager "$T_EAGER"
TORCH_LOGS_RUN=recompiles run supervised supervised-graphs "$T_SUPERVISED" "${GRAPHS[@]}"

"$PY" bench/compare_runs.py "$RUNS" pretrain-eager pretrain-graphs supervised-eager \
  supervised-graphs >> "$OUT/summary.txt" 2>&1
summary "comparison: exit $?"
(cd "$RUNS" && tar -czf ../runs.tar.gz --exclude='*.pt' .)
rm -rf "$RUNS" "$DATA"
summary "done"
