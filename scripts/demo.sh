#!/usr/bin/env bash
# The main job: DRRs of the built-in phantom (or --ct CT [--seg LABELS]) through the Slicer logic,
# saved as a Slicer scene (out/demo/NanoDRR-demo.mrml) with PNG previews. Extra args go to scripts/nanodrr_demo.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/nanodrr_demo.py "$@"
