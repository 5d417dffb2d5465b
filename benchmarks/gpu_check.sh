#!/usr/bin/env bash
# One-command GPU check for text-embed: TensorRT engine, parity, latency table
# (ORT CPU vs CUDA EP vs TensorRT, and PyTorch CUDA where TensorRT is absent), with
# servekit's NVML sampler running during the measurements (GPU utilization, memory, power).
# Finishes within 8 minutes or is stopped; every absent part is skipped with its reason.
#
#   bash benchmarks/gpu_check.sh [--model-dir DIR]
#
# The JSON goes to benchmarks/results/gpu_check.json, or to $OUT/gpu_check.json when OUT
# names a folder.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== environment"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
else
  echo "nvidia-smi: not found (no NVIDIA driver here)"
fi
"$PY" - <<'EOF'
import importlib.util as u
for mod in ("torch", "onnxruntime", "tensorrt", "transformers", "tokenizers", "pynvml"):
    print(f"{mod:13s}", "present" if u.find_spec(mod) else "absent")
try:
    import torch
    print("torch", torch.__version__, "cuda:", torch.cuda.is_available())
except ImportError:
    pass
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, ort.get_available_providers())
except ImportError:
    pass
EOF

echo "== text-embed: parity and latency"
timeout --kill-after=10 470 "$PY" -m benchmarks.gpu_check ${OUT:+--out "$OUT"} "$@"
