#!/usr/bin/env bash
# The GPU benchmarks of issue 26, item 5, in one call, on a machine with a CUDA GPU:
#   1. training throughput, fp32 against bf16-mixed, and predict throughput (torch fp32/bf16) per model
#      (benchmarks/gpu_bench.py);
#   2. the wall time of `liverscope cv --gpus 1` for cpu-best (EfficientNet-Lite0, 192 px) and the same
#      recipe at 224 px on ../shared/data/liver-fibrosis.
# Writes OUT/gpu.md (a markdown table per part) and the logs beside it.
#
#   bash benchmarks/gpu.sh [OUT]          # OUT: a folder; default $OUT, else runs/gpu-bench
#   FOLDS="--fold 0" bash benchmarks/gpu.sh   # one fold per recipe instead of 5 (a short device lease)
#   EPOCHS=5 ...                          # fewer epochs than the recipe's
#   PYTHON=/path/to/python ...            # an environment with liverscope and CUDA torch (default .venv/bin/python)
#
# Without a CUDA GPU it stops at once with exit status 2 and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/gpu-bench}}"
py="${PYTHON:-.venv/bin/python}"
data="${DATA:-../shared/data/liver-fibrosis}"
if [ ! -x "$py" ] && ! command -v "$py" >/dev/null; then
  echo "gpu.sh: no Python at $py (make install, or set PYTHON to an environment with liverscope)" >&2; exit 2
fi
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: no CUDA GPU visible to torch on $(hostname): these benchmarks need one (the CPU figures are benchmarks/inference.py and train_speed.py)" >&2
  exit 2
fi
if [ ! -d "$data" ]; then echo "gpu.sh: no data at $data (set DATA)" >&2; exit 2; fi
mkdir -p "$out"
md="$out/gpu.md"
{
  echo "# GPU benchmarks ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /' || true
  echo "CPU: $(nproc) cores, flags: $(lscpu | grep -o 'avx512_bf16\|amx_bf16\|avx2' | sort -u | tr '\n' ' ')"
  echo
  echo "## Throughput"
  echo
  "$py" benchmarks/gpu_bench.py --data "$data"
  echo
  echo "## cv --gpus 1 wall time"
  echo
  echo "| recipe | size | folds | epochs | wall s | out-of-fold balanced accuracy |"
  echo "| --- | --- | --- | --- | --- | --- |"
} > "$md"
for size in 192 224; do
  name="gpu-cpu-best-$size"
  args=(cv "$data" --recipe cpu-best --image-size "$size" --gpus 1 --name "$name" --out-dir "$out/runs" --cache-dir "$out/cache")
  [ -n "${EPOCHS:-}" ] && args+=(--epochs "$EPOCHS")
  # shellcheck disable=SC2206
  [ -n "${FOLDS:-}" ] && args+=($FOLDS --test-frac 0)
  t0=$(date +%s)
  "$py" -m liverscope "${args[@]}" > "$out/$name.log" 2>&1 || { echo "| cpu-best | $size | failed: see $name.log | | | |" >> "$md"; continue; }
  wall=$(( $(date +%s) - t0 ))
  ba=$("$py" benchmarks/gpu_bench.py --score "$out/runs/$name")
  echo "| cpu-best | $size | ${FOLDS:-all 5} | ${EPOCHS:-recipe} | $wall | $ba |" >> "$md"
done
echo "wrote $md"
cat "$md"
