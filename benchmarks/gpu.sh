#!/usr/bin/env bash
# The GPU benchmarks of issue 26, item 5, in one call, on a machine with a CUDA GPU:
#   1. training throughput, fp32 against bf16-mixed, and predict throughput (torch fp32/bf16) per model
#      (benchmarks/gpu_bench.py);
#   2. the wall time and out-of-fold figures of `liverscope cv --gpus 1` for cpu-best (EfficientNet-Lite0,
#      192 px, 15 epochs) and the same recipe at other sizes and epochs (issue 23's levers), on
#      ../shared/data/liver-fibrosis.
# Writes OUT/gpu.md (a markdown table per part, a row as soon as it is measured) and the logs beside it.
#
#   bash benchmarks/gpu.sh [OUT]          # OUT: a folder; default $OUT, else runs/gpu-bench
#   CONFIGS="192:15 224:30" ...           # size:epochs of each cv run (default "192:15 224:15"); an item may add
#                                         # --set items (":train.seed=1,model.dropout=0.3") and start with
#                                         # "holdout@" for a 20% grouped hold-out scored by the fold ensemble
#                                         # (cv, then evaluate --tta flip --ablation tissue,periphery: item 5)
#   FOLDS_PER_GPU=5 ...                   # cv --folds-per-gpu: the 5 folds at once on one GPU
#   NUM_WORKERS=2 ...                     # DataLoader workers of each fold process
#   FOLDS="--fold 0" ...                  # one fold per run instead of 5 (a short device lease)
#   SKIP_THROUGHPUT=1 ...                 # part 2 only;  N_IMAGES=256: images part 1 predicts
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
  echo "CPU: $(nproc --all) cores, flags: $(lscpu | grep -o 'avx512_bf16\|amx_bf16\|avx2' | sort -u | tr '\n' ' ')"
  echo
} > "$md"
if [ -z "${SKIP_THROUGHPUT:-}" ]; then
  { echo "## Throughput"; echo; } >> "$md"
  "$py" benchmarks/gpu_bench.py --data "$data" --n "${N_IMAGES:-512}" >> "$md" 2> "$out/throughput.log" \
    || echo "throughput failed: see throughput.log" >> "$md"
  echo >> "$md"
fi
per_gpu="${FOLDS_PER_GPU:-1}"
{
  echo "## cv --gpus 1 --folds-per-gpu $per_gpu: wall time and out-of-fold figures"
  echo
  echo "| recipe | size | epochs | --set | folds | wall s | balanced acc. | macro AUC | QWK | balanced acc. by source |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} >> "$md"
holdouts=""
for item in ${CONFIGS:-192:15 224:15}; do
  test_frac=0; cfg="$item"
  if [ "${cfg#holdout@}" != "$cfg" ]; then test_frac=0.2; cfg="${cfg#holdout@}"; fi
  IFS=: read -r size epochs sets <<< "$cfg"
  name="gpu-cpu-best-$size-e$epochs${sets:+-${sets//[^a-zA-Z0-9.]/_}}"
  [ "$test_frac" = 0 ] || name="$name-holdout"
  args=(cv "$data" --recipe cpu-best --image-size "$size" --epochs "$epochs" --gpus 1 --folds-per-gpu "$per_gpu"
        --name "$name" --out-dir "$out/runs" --cache-dir "$out/cache" --test-frac "$test_frac")
  [ -n "${NUM_WORKERS:-}" ] && args+=(--num-workers "$NUM_WORKERS")
  for s in ${sets//,/ }; do args+=(--set "$s"); done
  # shellcheck disable=SC2206
  args+=(${FOLDS:-})
  t0=$(date +%s)
  if "$py" -m liverscope "${args[@]}" > "$out/$name.log" 2>&1; then
    wall=$(( $(date +%s) - t0 ))
    echo "| cpu-best | $size | $epochs | ${sets:-–} | ${FOLDS:-all 5} | $wall | $("$py" benchmarks/cv_score.py oof "$out/runs/$name") |" >> "$md"
    if [ "$test_frac" != 0 ]; then
      run="$out/runs/$name"
      "$py" benchmarks/cv_score.py manifest "$run" "$run/holdout.csv" >> "$out/$name.log" 2>&1
      if "$py" -m liverscope evaluate "$run" "$run/holdout.csv" --tta flip --ablation tissue,periphery \
           --out "$run/eval-holdout-flip" >> "$out/$name.log" 2>&1; then
        holdouts+="| $size | $epochs | ${sets:-–} | $("$py" benchmarks/cv_score.py holdout "$run" "$run/eval-holdout-flip") |"$'\n'
      else
        holdouts+="| $size | $epochs | ${sets:-–} | evaluate failed: see $name.log | | | |"$'\n'
      fi
    fi
  else
    echo "| cpu-best | $size | $epochs | ${sets:-–} | failed: see $name.log | | | | | |" >> "$md"
  fi
done
if [ -n "$holdouts" ]; then
  {
    echo
    echo "## The fold ensemble on a 20% grouped hold-out (bacc / AUC / QWK, by source)"
    echo
    echo "| size | epochs | --set | out of fold | ensemble (cv) | ensemble + flip TTA (evaluate) | shortcut skill plain / tissue / periphery |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    printf '%s' "$holdouts"
  } >> "$md"
fi
echo "wrote $md"
cat "$md"
