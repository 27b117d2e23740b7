#!/bin/sh
# A kernel user and a gateway API key for NAME on the Kubernetes deployment; prints the API key once.
#
#   deploy/k8s/add-api-key.sh alice [--quota requests=8 ...]    (options go to `llmos user add`)
#   deploy/k8s/add-api-key.sh gateway                            (the gateway's own identity, once)
#
# The kernel makes NAME's CurveZMQ key file on its volume; it goes into the Secret llmos-user-keys,
# which the gateway's pods mount (the kernel's own secret key never leaves its volume); once the
# kubelet has put it in the pods (a minute or two), one pod adds an API key for NAME to a copy of the
# table, which goes back into the Secret llmos-gateway-keys. Every gateway pod rereads it when it
# changes. Needs kubectl and base64; LLMOS_NAMESPACE (default llmos).
set -eu
[ $# -ge 1 ] || { echo "usage: $0 NAME [llmos user add options]" >&2; exit 2; }
name=$1
shift
k="kubectl -n ${LLMOS_NAMESPACE:-llmos}"
mounted=/etc/llmos/user-keys/$name.key_secret

secret_patch() {    # SECRET KEY VALUE(base64): make the Secret if it is missing, else add the key
    $k create secret generic "$1" >/dev/null 2>&1 || true
    $k patch secret "$1" --type merge -p "{\"data\":{\"$2\":\"$3\"}}" >/dev/null
}

$k exec statefulset/llmos-kernel -c kernel -- llmos user add "$name" "$@" >&2
secret_patch llmos-user-keys "$name.key_secret" \
    "$($k exec statefulset/llmos-kernel -c kernel -- base64 -w0 "/var/lib/llmos/keys/$name.key_secret")"

echo "waiting for the gateway's pods to see $mounted ..." >&2
tries=0
until $k exec deploy/llmos-gateway -- test -f "$mounted" 2>/dev/null; do
    tries=$((tries + 1))
    [ "$tries" -le 60 ] || { echo "$mounted did not appear in 5 minutes" >&2; exit 1; }
    sleep 5
done

# Line 1: the API key; the rest: the new table. The copy lives in the pod's /tmp for this command only.
out=$($k exec deploy/llmos-gateway -- sh -c '
    umask 077; t=$(mktemp -d)
    [ -s /etc/llmos/gateway/keys.json ] && cp /etc/llmos/gateway/keys.json "$t/keys.json"
    llmos serve keys add "$0" --key-file "$1" --keys "$t/keys.json" 2>/dev/null && cat "$t/keys.json"
    rc=$?; rm -rf "$t"; exit $rc' "$name" "$mounted")
secret_patch llmos-gateway-keys keys.json "$(printf '%s\n' "$out" | tail -n +2 | base64 -w0)"
printf '%s\n' "$out" | head -n 1
