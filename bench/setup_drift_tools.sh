#!/usr/bin/env bash
# Create one virtualenv per existing drift tool that bench/monitor.py compares Pitstop with.
#
#   bash bench/setup_drift_tools.sh            # create/refresh both
#   bash bench/setup_drift_tools.sh alibi      # only one of them
#
# Each tool gets its own venv under .bench-venvs/ (git-ignored) because their dependency pins
# conflict with the project's numpy 2 / pandas 3: alibi-detect 0.13.0 requires numpy<2 and
# pandas<3. Only the tool and the numeric stack that decides its results are pinned here; the
# rest of each tool's dependencies resolve as pip chooses.
#
# Idempotent: a venv whose installed versions already match every pin is left alone. Otherwise
# the venv is (re)created and the pins installed, and the wall time of the install is printed.
#
# alibi-detect: the base install (no TensorFlow/PyTorch extras). KSDrift and ChiSquareDrift are
#   numpy/scipy detectors and need neither backend. 0.13.0 is the latest release.
# evidently: 0.7.x has the modern API (`from evidently import Report`,
#   `from evidently.presets import DataDriftPreset`); the legacy one lives on under
#   `evidently.legacy`. bench/_drift_tools.py uses the modern one.
set -euo pipefail

PY=${PYTHON:-python3.11}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENVS="$ROOT/.bench-venvs"

# name -> pinned requirements (space separated). Written from what the install resolved to.
declare -A PINS=(
  [alibi]="alibi-detect==0.13.0 numpy==1.26.4 pandas==2.3.3 scipy==1.17.1 scikit-learn==1.9.1 numba==0.59.1"
  # evidently 0.7.23 declares pandas>=1.3.5 with no upper bound, but does not import under
  # pandas 3 (evidently.legacy.tests imports pandas.core.dtypes.common.infer_dtype_from_object,
  # gone in pandas 3), so pandas is held at 2.x here.
  [evidently]="evidently==0.7.23 pandas==2.3.3 numpy==2.4.6 scipy==1.17.1 scikit-learn==1.9.1 statsmodels==0.15.0"
)

installed_matches() {
  # $1 = venv dir, rest = pins; exit 0 when every pin is installed at exactly that version
  local venv=$1; shift
  [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - "$@" <<'EOF'
import sys
from importlib import metadata
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if have != want:
        sys.exit(1)
EOF
}

setup_one() {
  local name=$1
  local venv="$VENVS/$name"
  # shellcheck disable=SC2206
  local pins=(${PINS[$name]})
  if installed_matches "$venv" "${pins[@]}"; then
    echo "[$name] $venv already has ${pins[*]}: nothing to do"
    return 0
  fi
  echo "[$name] creating $venv with $PY and installing ${pins[*]}"
  rm -rf "$venv"
  mkdir -p "$VENVS"
  local t0 t1
  t0=$(date +%s%N)
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "${pins[@]}"
  t1=$(date +%s%N)
  if ! installed_matches "$venv" "${pins[@]}"; then
    echo "[$name] ERROR: installed versions do not match the pins" >&2
    exit 1
  fi
  local ms=$(( (t1 - t0) / 1000000 ))
  printf '[%s] venv + install took %d.%01d s: ' "$name" $((ms / 1000)) $(((ms % 1000) / 100))
  "$venv/bin/python" - "${pins[@]}" <<'EOF'
import sys
from importlib import metadata
print(", ".join(f"{p.split('==')[0]} {metadata.version(p.split('==')[0])}" for p in sys.argv[1:]))
EOF
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(alibi evidently)
for t in "${targets[@]}"; do
  if [ -z "${PINS[$t]+x}" ]; then
    echo "unknown tool '$t' (known: ${!PINS[*]})" >&2
    exit 2
  fi
  setup_one "$t"
done
