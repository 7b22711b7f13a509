#!/usr/bin/env bash
# Create .venv and install the pinned development environment (idempotent; re-installs when the pins change).
# Used by scripts/demo.sh and scripts/test.sh; run it directly to just set up.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

pick_python() {
  for candidate in "${NANODRR_PYTHON:-}" python3 python3.12 python3.11 python3.10; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: NanoDRR needs Python 3.10–3.12 (set NANODRR_PYTHON=/path/to/python)" >&2
  return 1
}

# The CPU build of torch==2.13.0 is what these machines' pip resolves; elsewhere, point pip at a CPU index
# (e.g. NANODRR_TORCH_INDEX=https://download.pytorch.org/whl/cpu) to avoid several GB of CUDA wheels.
stamp=".venv/.nanodrr-stamp"
want="$(cat requirements-dev.txt NanoDRREngine/pyproject.toml | sha256sum | cut -c1-16)"
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  python="$(pick_python)"
  echo "[bootstrap] creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
echo "[bootstrap] installing pinned dependencies (first run takes a few minutes)"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
if [ -n "${NANODRR_TORCH_INDEX:-}" ]; then
  .venv/bin/python -m pip install -q "torch==$(sed -n 's/^torch==//p' requirements-dev.txt)" --index-url "$NANODRR_TORCH_INDEX"
fi
.venv/bin/python -m pip install -q -r requirements-dev.txt 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q --no-deps -e NanoDRREngine 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import torch, numba, SimpleITK, slicer, nanodrr_engine" # fail loudly on a broken install
echo "$want" > "$stamp"
echo "[bootstrap] ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
