"""logits_at equals indexing the full logits: GPT-2, Gemma 3 (with and without soft-capping), and the
fallback for a model class it does not know."""

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, OPTConfig, OPTForCausalLM

from lmforge.models.causal_lm import tiny_gpt2
from lmforge.models.lm_logits import DIRECT_HEADS, last_hidden_states, logits_at


def tiny_gemma(softcap):
    config = Gemma3TextConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, final_logit_softcapping=softcap,
    )  # fmt: skip
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


def tiny_opt():
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=300, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                       word_embed_proj_dim=32, max_position_embeddings=64)  # fmt: skip
    return OPTForCausalLM(config).eval()


@pytest.mark.parametrize(
    "make", [lambda: tiny_gpt2(seed=3)[0], lambda: tiny_gemma(None), lambda: tiny_gemma(5.0), tiny_opt]
)
def test_logits_at_chosen_positions_equal_the_full_logits_there(make):
    model = make()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 300, (3, 9), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0  # right padding
    attention[2, 4:] = 0
    positions = torch.rand(3, 9, generator=generator) > 0.5
    positions &= attention.bool()
    inputs = {"input_ids": ids, "attention_mask": attention}
    with torch.no_grad():
        full = model(**inputs).logits[positions]
        picked = logits_at(model, inputs, positions)
    assert picked.shape == full.shape == (int(positions.sum()), model.config.vocab_size)
    assert torch.allclose(picked, full, atol=1e-5)
    if type(model).__name__ == "Gemma3ForCausalLM" and model.config.final_logit_softcapping:
        assert picked.abs().max() <= 5.0  # the cap was applied on the fast path
    assert (type(model).__name__ in DIRECT_HEADS) == (not isinstance(model, OPTForCausalLM))


@pytest.mark.parametrize("make", [lambda: tiny_gpt2(seed=3)[0], lambda: tiny_gemma(None), tiny_opt])
def test_last_hidden_states_are_what_the_output_layer_reads(make):
    model = make()
    inputs = {"input_ids": torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(2))}
    with torch.no_grad():
        hidden = last_hidden_states(model, inputs)
        logits = model(**inputs).logits
    head = model.get_output_embeddings()(hidden)
    if getattr(model.config, "final_logit_softcapping", None):
        head = torch.tanh(head / model.config.final_logit_softcapping) * model.config.final_logit_softcapping
    assert torch.allclose(head, logits, atol=1e-5)
