#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the dev server with the default chat model (Qwen2.5-Coder 0.5B
# Instruct) and Gemma 3 270M (a completion model).
# Prints the URL to open; Ctrl-C stops it. Arguments go to `mote serve` (e.g. --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
MOTE_SKIP_CHROMIUM=1 bash scripts/setup.sh
exec .venv/bin/mote serve "$@"
