#!/usr/bin/env bash
# The README's main job on the built-in default model (stories260K from ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${EDGEKIT_DEMO_OUT:-out/demo}
mkdir -p "$(dirname "$OUT")"
edgekit generate --prompt "Once upon a time" --max-new-tokens 48
