#!/usr/bin/env bash
# The one device call a GPU session makes (see CLAUDE.md): torchinfo from carried wheels when there are
# any, the versions, then the memory validation with a time budget. Results go to $OUT (the device
# tool's return folder) or, without it, to bench/. Extra arguments go to memory_validation.py.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
# The CUDA context (gpus.py assumes 500 MiB): what the driver holds once torch, cuBLAS and cuDNN are up.
python3 - <<'PY' || true
import torch
if torch.cuda.is_available():
    free0, total = torch.cuda.mem_get_info()
    a = torch.ones(256, 256, device="cuda"); (a @ a).sum().item()
    torch.nn.functional.conv2d(torch.ones(1, 1, 8, 8, device="cuda"), torch.ones(1, 1, 3, 3, device="cuda")).sum().item()
    free1, _ = torch.cuda.mem_get_info()
    print(f"CUDA context: {(total - free1 - torch.cuda.memory_reserved()) / 2**20:,.0f} MiB outside PyTorch's "
          f"allocator after cuBLAS and cuDNN start (card {total / 2**30:.1f} GiB)")
PY
python3 bench/memory_validation.py --time-budget-s "${TIME_BUDGET_S:-420}" \
  --out "$out/results_gpu.md" --out "$out/results_gpu.json" "$@"
