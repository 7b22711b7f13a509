#!/usr/bin/env bash
# The whole test suite: lint, format check, engine, Slicer logic and module tests. Extra args go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
bash scripts/install_system_deps.sh  # chromium + EGL/Mesa for the browser tests
echo "[test] ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] pytest"
exec .venv/bin/python -m pytest Testing "$@"
