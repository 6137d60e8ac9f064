#!/usr/bin/env bash
# Pre-train rbm1..rbm4 one after the other, fine-tune the deep autoencoder
# (784-1000-500-250-30) with BP, then draw rbm1's first 100 filters.
#
#   examples/rbm/run.sh            from any directory; SINGA_HOME as usual
#
# Each conf loads the checkpoints of the ones before it through
# checkpoint_path (relative to the repository's root), so they must run in order.
# The data (../mnist/{train,test}_data.bin) is made by bin/setup.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# bin/setup's environment: the active virtualenv, else the repo's .venv
VENV="${VIRTUAL_ENV:-$ROOT/.venv}"
SINGA="${SINGA:-$VENV/bin/singa}"

for f in "$ROOT/examples/mnist/train_data.bin" "$ROOT/examples/mnist/test_data.bin"; do
  if [ ! -f "$f" ]; then
    echo "run.sh: $f is missing; run bin/setup (or singa data fetch) first" >&2
    exit 2
  fi
done

# the confs' workspaces and checkpoint_paths are relative to the repository's
# root (relative paths resolve against the working directory first, as in SINGA)
cd "$ROOT"
for conf in rbm1 rbm2 rbm3 rbm4 autoencoder; do
  # a previous run's checkpoints would make a rerun resume nothing but
  # mix versions: start each stage from a clean workspace
  rm -rf "$HERE/workspace-$conf"
  echo "== $conf" >&2
  "$SINGA" submit "$HERE/$conf.conf"
done

STEP=$(sed -n 's/^train_steps: *\([0-9]*\).*/\1/p' "$HERE/rbm1.conf")
"$SINGA" draw filters "$HERE/workspace-rbm1/checkpoint/step$STEP-worker0" \
  --param w1 --shape 28x28 --count 100 -o "$HERE/rbm1-filters.png"
echo "rbm1's filters: $HERE/rbm1-filters.png" >&2
