#!/usr/bin/env bash
# Installs the non-Python peer used by bench_render.py: plastimatch (its `drr` command).
# Debian/Ubuntu only; run as root or with sudo. Python peers (nanodrr) come from requirements-dev.txt.
set -euo pipefail

if command -v plastimatch >/dev/null 2>&1; then
    echo "plastimatch already installed: $(command -v plastimatch)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup_bench.sh: need root (or sudo) to apt-get install plastimatch" >&2
        exit 1
    fi
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_bench.sh: no apt-get here; install plastimatch by hand (https://plastimatch.org)," \
        "or run the benchmark with --impl to skip it" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends plastimatch
plastimatch --version || true
