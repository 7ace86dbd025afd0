#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, the real models' and browser tiers included.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k tokenizer`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mote pull qwen2.5-coder-1.5b-instruct   # the larger instruct model, for its reference tests
MOTE_GEMMA_PATH="$(.venv/bin/python -c 'from mote.pull import resolve_model; print(resolve_model("gemma-3-270m"))')"
export MOTE_GEMMA_PATH MOTE_REQUIRE_GEMMA=1
set +e
.venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: failing (exit 5 must not pass)" >&2
  exit 1
fi
exit "$rc"
