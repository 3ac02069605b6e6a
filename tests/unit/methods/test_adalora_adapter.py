import torch

from lmforge.adapters.lora import inject_adapters
from lmforge.methods.adalora.adapter import load_adalora, save_adalora
from lmforge.methods.adalora.config import AdaloraConfig
from lmforge.methods.adalora.layers import SVDLinear, svd_layers
from lmforge.models.classifier import load_classifier

LABELS = ["negative", "positive"]
OPTIONS = AdaloraConfig(init_r=4, target_r=2, target_modules=["query", "value"], lora_dropout=0.0)


def pruned_model():
    """tiny-bert with SVD adapters whose triplets were pruned unevenly, one matrix down to rank 0."""
    model, tok = load_classifier("tiny-bert", LABELS, seed=0, dropout=0.0)
    inject_adapters(
        model,
        OPTIONS.target_modules,
        lambda name, base: SVDLinear(base, OPTIONS.init_r, OPTIONS.lora_alpha, 0.0),
        ["classifier"],
    )
    kept = [[True, False, True, True], [False, False, False, False], [True, False, False, False], [True] * 4]
    with torch.no_grad():
        for layer, keep in zip(svd_layers(model).values(), kept):
            layer.lora_E.normal_().mul_(torch.tensor(keep, dtype=torch.float).view(-1, 1))
    return model.eval(), tok


def inputs(tok):
    return tok(["a good movie", "the worst film of the year"], padding=True, return_tensors="pt")


def test_save_trims_to_final_ranks_and_load_gives_identical_logits(tmp_path):
    model, tok = pruned_model()
    ranks = save_adalora(model, tmp_path, OPTIONS, total_steps=400, base_model="tiny-bert")
    assert sorted(ranks.values()) == [0, 1, 3, 4]
    fresh, _ = load_classifier("tiny-bert", LABELS, seed=0, dropout=0.0)
    loaded = load_adalora(fresh, tmp_path).eval()
    assert sorted(layer.r for layer in svd_layers(loaded).values()) == [0, 1, 3, 4]  # rank 0 included
    with torch.no_grad():
        assert torch.allclose(model(**inputs(tok)).logits, loaded(**inputs(tok)).logits, atol=1e-6)


def test_peft_loads_our_adalora_adapter_with_the_same_logits(tmp_path):
    from peft import PeftModel

    model, tok = pruned_model()
    save_adalora(model, tmp_path, OPTIONS, total_steps=400, base_model="tiny-bert")
    base, _ = load_classifier("tiny-bert", LABELS, seed=0, dropout=0.0)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    with torch.no_grad():
        ours, theirs = model(**inputs(tok)).logits, peft_model(**inputs(tok)).logits
    assert torch.allclose(ours, theirs, atol=1e-6), (ours - theirs).abs().max()


def test_report_names_matrices_as_the_paper_and_shades_by_rank():
    from lmforge.methods.adalora.report import rank_heatmap, split_name

    assert split_name("bert.encoder.layer.3.attention.self.query") == (3, "W_q")
    assert split_name("bert.encoder.layer.0.attention.output.dense") == (0, "W_o")
    assert split_name("bert.encoder.layer.5.output.dense") == (5, "W_f2")
    assert split_name("classifier") == (None, "classifier")
    html = rank_heatmap({"e.layer.1.intermediate.dense": 0, "e.layer.0.intermediate.dense": 12}, init_r=12)
    assert html.index("layer 0") < html.index("layer 1")  # columns sorted by layer
    assert "rgba(214,39,40,1.000)" in html and "rgba(214,39,40,0.000)" in html
