#!/bin/sh
# A kernel user and a gateway API key for NAME on the compose stack; prints the API key once.
#
#   deploy/compose-key.sh alice [--quota requests=8 ...]      (options go to `llmos user add`)
#
# The kernel makes NAME's CurveZMQ key file in its state; the operator's console copies it to the
# llmos-user-keys volume, which the gateway mounts read-only (the kernel's own secret key stays
# in the kernel's volume); the gateway's table gets an API key speaking as NAME. Set COMPOSE_FILE
# (and COMPOSE_PROJECT_NAME) as for `docker compose` when the stack is not deploy/compose.yaml.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 NAME [llmos user add options]" >&2; exit 2; }
name=$1
shift
: "${COMPOSE_FILE:=$(dirname "$0")/compose.yaml}"
export COMPOSE_FILE
handed=/var/lib/llmos-user-keys/$name.key_secret
docker compose exec -T kernel llmos user add "$name" "$@" >&2
docker compose exec -T kernel cp "/var/lib/llmos/keys/$name.key_secret" "$handed"
docker compose exec -T gateway llmos serve keys add "$name" --key-file "$handed"
