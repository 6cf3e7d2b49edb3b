#!/usr/bin/env bash
# The README's main job on the built-in default model (stories260K from ../shared):
# profile this host -> plan -> export (ExecuTorch + ONNX, with an early-exit draft program)
# -> verify -> run (Python and native) -> speculative run under a budget -> bench tables.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${EDGEKIT_DEMO_OUT:-out/demo}
mkdir -p out
MODEL=$(python -c 'from edgekit.models.load import default_model_path; print(default_model_path())')
step() { printf '\n== %s\n' "$*" >&2; }

step "profile this host (quick)"
edgekit profile --quick --out out/host.json
step "plan $MODEL on this host"
edgekit plan "$MODEL" --device out/host.json --runtime python --backend xnnpack --draft none \
    --out out/plan.json
step "export with the plan (ExecuTorch + ONNX, early-exit draft of 4 layers)"
edgekit export "$MODEL" --plan out/plan.json --out "$OUT" --format both --draft-exit 4 --force
step "verify against the eager model"
edgekit verify "$OUT" --source "$MODEL"
step "run: ExecuTorch in Python, then the native C++ runner"
edgekit run "$OUT" --prompt "Once upon a time" -n 48
edgekit run "$OUT" --prompt "Once upon a time" -n 48 --native
step "speculative run under a memory budget (SpecMemo)"
edgekit run "$OUT" --prompt "Once upon a time" -n 48 --draft early-exit:4 --budget-mb 1024
step "bench: native runner, ExecuTorch (Python), onnxruntime"
edgekit bench "$OUT" --native --reps 3 --profile out/host.json
edgekit bench "$OUT" --reps 3 --profile out/host.json
edgekit bench "$OUT" --backend onnx --reps 3 --profile out/host.json
