#!/usr/bin/env bash
# Decoder steps on an NVIDIA GPU: the service's CUDA path (CUDA provider, the KV caches on the GPU,
# IOBinding, GroupQueryAttention writing the cache in place) against PyTorch on CUDA with the
# same weights, fp32 and fp16, step time against batch size. Well within 10 minutes.
#
#   bash bench/gpu.sh [CHECKPOINT]            (default checkpoints/default)
#
# Needs a venv (PYTHON, default .venv/bin/python) with onnxruntime-gpu and a CUDA torch. Exports
# an fp32 and an fp16 bundle of the checkpoint into WORK (default /tmp/gpu_bench) once, then runs
# bench.decoder_step on each; prints the tables, writes bench/results/gpu_step_{fp32,fp16}.json.
# DEVICE=cpu runs the same script where there is no GPU. Timings, never pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
device=${DEVICE:-cuda}
checkpoint=${1:-checkpoints/default}
work=${WORK:-/tmp/gpu_bench}
batches=${BATCHES:-1,8,32,64,128,256}
repeats=${REPEATS:-100}
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$python" -c 'import onnxruntime as ort, torch; print("onnxruntime", ort.__version__, ort.get_available_providers()); print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
mkdir -p "$work" bench/results
for precision in fp32 fp16; do
    bundle=$work/bundle-$precision
    if [ ! -f "$bundle/manifest.json" ]; then
        "$python" -m export --checkpoint "$checkpoint" --out "$bundle" --precision "$precision" \
            --threads "$(nproc)" >"$work/export-$precision.log" 2>&1
    fi
    "$python" -m bench.decoder_step --bundle "$bundle" --checkpoint "$checkpoint" --device "$device" \
        --threads "$(nproc)" --batches "$batches" --repeats "$repeats" \
        --out "bench/results/gpu_step_$precision.json"
done
