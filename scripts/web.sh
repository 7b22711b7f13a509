#!/usr/bin/env bash
# NanoDRR in the browser: ./scripts/web.sh [--host 127.0.0.1] [--port 8080] [--ct CT] [--seg SEG]
# Prints the URL to open. Serves 127.0.0.1 by default (no authentication; one user per process).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
exec .venv/bin/python -m NanoDRRWeb "$@"
