#!/usr/bin/env bash
# Prepare the GPU device check (docs/gpu.md, "Running the device check") on a machine with PyPI access:
#   1. .whl/    wheels of what busflow's training imports and the GPU machine's image lacks (CPython 3.12,
#               manylinux x86_64, one version each: the version installed here);
#   2. .device/ BUSI at 256 px with its grouped 5-fold split, made by busflow's own stages with a params file
#               derived from config/presets/p003.yaml (the images are read in place, never copied);
#   3. checks that what travels (the git tree, .whl and .device) stays under the 64 MiB limit.
# Reruns skip what exists. Run from anywhere, with busflow's environment active:
#   bash benchmarks/device_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUSI=${BUSI:-${BUSFLOW_SHARED_DATASETS:-../shared/datasets}/busi/Dataset_BUSI_with_GT}

# Missing there, imported by `busflow train` / `busflow evaluate` / busflow.models:
#   monai (networks, losses, augmentation); jsonschema and its own needs (params validation);
#   dvclive, which busflow.train.outputs imports unconditionally for the per-epoch curves, and the part of
#   dvc it imports when a Live run opens, inside a DVC project too (platformdirs, configobj): found by
#   blocking every package the image lacks and importing, not from dvc's declared needs (a much larger set).
WHEELS=(
  monai
  jsonschema jsonschema-specifications referencing rpds-py
  dvclive dvc dvc-data dvc-objects dvc-http dvc-render dvc-studio-client scmrepo dulwich sqltrie pygtrie
  funcy ruamel.yaml flatten-dict voluptuous diskcache dpath flufl.lock atpublic zc.lockfile platformdirs configobj
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

installed_version() {  # the version of distribution $1 in this environment
  "$PYTHON" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null \
    || { echo "device_prepare: error: $1 is not installed in this environment ($PYTHON); activate busflow's venv" >&2; return 1; }
}

have_wheel() {  # 0 when .whl holds distribution $1 at version $2; wheels of its other versions are removed
  "$PYTHON" - "$1" "$2" <<'PY'
import re, sys
from pathlib import Path
norm = lambda name: re.sub(r"[-_.]+", "_", name).lower()
name, version, found = norm(sys.argv[1]), sys.argv[2], False
for wheel in Path(".whl").glob("*.whl"):
    dist, wheel_version = wheel.name.split("-")[:2]
    if norm(dist) != name:
        continue
    if wheel_version == version:
        found = True
    else:
        wheel.unlink()
        print(f"removed {wheel}: not the installed version {version}")
sys.exit(0 if found else 1)
PY
}

download_wheels() {
  mkdir -p .whl
  for dist in "${WHEELS[@]}"; do
    version=$(installed_version "$dist")
    if have_wheel "$dist" "$version"; then
      echo "wheel $dist $version: present"
      continue
    fi
    echo "wheel $dist $version: downloading"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d .whl "$dist==$version"
  done
}

prepare_data() {
  if [ ! -d "$BUSI" ]; then
    echo "device_prepare: error: BUSI not found at $BUSI (set BUSI or BUSFLOW_SHARED_DATASETS)" >&2
    return 1
  fi
  PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" nice -n 10 "$PYTHON" benchmarks/device_check.py prepare \
    --out .device --busi "$BUSI" --size 256
}

download_wheels
prepare_data
"$PYTHON" benchmarks/device_size.py --repo . .whl .device
