#!/usr/bin/env bash
# One GPU check for a session that has a GPU (H100/H200; no downloads, no weights; under 8 minutes):
#   bash bench/gpu_check.sh [OUT_JSON]
# extract pipeline / bare forward per --decode mode (ViT-B/16 fp16, >= 1 MP JPEGs), stage-2 store step /
# CLIP step (bf16), one pass of three ViT-B/16 teachers / one teacher, eval images/s, peak GPU memory. See bench/gpu_check.py. CPU dry run: --smoke.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check.json}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 540 python bench/gpu_check.py --out "$OUT" --device cuda
