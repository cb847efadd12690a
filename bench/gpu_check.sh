#!/usr/bin/env bash
# The GPU check, end to end in at most 10 minutes: train-step throughput of ResNet-50 and ViT-B/16 beside PyTorch,
# a short fashion run at 224x224 and the catalogue's embedding (bench/gpu_check.py says what each measures).
#
#   pip install -e '.[cuda13,torch]'     # or .[cuda12,torch] for a CUDA 12 driver
#   bash bench/gpu_check.sh [--small] [--out DIR]
#
# --small runs the same at CPU scale (CI: tests/test_gpu_check.py). Output: DIR/gpu_check.json and a table.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3 TF_ENABLE_ONEDNN_OPTS=0 PYTHONUNBUFFERED=1
python -c "import navee_jax" 2>/dev/null || {
  echo "gpu_check: navee_jax is not installed in this Python: pip install -e '.[cuda13,torch]'" >&2; exit 1; }
exec timeout 600 python bench/gpu_check.py "$@"
