"""A causal LM's logits at chosen positions only.

Training on completions (SFT's loss, DPO's sequence log-probabilities) needs the next-token logits at
the completion's positions, not at the prompt's or the padding's. The output layer is a large part of
a small model's forward pass: Gemma 3 270M's maps 640 hidden units to a 262,144-token vocabulary, 168M
multiply-adds per position against about 100M for all 18 blocks together. So for the models below,
whose logits are `lm_head(body(...).last_hidden_state)` (Gemma also soft-caps them when its config
says so), the body runs on the whole batch and the output layer only on the chosen positions; any
other model (or one wrapped for distributed training, whose wrapper must see the forward call) runs
whole and its logits are indexed afterwards. Same numbers either way (tested).
"""

from __future__ import annotations

import torch

# model class -> attribute holding the body whose last hidden state the output layer reads
DIRECT_HEADS = {
    "GPT2LMHeadModel": "transformer",
    "Gemma3ForCausalLM": "model",
    "Gemma2ForCausalLM": "model",
    "GemmaForCausalLM": "model",
    "LlamaForCausalLM": "model",
    "MistralForCausalLM": "model",
    "Qwen2ForCausalLM": "model",
    "Qwen3ForCausalLM": "model",
}


def logits_at(model, inputs: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """`model(**inputs).logits[positions]`: (N, V) for a boolean `positions` of shape (B, T) with N
    True entries, in row-major order, computing the output layer at those positions only."""
    if type(model).__name__ not in DIRECT_HEADS:
        return model(**inputs).logits[positions]
    return output_layer(model, last_hidden_states(model, inputs)[positions])  # (N, V)


def output_layer(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's next-token logits (N, V) from hidden states (N, H) that `last_hidden_states` gave, for
    a caller that also reads the hidden states (a reward model trained with a language-modelling loss)."""
    logits = model.get_output_embeddings()(hidden)  # (N, V)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def last_hidden_states(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hidden states (B, T, H) the output layer reads, without computing the output layer where the
    model class is known (a reward model's head reads them instead)."""
    body = DIRECT_HEADS.get(type(model).__name__)
    if body is None:
        return model(**inputs, output_hidden_states=True).hidden_states[-1]
    return getattr(model, body)(**inputs).last_hidden_state
