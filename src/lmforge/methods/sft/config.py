"""Options of supervised fine-tuning of a causal LM on (prompt, completion) pairs.

The loss is the cross-entropy of the completion tokens (and the EOS after them) given the prompt,
as in instruction tuning (Ouyang et al. 2022, section 3.5; Wei et al. 2022, FLAN); prompt tokens
and padding are not trained on. There is no paper table to copy for a 270M model on CPU, so the
defaults are the common ones, each with its source:
- LoRA (Hu et al. 2022) on every linear layer of the transformer block, since adapting them all
  is what matched full fine-tuning in QLoRA (Dettmers et al. 2023, section 4 and Figure 2); the
  names are Llama / Gemma's (GPT-2's are c_attn, c_proj, c_fc);
- r=8 and dropout 0.1 as in the `lora` method; alpha=16 (update scale 2) is not from the LoRA
  paper (its section 4.1 sets alpha to the first r tried and does not tune it): it is the value
  of the authors' RoBERTa GLUE scripts (microsoft/LoRA, examples/NLU, `--lora_r 8 --lora_alpha 16`)
  and a common default since (alpha = 2r); QLoRA used dropout 0.1 for models up to 13B;
- zero-shot prompts: the model is trained, and later evaluated (`lmforge eval-gen`), in the same
  format, without few-shot exemplars taking up the context;
- chat records (`messages_column`): the loss on every assistant turn, as TRL's `assistant_only_loss`
  and axolotl's `roles_to_train: ["assistant"]` (data/chat.py);
- packing off, so that a batch is a batch of examples as in every recipe; on, rows are filled by
  best-fit decreasing as TRL's default `packing_strategy="bfd"` (data/packing.py).
"""

from dataclasses import dataclass

from lmforge.config import option

BLOCK_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class SftConfig:
    lora: bool = option(True, "train LoRA adapters on frozen weights; false = full fine-tuning of every weight")
    lora_r: int = option(8, "rank of each LoRA update (the lora method's default, LoRA paper Table 2)", min=1)
    lora_alpha: float = option(
        16.0,
        "LoRA scale numerator: the update is multiplied by alpha / r (16 = 2r: the LoRA authors' RoBERTa "
        "GLUE scripts and a common default, not a value from the paper)",
        min=0.0,
        exclusive_min=True,
    )
    lora_dropout: float = option(
        0.1, "dropout on the adapters' input (LoRA paper Table 9; QLoRA <= 13B)", min=0.0, max=0.9
    )
    target_modules: list[str] = option(
        BLOCK_LINEAR_LAYERS,
        "layers LoRA adapts, by name suffix: every linear layer of a Gemma / Llama block (QLoRA); "
        "GPT-2: c_attn, c_proj, c_fc",
    )
    trainable_modules: list[str] = option([], "modules trained in full beside LoRA and saved with the adapter")
    shots: int = option(
        0, "worked exemplars before each task prompt (GSM8K 0-8, MBPP 0-3); 0 = train as evaluated, zero-shot", min=0
    )
    prompt_column: str = option("prompt", "column holding the prompt in a .jsonl/.csv/.tsv file")
    completion_column: str = option("completion", "column holding the completion in a .jsonl/.csv/.tsv file")
    messages_column: str = option(
        "",
        "column of a .jsonl file holding chat records, a list of {role: system|user|assistant, content} messages "
        "trained on their assistant turns (e.g. messages); empty = prompt/completion pairs",
    )
    chat_template: str = option(
        "",
        "a Jinja chat template file to render chat records with (saved with the tokenizer in final/); empty = the "
        "tokenizer's own, or `role: content` lines when it has none",
    )
    packing: bool = option(
        False,
        "pack several examples into each row of model.max_length tokens (examples do not attend to each other; "
        "train.batch_size then counts rows); off as in TRL and torchtune",
    )
    dev_size: int = option(
        100, "pairs held out of the training data for the evaluation loss when data.eval is empty", min=1
    )
