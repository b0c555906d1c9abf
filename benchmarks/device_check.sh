#!/usr/bin/env bash
# The GPU device check in one call (docs/gpu.md, "Running the device check"), from the repository root:
#   bash benchmarks/device_check.sh            # on the GPU machine, with .whl and .device (device_prepare.sh) present
#   bash benchmarks/device_check.sh --smoke    # on a CPU: tiny sizes, phantom data, no wheels installed
# Results: $OUT/device_check.json and $OUT/device_check.log (OUT defaults to /tmp/busflow-device-check).
# Further arguments go to `device_check.py run` (e.g. --epochs 20, --deadline 400).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-${TMPDIR:-/tmp}/busflow-device-check}
smoke=${DEVICE_CHECK_SMOKE:-0}
args=()
for arg in "$@"; do
  if [ "$arg" = "--smoke" ]; then smoke=1; else args+=("$arg"); fi
done

if [ "$smoke" = 1 ]; then
  args+=(--smoke)
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "device_check: error: no wheels in $PWD/.whl; run benchmarks/device_prepare.sh where PyPI is reachable and carry .whl" >&2
    exit 2
  fi
  # The wheels of what the machine's image lacks (monai, jsonschema, dvclive, ...); busflow itself runs from src/.
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH="$PWD/src:/tmp/site"
fi
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
mkdir -p "$OUT"
exec "$PYTHON" benchmarks/device_check.py run --out "$OUT" ${args[@]+"${args[@]}"}
