#!/usr/bin/env bash
# Pre-train rbm1..rbm4, then fine-tune the deep autoencoder (784-1000-500-250-30)
# with BP: five jobs submitted at once as a chain, each with --after the one
# before it (it loads that one's checkpoint), so the queue starts each when
# the one before has SUCCEEDED; if one fails, the rest are CANCELLED.
#
#   examples/rbm/run.sh            submit the chain and return at once
#   examples/rbm/run.sh --wait     also wait for the end, then draw rbm1's filters
#
# From any directory; SINGA_HOME as usual. The data
# (../mnist/{train,test}_data.bin) is made by bin/setup.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# bin/setup's environment: the active virtualenv, else the repo's .venv
VENV="${VIRTUAL_ENV:-$ROOT/.venv}"
SINGA="${SINGA:-$VENV/bin/singa}"
WAIT=0
case "${1:-}" in
  --wait) WAIT=1 ;;
  "") ;;
  *) echo "run.sh: unknown option '$1'; expected --wait or nothing" >&2; exit 2 ;;
esac

for f in "$ROOT/examples/mnist/train_data.bin" "$ROOT/examples/mnist/test_data.bin"; do
  if [ ! -f "$f" ]; then
    echo "run.sh: $f is missing; run bin/setup (or singa data fetch) first" >&2
    exit 2
  fi
done

# the confs' workspaces and checkpoint_paths are relative to the repository's
# root (relative paths resolve against the working directory first, as in SINGA)
cd "$ROOT"
STAGES="rbm1 rbm2 rbm3 rbm4 autoencoder"
# a previous run's checkpoints would make a rerun mix versions: each stage
# starts from a clean workspace, unless an active job still uses it
ACTIVE=$("$SINGA" list --json)
for conf in $STAGES; do
  if printf '%s' "$ACTIVE" | grep -q "\"$HERE/workspace-$conf\""; then
    echo "run.sh: $HERE/workspace-$conf is in use by an active job (singa list);" \
         "wait for it or kill it first" >&2
    exit 2
  fi
done
for conf in $STAGES; do rm -rf "$HERE/workspace-$conf"; done
PREV=""
IDS=""
for conf in $STAGES; do
  AFTER=()
  if [ -n "$PREV" ]; then AFTER=(--after "$PREV"); fi
  OUT=$("$SINGA" submit --detach --name "$conf" "${AFTER[@]}" "$HERE/$conf.conf" 2>/dev/null) || {
    # say why: run it again with its messages
    "$SINGA" submit --detach --name "$conf" "${AFTER[@]}" "$HERE/$conf.conf" >&2 || true
    [ -n "$IDS" ] && echo "run.sh: stopping the jobs already submitted: $IDS" >&2 && \
      for id in $IDS; do "$SINGA" kill "$id" >/dev/null 2>&1 || true; done
    exit 2
  }
  PREV=$(printf '%s\n' "$OUT" | sed -n 's/^Submitted job \([0-9]*\).*/\1/p')
  IDS="$IDS $PREV"
  echo "$conf: job $PREV${AFTER:+ (after job ${AFTER[1]})}"
done
echo "singa list shows the chain; singa log $PREV -f follows the autoencoder" >&2

STEP=$(sed -n 's/^train_steps: *\([0-9]*\).*/\1/p' "$HERE/rbm1.conf")
DRAW=("$SINGA" draw filters "$HERE/workspace-rbm1/checkpoint/step$STEP-worker0"
      --param w1 --shape 28x28 --count 100 -o "$HERE/rbm1-filters.png")
if [ "$WAIT" = 0 ]; then
  echo "once rbm1 has ended: ${DRAW[*]}" >&2
  exit 0
fi
while :; do
  STATE=$("$SINGA" view "$PREV" | sed -n 's/^  state: *\([A-Z]*\).*/\1/p')
  case "$STATE" in
    SUCCEEDED) break ;;
    FAILED|KILLED|LOST|CANCELLED) echo "run.sh: job $PREV $STATE; singa view $PREV says why" >&2; exit 1 ;;
  esac
  sleep 5
done
"${DRAW[@]}"
echo "rbm1's filters: $HERE/rbm1-filters.png" >&2
