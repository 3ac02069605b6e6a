#!/usr/bin/env bash
# The continual benchmark at paper scale on one GPU machine with this repository's dependencies installed
# (`make setup`): every task's full train and dev splits, 3 epochs, max_length 128, bf16, EWC's Fisher on
# 500 examples; Gemma 3 270M 500 steps of 8 pairs per task over 3 seeds; speed arms of 200 steps a task.
# Usage, from the repository root:
#   bash benchmarks/continual/full_on_gpu.sh
# Runs land in benchmarks/continual/work/gpu/ as they finish (an interrupted benchmark resumes), the tables
# in benchmarks/continual/results.json under tune/gpu, quality/gpu, lm/gpu and speed/gpu.
set -eu
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$python benchmarks/continual/bench.py --profile gpu --part tune
$python benchmarks/continual/bench.py --profile gpu --part quality --seeds 1 2 3
$python benchmarks/continual/bench.py --profile gpu --part lm --lm-seeds 1 2 3
$python benchmarks/continual/bench.py --profile gpu --part speed --rounds 5
