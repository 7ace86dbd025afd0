#!/usr/bin/env bash
# Install wllama (llama.cpp compiled to WebAssembly, npm @wllama/wllama) for `mote bench --browser
# --compare wllama`, into .cache/wllama (git-ignored). Pinned version; idempotent; needs npm.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="3.13.0"   # keep in step with mote/bench/browser.py WLLAMA_VERSION
DEST=.cache/wllama
PKG="$DEST/node_modules/@wllama/wllama"
if [ -f "$PKG/package.json" ] && grep -q "\"version\": \"$VERSION\"" "$PKG/package.json"; then
  echo "wllama $VERSION already in $PKG"
  exit 0
fi
command -v npm >/dev/null || { echo "npm not found: apt-get install -y npm (or Node.js 20)" >&2; exit 1; }
mkdir -p "$DEST"
npm install --prefix "$DEST" --no-audit --no-fund --ignore-scripts "@wllama/wllama@$VERSION"
test -f "$PKG/esm/index.js" && test -f "$PKG/esm/wasm/wllama.wasm"
echo "wllama $VERSION installed in $PKG"
