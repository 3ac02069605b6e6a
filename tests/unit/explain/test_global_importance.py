from shortcut_task import LABELS, MARKER, shortcut_model  # noqa: F401 (a fixture)

from lmforge.explain.attribution import Explainer
from lmforge.explain.global_importance import token_importance


def test_the_shortcut_tops_its_label(shortcut_model):
    model, tokenizer, texts, _ = shortcut_model
    ranked = token_importance(Explainer(model, tokenizer, LABELS, batch_size=16), texts[:32], "occlusion", min_count=3)
    assert ranked["with"][0].word == MARKER
    assert ranked["with"][0].count == 16  # every second text carries it, and all are predicted "with"
    assert MARKER not in [r.word for r in ranked["without"]]
    assert all(r.count >= 3 for rows in ranked.values() for r in rows)
    assert ranked["with"][0].total == max(r.total for r in ranked["with"])
