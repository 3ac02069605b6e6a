import pytest
import torch
from transformers import BertConfig, BertModel

from lmforge.errors import UserError
from lmforge.methods.tinybert.attention import AttentionScores
from lmforge.methods.tinybert.losses import (
    Projections,
    attention_loss,
    intermediate_losses,
    masked_mse,
    soft_cross_entropy,
    uniform_layer_map,
)


def tiny(layers=2, hidden=32, heads=4, seed=0, attn="eager"):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, max_position_embeddings=32, attn_implementation=attn,
    )  # fmt: skip
    return BertModel(config).eval()


def batch():
    ids = torch.tensor([[2, 5, 7, 9, 3, 0, 0], [2, 11, 13, 17, 19, 23, 3]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hooked_scores_equal_a_reference_computation(attn):
    model = tiny(attn=attn)
    ids, mask = batch()
    with torch.no_grad(), AttentionScores(model) as attention:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        scores = attention.pop()
    assert len(scores) == 2 and scores[0].shape == (2, 4, 7, 7)
    for i, layer in enumerate(model.encoder.layer):
        h = out.hidden_states[i]  # the layer's input
        q = layer.attention.self.query(h).view(2, 7, 4, 8).transpose(1, 2)
        k = layer.attention.self.key(h).view(2, 7, 4, 8).transpose(1, 2)
        assert torch.allclose(scores[i], q @ k.transpose(-1, -2) / 8**0.5, atol=1e-6)


def test_a_lora_teacher_merged_gives_the_scores_of_its_adapter_forward():
    # the recipe merges a LoRA / AdaLoRA teacher before hooking it: the scores must be those that
    # the adapters' own forward computes (B is random here, so the adapters change the scores)
    from lmforge.adapters.lora import inject_lora, remove_lora

    model = tiny()
    inject_lora(model, ["query", "key", "value"], r=2, alpha=4, dropout=0.0, trainable_modules=[])
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    ids, mask = batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        reference = []
        for i, layer in enumerate(model.encoder.layer):
            h = out.hidden_states[i]
            q = layer.attention.self.query(h).view(2, 7, 4, 8).transpose(1, 2)  # through the adapter
            k = layer.attention.self.key(h).view(2, 7, 4, 8).transpose(1, 2)
            reference.append(q @ k.transpose(-1, -2) / 8**0.5)
        plain = tiny()
        with AttentionScores(plain) as attention:
            plain(input_ids=ids, attention_mask=mask)
            base_scores = attention.pop()
        with AttentionScores(remove_lora(model)) as attention:
            model(input_ids=ids, attention_mask=mask)
            scores = attention.pop()
    for ours, theirs, base in zip(scores, reference, base_scores):
        assert torch.allclose(ours, theirs, atol=1e-5)
        assert not torch.allclose(ours, base, atol=1e-2)  # the adapters did change them


def test_softmax_of_masked_scores_equals_the_models_attention_probabilities():
    model = tiny(attn="eager")
    ids, mask = batch()
    with torch.no_grad(), AttentionScores(model) as attention:
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        scores = attention.pop()
    hidden = (1 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    for ours, theirs in zip(scores, out.attentions):
        assert torch.allclose(torch.softmax(ours + hidden, dim=-1), theirs, atol=1e-6)


def test_hooks_are_removed_and_scores_carry_gradients():
    model = tiny().train()
    ids, mask = batch()
    with AttentionScores(model) as attention:
        model(input_ids=ids, attention_mask=mask)
        scores = attention.pop()
        with pytest.raises(RuntimeError, match="no complete forward pass"):
            attention.pop()
    scores[0].sum().backward()
    assert model.encoder.layer[0].attention.self.query.weight.grad is not None
    assert not model.encoder.layer[0].attention.self.query._forward_hooks


def test_uniform_layer_map():
    assert uniform_layer_map(3, 6) == [2, 4, 6]
    assert uniform_layer_map(4, 12) == [3, 6, 9, 12]
    with pytest.raises(UserError, match="multiple"):
        uniform_layer_map(4, 6)


def test_losses_ignore_padding():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    b_changed_pad = b.clone()
    b_changed_pad[0, 2] += 100.0
    assert masked_mse(a, b, mask) == pytest.approx(masked_mse(a, b_changed_pad, mask).item())
    real = torch.cat([(a[0, :2] - b[0, :2]) ** 2, (a[1] - b[1]) ** 2])
    assert masked_mse(a, b, mask).item() == pytest.approx(real.mean().item(), rel=1e-6)
    s, t = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    t2 = t.clone()
    t2[0, :, 2, :] += 50.0  # a padded query row
    t2[0, :, :, 2] -= 50.0  # and a padded key column
    assert attention_loss(s, t, mask).item() == pytest.approx(attention_loss(s, t2, mask).item())
    pairs = [((s[0, :, :2, :2] - t[0, :, :2, :2]) ** 2).flatten(), ((s[1] - t[1]) ** 2).flatten()]
    assert attention_loss(s, t, mask).item() == pytest.approx(torch.cat(pairs).mean().item(), rel=1e-6)


def test_soft_cross_entropy():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(z, -1)
    assert soft_cross_entropy(z, z, 1.0).item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-6)
    assert soft_cross_entropy(z, z, 2.0).item() < soft_cross_entropy(z, torch.tensor([[-1.0, 0.0, 2.0]]), 2.0).item()


def test_intermediate_losses_follow_the_layer_map():
    teacher, student = tiny(layers=4, hidden=32, seed=1), tiny(layers=2, hidden=16, seed=2)
    ids, mask = batch()
    with AttentionScores(teacher) as ta, AttentionScores(student) as sa:
        t = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        s = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        t_scores, s_scores = ta.pop(), sa.pop()
    proj = Projections(16, 32)
    losses = intermediate_losses(s.hidden_states, t.hidden_states, s_scores, t_scores, mask, [2, 4], proj)
    assert list(losses) == ["embedding", "attention/1", "hidden/1", "attention/2", "hidden/2"]
    assert losses["attention/2"].item() == pytest.approx(attention_loss(s_scores[1], t_scores[3], mask).item())
    expected = masked_mse(proj.hidden(s.hidden_states[1]), t.hidden_states[2], mask)
    assert losses["hidden/1"].item() == pytest.approx(expected.item())
    sum(losses.values()).backward()
    assert proj.embedding.weight.grad is not None and proj.hidden.weight.grad is not None
