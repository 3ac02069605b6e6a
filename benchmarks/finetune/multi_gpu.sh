#!/usr/bin/env bash
# Multi-GPU check of the Accelerate configs (configs/accelerate/, docs/distributed.md): full fine-tuning of a
# classifier under DDP and FSDP, and SFT of a causal LM with LoRA under FSDP, DeepSpeed ZeRO-2 and ZeRO-3, each
# against the same run in one process. Tiny random models (tiny-bert, tiny-gpt2), 20 steps: this checks that each
# launch finishes, writes final/, and follows the one-process losses; it measures no speed.
# Usage, from the repository root on a machine with NVIDIA GPUs and torch, transformers, accelerate and peft
# (DeepSpeed optional: without `import deepspeed` its runs are skipped and the summary says so):
#   bash benchmarks/finetune/multi_gpu.sh OUT_DIR [NUM_PROCESSES]
# NUM_PROCESSES defaults to the number of GPUs. With one GPU, FSDP and ZeRO still take their code paths (shards
# over one process: wrapping, gathering, saving), though not the communication between GPUs.
# OUT_DIR gets summary.txt (one line per run), versions.txt, and per run its log, metrics.jsonl and final.json.
set -u
out=${1:?output folder}
nproc=${2:-$(nvidia-smi -L | wc -l)}
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
runs=$(mktemp -d /tmp/multi-gpu-runs.XXXXXX)
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
  python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>/dev/null || echo "deepspeed: not installed"
  echo "processes: $nproc"
} | tee "$out/versions.txt"

FINETUNE=(finetune/minilm_sst2 model.name=tiny-bert model.dropout=0 data.max_train_examples=640
          data.max_eval_examples=128 train.max_steps=20 train.batch_size=16 train.eval_every=20 train.log_every=1)
SFT=(sft/gemma_gsm8k model.name=tiny-gpt2 model.max_length=512 model.dropout=0 sft.lora_dropout=0
     "sft.target_modules=[c_attn,c_proj,c_fc]" data.max_train_examples=320 sft.dev_size=16 train.max_steps=20
     train.batch_size=16 train.grad_accum=1 train.eval_every=20 train.log_every=1)  # ZeRO steps once per backward

# run NAME LAUNCHER... -- RECIPE ARGS...: one run, its rc and files into $out
run() {
  local name=$1; shift
  local launcher=()
  while [ "$1" != "--" ]; do launcher+=("$1"); shift; done; shift
  local started=$SECONDS
  timeout 600 "${launcher[@]}" run "$@" --run-dir "$runs/$name" > "$out/$name.log" 2>&1
  local rc=$?
  cp "$runs/$name/metrics.jsonl" "$out/$name.metrics.jsonl" 2>/dev/null
  cp "$runs/$name/final.json" "$out/$name.final.json" 2>/dev/null
  local error; error=$(grep -E "Error|error:" "$out/$name.log" | tail -1 | cut -c1-200)
  echo "$name rc=$rc seconds=$((SECONDS - started)) final=$([ -f "$runs/$name/final.json" ] && echo yes || echo no) ${error}" \
    | tee -a "$out/summary.txt"
}
one=(python3 -m lmforge)
launch() { echo python3 -m accelerate.commands.launch --config_file "configs/accelerate/$1" --num_processes "$nproc"; }
# What Accelerate sets up under each config, as the launched processes see it (on a machine without GPUs FSDP
# silently becomes DDP: docs/distributed.md), so that the summary says what actually ran.
cat > "$runs/probe.py" <<'PROBE'
from accelerate import Accelerator
a = Accelerator()
if a.is_main_process:
    extra = f" fsdp_version={a.state.fsdp_plugin.fsdp_version}" if getattr(a.state, "fsdp_plugin", None) else ""
    extra += f" zero_stage={a.state.deepspeed_plugin.zero_stage}" if getattr(a.state, "deepspeed_plugin", None) else ""
    print(f"{a.distributed_type.value} on {a.num_processes} processes, device {a.device}{extra}")
PROBE
probe() { echo "$1 sets up: $(timeout 300 $(launch "$1") "$runs/probe.py" 2>&1 | tail -1)" | tee -a "$out/summary.txt"; }
probe ddp.yaml
probe fsdp.yaml

run finetune-one "${one[@]}" -- "${FINETUNE[@]}"
run finetune-ddp $(launch ddp.yaml) -m lmforge -- "${FINETUNE[@]}"
# BERT classes name no _no_split_modules in transformers 5.x: FSDP2's transformer auto wrap needs the layer named
run finetune-fsdp $(launch fsdp.yaml) --fsdp_transformer_layer_cls_to_wrap BertLayer -m lmforge -- "${FINETUNE[@]}"
run sft-one "${one[@]}" -- "${SFT[@]}"
run sft-fsdp $(launch fsdp.yaml) -m lmforge -- "${SFT[@]}"
if python3 -c "import deepspeed" 2>/dev/null; then
  probe deepspeed_zero2.yaml
  probe deepspeed_zero3.yaml
  run sft-zero2 $(launch deepspeed_zero2.yaml) -m lmforge -- "${SFT[@]}"
  run sft-zero3 $(launch deepspeed_zero3.yaml) -m lmforge -- "${SFT[@]}"
else
  echo "sft-zero2 sft-zero3 skipped: deepspeed is not installed" | tee -a "$out/summary.txt"
fi

# Each launched run against its one-process run: the largest relative difference of the per-step losses and
# of the final metrics (1e-4 or less is the CPU tests' tolerance; mixed precision is off in every run).
python3 - "$out" <<'EOF' | tee -a "$out/summary.txt"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])

def losses(name):
    path = out / f"{name}.metrics.jsonl"
    return [json.loads(l)["loss"] for l in path.read_text().splitlines() if '"train"' in l] if path.exists() else []

for name in ["finetune-ddp", "finetune-fsdp", "sft-fsdp", "sft-zero2", "sft-zero3"]:
    base, got = losses(name.split("-")[0] + "-one"), losses(name)
    if not got:
        print(f"{name}: no losses logged")
        continue
    steps = min(len(base), len(got))
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(got[:steps], base[:steps]))
    line = f"{name}: {len(got)} steps logged, max relative loss difference {worst:.2e} over {steps} steps"
    finals = [out / f"{n}.final.json" for n in (name, name.split("-")[0] + "-one")]
    if all(p.exists() for p in finals):
        a, b = (json.loads(p.read_text())["metrics"] for p in finals)
        line += f"; final {a} vs one process {b}"
    print(line)
EOF
rm -rf "$runs"
