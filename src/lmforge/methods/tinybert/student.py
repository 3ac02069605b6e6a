"""The TinyBERT student: a smaller BERT built from `tinybert.student.*`, sharing the teacher's
vocabulary and tokenizer, plus the projections W_e, W_h of the distillation losses.

`Student` holds both in one module, so that one optimizer, one checkpoint and one device move
cover them; its forward is the student's own, so evaluation and prediction see a plain classifier.
`final/` of a run holds the student alone (a Hugging Face folder) and `projections.safetensors`,
which the task stage reads back when it starts from a general-stage run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import UserError
from lmforge.methods.tinybert.config import StudentConfig
from lmforge.methods.tinybert.losses import Projections

PROJECTIONS_FILE = "projections.safetensors"


class Student(nn.Module):
    def __init__(self, model: nn.Module, projections: Projections):
        super().__init__()
        self.model = model
        self.projections = projections

    def forward(self, **inputs):
        return self.model(**inputs)

    def encoder(self) -> nn.Module:
        """The transformer without a task head (for hooks and hidden states)."""
        return getattr(self.model, "bert", self.model)

    def save(self, tokenizer, folder: Path) -> None:
        self.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()}
        save_file(state, str(folder / PROJECTIONS_FILE))


def check_shape(shape: StudentConfig, teacher_config) -> None:
    """The attention loss pairs each student head with a teacher head (the paper keeps h = 12)."""
    if shape.heads != teacher_config.num_attention_heads:
        raise UserError(
            f"tinybert.student.heads ({shape.heads}) must equal the teacher's attention heads "
            f"({teacher_config.num_attention_heads}): the attention loss compares them head by head"
        )
    if shape.hidden % shape.heads:
        raise UserError(f"tinybert.student: hidden ({shape.hidden}) must be a multiple of heads ({shape.heads})")


def student_config(teacher_config, shape: StudentConfig, labels: list[str] | None = None):
    """A BertConfig of the student's shape with the teacher's vocabulary, positions and activation."""
    from transformers import BertConfig

    check_shape(shape, teacher_config)
    extra = {}
    if labels is not None:
        extra = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    return BertConfig(
        vocab_size=teacher_config.vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=teacher_config.max_position_embeddings,
        type_vocab_size=getattr(teacher_config, "type_vocab_size", 2),
        pad_token_id=teacher_config.pad_token_id,
        hidden_act=getattr(teacher_config, "hidden_act", "gelu"),
        layer_norm_eps=getattr(teacher_config, "layer_norm_eps", 1e-12),
        **extra,
    )


def new_student(teacher_config, shape: StudentConfig, labels: list[str] | None, seed: int) -> Student:
    """A randomly initialised student: an encoder (general stage) or a classifier (task stage)."""
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = student_config(teacher_config, shape, labels)
    model = BertModel(config) if labels is None else BertForSequenceClassification(config)
    return Student(model, Projections(shape.hidden, teacher_config.hidden_size))


def student_from(folder: Path, teacher_config, labels: list[str], seed: int) -> Student:
    """The task stage's student, starting from a general-stage run's `final/` (encoder and projections);
    the classifier head is new (seeded)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = student_config(teacher_config, shape_of(folder), labels)
    model = BertForSequenceClassification.from_pretrained(str(folder), config=config)
    projections = Projections(config.hidden_size, teacher_config.hidden_size)
    projections.load_state_dict(load_file(str(folder / PROJECTIONS_FILE)))
    return Student(model, projections)


def shape_of(folder: Path) -> StudentConfig:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    return StudentConfig(
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        heads=config.num_attention_heads,
        intermediate=config.intermediate_size,
    )
