#!/usr/bin/env bash
# Issue 12 item 3's figure, end to end through one kernel: the base model on the held-out ticket
# routing split (data/eval/), a LoRA fine-tune of it on the train split (`llmos tune`), and the
# adapter BASE:NAME on the same held-out split; each `llmos eval` output (the report, then its
# JSON) saved under $OUT with its date and commit, and a last line saying whether the fine-tune's
# margin is outside the base's 95% interval.
#
#   bash benchmarks/finetune_eval.sh       # MODEL, DEVICE, NAME, EPOCHS, LR, BATCH, CONCURRENCY, OUT override
#
# A train step runs inside the driver's loop: on a busy CPU a step of BATCH=4 took over the
# 10 s the kernel waits for a driver's pong, and the driver was restarted in a loop. BATCH=1
# EPOCHS=1 keeps each step short there; on a GPU the defaults are quick.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results} MODEL=${MODEL:-smollm2-135m-instruct} DEVICE=${DEVICE:-cpu}
NAME=${NAME:-tickets} EPOCHS=${EPOCHS:-2} LR=${LR:-0.001} BATCH=${BATCH:-4} CONCURRENCY=${CONCURRENCY:-16}
HELDOUT=data/eval/tickets-heldout.jsonl TRAIN=data/eval/tickets-train.jsonl
WORK=$(mktemp -d /tmp/llmos-finetune-eval.XXXXXX)
mkdir -m 700 "$WORK/run"
export XDG_RUNTIME_DIR="$WORK/run" LLMOS_SOCKET="ipc://$WORK/run/kernel.sock" LLMOS_NO_SERVICES=1
python -m llmos.kernel --socket "$LLMOS_SOCKET" --state-dir "$WORK/state" --device "$DEVICE" --model "$MODEL" \
    > "$WORK/kernel.out" 2>&1 &
KERNEL=$!
trap 'kill $KERNEL 2>/dev/null; wait $KERNEL 2>/dev/null; rm -rf "$WORK"' EXIT
llmos() { python -m llmos.userland.cli "$@"; }
until llmos health --wait 10 >/dev/null 2>&1; do
    kill -0 $KERNEL 2>/dev/null || { tail -20 "$WORK/kernel.out"; exit 1; }
    sleep 5
done
stamp="# $(date -u '+%F %H:%M')Z, $DEVICE, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

evaluate() {   # evaluate MODEL FILE: `llmos eval` on the held-out split, the report then the JSON line
    local json
    json=$(llmos eval --model "$1" --task classify --data "$HELDOUT" --concurrency "$CONCURRENCY" --json)
    { echo "$stamp: llmos eval --model $1 --task classify --data $HELDOUT"
      python -c 'import json, sys; from llmos.userland.cli.evaluate import report; print(report(json.loads(sys.argv[1])))' "$json"
      echo "$json"; } > "$2"
    cat "$2"
}
evaluate "$MODEL" "$OUT/eval-base.txt"
echo "$stamp: llmos tune $TRAIN --base $MODEL --name $NAME --epochs $EPOCHS --lr $LR --batch-size $BATCH" \
    > "$OUT/eval-tune.txt"
llmos tune "$TRAIN" --base "$MODEL" --name "$NAME" --epochs "$EPOCHS" --lr "$LR" --batch-size "$BATCH" \
    --max-seq-len 256 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -3 | tee -a "$OUT/eval-tune.txt"
evaluate "$MODEL:$NAME" "$OUT/eval-finetuned.txt"
python - "$OUT/eval-base.txt" "$OUT/eval-finetuned.txt" <<'PY' | tee -a "$OUT/eval-finetuned.txt"
import json, sys
base, tuned = (json.loads(open(path).read().splitlines()[-1]) for path in sys.argv[1:])
low, high = base["interval95"]
outside = tuned["accuracy"] > high and tuned["interval95"][0] > high
print(f"margin: {tuned['accuracy'] - base['accuracy']:+.3f} (fine-tuned {tuned['accuracy']:.3f} "
      f"[{tuned['interval95'][0]:.3f}-{tuned['interval95'][1]:.3f}] vs base {base['accuracy']:.3f} [{low:.3f}-{high:.3f}]): "
      f"{'outside' if outside else 'NOT outside'} the base's 95% interval"
      f"{' (the intervals do not overlap)' if outside else ''}")
PY
