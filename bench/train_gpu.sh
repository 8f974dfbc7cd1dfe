#!/usr/bin/env bash
# Training throughput on NVIDIA GPUs: tokens/s per GPU for a preset (default: the paper's base),
# fp32 and bf16, through the same model.train command users run (torchrun when GPUS > 1).
#
#   bash bench/train_gpu.sh [GPUS] [STEPS] [PRESET]      e.g. bash bench/train_gpu.sh 8 60 base
#
# Needs a venv with the train extra (PYTHON, default .venv/bin/python) and a CUDA torch. Trains on
# the built-in corpus; the first 10 steps (CUDA warm-up, allocator) are left out of the figure.
# Prints one line per precision; results in bench/results/train_gpu.json. Never pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
device=${DEVICE:-cuda}  # DEVICE=cpu tries the script where there is no GPU
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
gpus=${1:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}
[ "$gpus" -ge 1 ] || gpus=1
steps=${2:-60}
preset=${3:-base}
work=${WORK:-/tmp/train_gpu}
mkdir -p "$work"
results=()
for precision in fp32 bf16; do
    out=$work/$preset-$precision
    rm -rf "$out"
    args=(-m model.train --corpus builtin --preset "$preset" --device "$device" --precision "$precision"
          --max-steps "$steps" --valid-every "$steps" --no-evaluate --out "$out")
    if [ "$gpus" -gt 1 ]; then
        "$python" -m torch.distributed.run --standalone --nproc_per_node "$gpus" "${args[@]}" >"$out.log" 2>&1
    else
        "$python" "${args[@]}" >"$out.log" 2>&1
    fi
    results+=("$("$python" - "$out/train_log.jsonl" "$gpus" "$precision" "$preset" "$device" <<'PY'
import json, sys
path, gpus, precision, preset = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [json.loads(line) for line in open(path)]
first, last = rows[9], rows[-1]  # from the end of step 10 to the end
tokens = last["tokens"] - first["tokens"]
seconds = last["seconds"] - first["seconds"]
figure = {"device": sys.argv[5], "preset": preset, "precision": precision, "gpus": gpus, "steps": last["step"] - first["step"],
          "tokens_per_s": round(tokens / seconds), "tokens_per_s_per_gpu": round(tokens / seconds / gpus),
          "ms_per_step": round(1000 * seconds / (last["step"] - first["step"]), 1), "loss": round(last["loss"], 3)}
print(json.dumps(figure))
PY
)")
    echo "${results[-1]}"
done
mkdir -p bench/results
printf '%s\n' "${results[@]}" | "$python" -c 'import json,sys; print(json.dumps([json.loads(l) for l in sys.stdin], indent=2))' >bench/results/train_gpu.json
echo "written: bench/results/train_gpu.json"
