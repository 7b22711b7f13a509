#!/usr/bin/env bash
# Debian packages the web app and its browser tests need: headless OpenGL through surfaceless EGL on Mesa
# (libegl1, libegl-mesa0, libgl1-mesa-dri) and the browser Playwright drives (chromium, chromium-driver).
# Installs only what is missing (apt-get; as root, or through sudo). Without either it says so and returns
# 0: the browser tests then skip, naming what is missing.
set -uo pipefail
packages=(libegl1 libegl-mesa0 libgl1-mesa-dri chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[system-deps] no apt-get: install ${missing[*]} yourself (the browser tests skip without them)" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  run=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  run=(sudo -n)
else
  echo "[system-deps] not root and no sudo: cannot install ${missing[*]} (the browser tests skip without them)" >&2
  exit 0
fi
echo "[system-deps] installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${run[@]}" apt-get update -q >/dev/null || true
"${run[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "[system-deps] apt-get could not install ${missing[*]} (the browser tests skip without them)" >&2
exit 0
