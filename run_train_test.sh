#!/usr/bin/env bash
# The whole DSMNet story: train the MTL, test it, train the DAE, test MTL+DAE.
#
#   ./run_train_test.sh [--set NAME=VALUE ...]
#
# Every argument goes to every stage; config.py is never edited. Stops at the
# first failing stage with its name and exit code. Sets up .venv/ on first use.
set -uo pipefail
cd "$(dirname "$0")"
source scripts/python_env.sh
start=$(date +%s)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

stage() {   # stage NAME LOG SCRIPT ARGS...
    local name=$1 log=$2
    shift 2
    echo
    echo "=== stage: $name ==="
    "$PY" "$@" 2>&1 | tee "$logs/$log"
    local code=${PIPESTATUS[0]}
    if [ "$code" -ne 0 ]; then
        echo "=== stage '$name' failed with exit code $code ==="
        exit "$code"
    fi
}

result() {  # result LOG KEY: a value from the RESULT line of a test stage
    grep '^RESULT ' "$logs/$1" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$2=//p"
}

stage "MTL training" mtl_train.log train_mtl.py "$@"
stage "MTL test" mtl_test.log test_dsm.py "$@"
stage "DAE training" dae_train.log train_dae.py "$@"
stage "MTL+DAE test" dae_test.log test_dsm.py --correction "$@"

mtl=$(result mtl_test.log rmse)
dae=$(result dae_test.log rmse)
base=$(result mtl_test.log baseline_rmse)
verdict=$("$PY" - "$mtl" "$dae" "$base" <<'PYEOF'
import sys
mtl, dae, base = (float(v) if v not in ('', 'n/a') else None for v in sys.argv[1:])
lines = []
if None not in (mtl, base):
    lines.append(f"MTL RMSE is {mtl / base:.2f}x the mean-height baseline"
                 + (" (learned)" if mtl < base else " (no better than the baseline)"))
if None not in (mtl, dae):
    lines.append(f"the DAE {'improves' if dae < mtl else 'does not improve'} on the MTL "
                 f"({dae:.4f} vs {mtl:.4f})")
print('; '.join(lines))
PYEOF
)
echo
echo "=== summary ==="
echo "MTL RMSE          $mtl"
echo "MTL+DAE RMSE      $dae"
echo "baseline RMSE     $base (every pixel = the training mean height)"
echo "MTL mIoU          $(result mtl_test.log miou)"
echo "verdict           $verdict"
grep -h '^metrics and predictions: ' "$logs/mtl_test.log" "$logs/dae_test.log" \
    | sed 's/^metrics and predictions: /outputs           /'
grep -hE '^(best|last) weights ' "$logs/mtl_train.log" "$logs/dae_train.log" \
    | sed -E 's/^(best|last) weights +([^ ]*).*/training plots    \2/; s#(best|last)\.weights\.h5#metrics.png#'
echo "total time        $(( $(date +%s) - start )) s"
