#!/usr/bin/env bash
# The one device call a GPU session makes (see CLAUDE.md): torchinfo from carried wheels when there are
# any, the versions, then the memory validation with a time budget. Results go to $OUT (the device
# tool's return folder) or, without it, to bench/. Extra arguments go to memory_validation.py.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
python3 bench/memory_validation.py --time-budget-s "${TIME_BUDGET_S:-420}" \
  --out "$out/results_gpu.md" --out "$out/results_gpu.json" "$@"
