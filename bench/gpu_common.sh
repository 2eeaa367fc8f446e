# Sourced by the bench/gpu_*.sh scripts once their options are read ($DEVICE: cuda, or cpu for
# a dry run): $OUT (default ./gpu-check-out, or the script's $DEFAULT_OUT), PYTHONPATH with the
# repository root (and $EXTRA_PYTHONPATH), $PY ($PYTHON, else the venv's python for a CPU dry
# run, else python3), summary(), which appends a line with the seconds since the start to
# $OUT/summary.txt (that file starts with the versions and the device), and ended(), a capped
# part's summary line.
OUT="${OUT:-${DEFAULT_OUT:-gpu-check-out}}"
mkdir -p "$OUT"
export PYTHONPATH=".${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
[[ -z "${PYTHON:-}" && -x .venv/bin/python && "${DEVICE:-cuda}" == cpu ]] && PY=.venv/bin/python

start=$(date +%s)
summary() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$OUT/summary.txt"; }
# ended CAP TEXT...: right after a part run under `timeout CAP`, its summary line: its exit
# status, and whether the cap cut it (124, or 137 when it outlived the kill grace)
ended() {
  local rc=$? cap=$1; shift
  local cut=""; (( rc == 124 || rc == 137 )) && cut=" (cut at its $cap s cap)"
  summary "$*: exit $rc$cut"
}
: > "$OUT/summary.txt"
"$PY" -c 'import sys, torch, torchvision, timm
print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision",
      torchvision.__version__, "timm", timm.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"{p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
else:
    print("no CUDA")' >> "$OUT/summary.txt" 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm \
  --format=csv >> "$OUT/summary.txt" 2>&1
