#!/usr/bin/env bash
# The CReST benchmark at the paper's shape (6 generations, mu = 7, batch 32) on one GPU machine with this
# repository's dependencies installed (`make setup`). Usage, from the repository root:
#   bash benchmarks/crest/full_on_gpu.sh
# Runs land in benchmarks/crest/work/gpu/ as they finish (an interrupted benchmark resumes), the tables in
# benchmarks/crest/results.json under tune/gpu, quality/gpu and speed/gpu.
set -eu
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$python benchmarks/crest/bench.py --profile gpu --part tune
$python benchmarks/crest/bench.py --profile gpu --part quality
$python benchmarks/crest/bench.py --profile gpu --part speed --speed-steps 200
