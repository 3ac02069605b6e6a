"""Local explanations of a classifier's prediction: a score per word piece and per word.

Feature attribution, the first family of local explanations in Zhao et al. 2023 ("Explainability for
Large Language Models: A Survey", section 3.1.1), in its four kinds: gradients, perturbation,
surrogate models and attention. The explained output is the softmax probability of the target label
(the predicted one unless a label is given), the same quantity ERASER's faithfulness metrics move.

  grad        L2 norm over the embedding of d p / d e_t (Simonyan et al. 2014; Captum Saliency)
  gradxinput  (d p / d e_t) . e_t, signed (Shrikumar et al. 2017; Captum InputXGradient)
  ig          integrated gradients (Sundararajan et al. 2017, eq. 1): (e - e') . mean over the path of
              d p / d e, from a baseline e' that keeps [CLS] / [SEP] and replaces every other piece by
              [PAD]; 50 Gauss-Legendre steps (Captum IntegratedGradients on the input embeddings)
  smoothgrad  grad averaged over 20 copies of the embeddings with Gaussian noise, sigma 0.15 x the
              embeddings' spread (Smilkov et al. 2017, section 3; Captum NoiseTunnel)
  attention   last layer's attention from [CLS] to each piece, mean over heads (raw attention)
  rollout     attention rollout (Abnar & Zuidema 2020, section 3): per layer A' = 0.5 A + 0.5 I with
              A the head mean, rows renormalised, multiplied from the first layer up; the [CLS] row
  occlusion   leave one out: p(x) - p(x with piece t replaced by [MASK]) (Captum FeatureAblation)
  lime        LIME over words (Ribeiro et al. 2016): 200 samples of words replaced by [MASK], weighted
              by LIME's text kernel exp(-d^2 / 0.25^2) on the cosine distance of the word-presence
              vectors, a ridge regression (alpha 1) as surrogate (Captum Lime, kernel written here)
  shap        Kernel SHAP over words (Lundberg & Lee 2017, theorem 2), 200 samples, words replaced by
              [MASK] (Captum KernelShap)
  random      uniform random scores, seeded: the floor every faithfulness table needs

grad, smoothgrad, attention, rollout (and random) are magnitudes (never negative); the others are signed,
positive where a piece supports the target. Special tokens get 0. Words are the tokenizer's own
pre-tokenized words; a word's score is the sum of its pieces' scores. lime and shap score words, not
pieces: each piece gets an equal share of its word's score so that pieces still sum to the word.

Written here (Captum has no such pieces): raw attention, rollout, the LIME text kernel, baselines,
word-piece to word aggregation, batching over many texts (gradient and attention methods run whole
batches through Captum at once; perturbation methods batch each text's perturbations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from lmforge.errors import UserError
from lmforge.explain.methods import ATTENTION_METHODS, GRADIENT_METHODS, METHODS


@dataclass
class Encoded:
    """One text as the model sees it, with the map from word pieces back to words."""

    text: str
    input_ids: list[int]  # (T,) with [CLS] ... [SEP]
    pieces: list[str]  # (T,)
    piece_word: list[int]  # (T,) word index of each piece; -1 for special tokens
    words: list[str]  # (W,) the text's words as the tokenizer split them

    @property
    def content(self) -> np.ndarray:
        """Positions of the pieces that are not special tokens."""
        return np.flatnonzero(np.asarray(self.piece_word) >= 0)


@dataclass
class Attribution:
    """One explained prediction: per-piece scores (raw) and per-word sums."""

    method: str
    text: str
    target: int  # index of the explained label
    target_label: str
    labels: list[str]  # the model's labels, in order
    probabilities: list[float]  # p(label | text) for every label, in label order
    input_ids: list[int]
    pieces: list[str]
    piece_word: list[int]
    piece_scores: np.ndarray  # (T,), 0 at special tokens
    words: list[str] = field(default_factory=list)
    word_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (W,)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "text": self.text,
            "target": self.target_label,
            "probabilities": dict(zip(self.labels, self.probabilities)),
            "words": self.words,
            "word_scores": [float(s) for s in self.word_scores],
            "pieces": self.pieces,
            "piece_scores": [float(s) for s in self.piece_scores],
        }


def encode_text(tokenizer, text: str, max_length: int) -> Encoded:
    """Word pieces of `text` and the word each belongs to, from a fast tokenizer's offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("explanations need a fast (Rust) tokenizer to map word pieces back to words")
    enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    word_of_piece = enc.word_ids()
    order = {w: i for i, w in enumerate(dict.fromkeys(w for w in word_of_piece if w is not None))}
    spans: dict[int, list[int]] = {}
    for w, (start, end) in zip(word_of_piece, enc["offset_mapping"]):
        if w is not None:
            span = spans.setdefault(order[w], [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)
    return Encoded(
        text=text,
        input_ids=list(enc["input_ids"]),
        pieces=tokenizer.convert_ids_to_tokens(enc["input_ids"]),
        piece_word=[-1 if w is None else order[w] for w in word_of_piece],
        words=[text[s:e] for s, e in (spans[i] for i in range(len(spans)))],
    )


def word_sums(piece_scores: np.ndarray, piece_word: Sequence[int], n_words: int) -> np.ndarray:
    """(W,) sum of the piece scores of each word; special tokens (-1) are left out."""
    words = np.zeros(n_words)
    index = np.asarray(piece_word)
    keep = index >= 0
    np.add.at(words, index[keep], piece_scores[keep])
    return words


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids right-padded with `pad_id`, and the (B, T) attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema 2020: attentions, one (B, heads, T, T) per layer -> (B, T, T) rolled out."""
    rolled = None
    for layer in attentions:
        a = layer.float().mean(dim=1)  # (B, T, T)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)  # the residual connection
        a = a / a.sum(dim=-1, keepdim=True)
        rolled = a if rolled is None else a @ rolled
    return rolled


def lime_text_kernel(width: float = 0.25):
    """LIME's text similarity (lime_text.py): exp(-d^2 / width^2), d the cosine distance between the
    all-present word vector and a sample's word-presence vector (its kernel width 25 on 100 x d)."""

    def similarity(original, perturbed, interpretable, **kwargs):
        z = interpretable.float().flatten()  # (W,) 1 where the word is kept
        cosine = z.sum() / (z.norm() * z.numel() ** 0.5).clamp_min(1e-12)
        return torch.exp(-((1.0 - cosine) ** 2) / width**2)

    return similarity


def require_captum():
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        raise UserError("explanations need Captum: pip install 'lmforge[explain]'") from None


class Explainer:
    """Attributions for a sequence classifier (any Hugging Face model with a `.logits` output)."""

    def __init__(self, model, tokenizer, labels: list[str], max_length: int = 128, batch_size: int = 16):
        require_captum()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id
        self.mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id

    # ---- the explained output ------------------------------------------------------------------

    def probabilities_of_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, C) softmax probabilities."""
        return torch.softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)

    def probabilities_of_embeddings(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) word embeddings (position and type embeddings are added by the model) -> (B, C)."""
        return torch.softmax(self.model(inputs_embeds=embeddings, attention_mask=mask).logits.float(), dim=-1)

    @torch.no_grad()
    def probabilities(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """(N, C) probabilities for token-id rows of any lengths, in batches."""
        out = []
        for start in range(0, len(rows), self.batch_size):
            ids, mask = pad_batch(rows[start : start + self.batch_size], self.pad_id, self.device)
            out.append(self.probabilities_of_ids(ids, mask).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.labels)))

    def target_index(self, target: str | int | None, probabilities: np.ndarray) -> int:
        if target is None:
            return int(probabilities.argmax())
        if isinstance(target, int) and 0 <= target < len(self.labels):
            return target
        if str(target) in self.labels:
            return self.labels.index(str(target))
        raise UserError(f"target label {target!r} is not one of the model's labels: {', '.join(self.labels)}")

    # ---- the public entry point ----------------------------------------------------------------

    def explain(
        self,
        texts: Sequence[str],
        method: str = "ig",
        target: str | int | None = None,
        n_samples: int = 200,
        seed: int = 0,
        progress: bool = False,
    ) -> list[Attribution]:
        """One Attribution per text; `target` a label name or index, or None for the predicted label.
        `n_samples` is LIME's and SHAP's sample count; `seed` fixes their samples and the random scores;
        `progress` shows a bar over the batches."""
        if method not in METHODS:
            raise UserError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
        texts = list(texts)
        if not texts or any(not t.strip() for t in texts):
            raise UserError("nothing to explain: give at least one non-empty text")
        encoded = [encode_text(self.tokenizer, t, self.max_length) for t in texts]
        probs = self.probabilities([e.input_ids for e in encoded])
        targets = [self.target_index(target, p) for p in probs]
        torch.manual_seed(seed)  # LIME / SHAP sampling, smoothgrad noise
        rng = np.random.default_rng(seed)
        if method == "random":
            scores = [rng.random(len(e.input_ids)) for e in encoded]
        else:
            scores = [np.zeros(0)] * len(encoded)
            by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))  # little padding
            starts = range(0, len(by_length), self.batch_size)
            for start in tqdm(starts, desc=f"explain ({method})", disable=not progress, leave=False):
                chosen = by_length[start : start + self.batch_size]
                chunk, chunk_targets = [encoded[i] for i in chosen], [targets[i] for i in chosen]
                if method in GRADIENT_METHODS:
                    got = self._gradient_scores(method, chunk, chunk_targets)
                elif method in ATTENTION_METHODS:
                    got = self._attention_scores(method, chunk)
                else:
                    got = [self._perturbation_scores(method, e, t, n_samples) for e, t in zip(chunk, chunk_targets)]
                for i, piece_scores in zip(chosen, got):
                    scores[i] = piece_scores
        return [self._attribution(method, e, p, t, s) for e, p, t, s in zip(encoded, probs, targets, scores)]

    def _attribution(self, method: str, e: Encoded, probs: np.ndarray, target: int, scores: np.ndarray):
        scores = np.where(np.asarray(e.piece_word) >= 0, scores, 0.0)
        return Attribution(
            method=method,
            text=e.text,
            target=target,
            target_label=self.labels[target],
            labels=self.labels,
            probabilities=[float(p) for p in probs],
            input_ids=e.input_ids,
            pieces=e.pieces,
            piece_word=e.piece_word,
            piece_scores=scores,
            words=e.words,
            word_scores=word_sums(scores, e.piece_word, len(e.words)),
        )

    # ---- gradients: one Captum call per batch of texts -----------------------------------------

    def _gradient_scores(self, method: str, chunk: list[Encoded], targets: list[int]) -> list[np.ndarray]:
        from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

        ids, mask = pad_batch([e.input_ids for e in chunk], self.pad_id, self.device)
        embed = self.model.get_input_embeddings()
        with torch.no_grad():
            embeddings = embed(ids)  # (B, T, D)
        embeddings.requires_grad_()
        target = torch.tensor(targets, device=self.device)
        forward = self.probabilities_of_embeddings
        if method == "ig":
            baseline_ids = ids.clone()  # [CLS] / [SEP] and padding kept, every content piece -> [PAD]
            for i, e in enumerate(chunk):
                baseline_ids[i, torch.as_tensor(e.content, device=self.device)] = self.pad_id
            with torch.no_grad():
                baseline = embed(baseline_ids)
            raw = (
                IntegratedGradients(forward)
                .attribute(
                    embeddings,
                    baselines=baseline,
                    target=target,
                    additional_forward_args=(mask,),
                    n_steps=50,
                    internal_batch_size=self.batch_size * 10,  # rows (text x step) per forward pass
                )
                .sum(-1)
            )
        elif method == "gradxinput":
            raw = InputXGradient(forward).attribute(embeddings, target=target, additional_forward_args=(mask,)).sum(-1)
        elif method == "grad":
            raw = Saliency(forward).attribute(embeddings, target=target, additional_forward_args=(mask,), abs=False)
            raw = raw.norm(dim=-1)
        else:  # smoothgrad: noise scaled to the spread of these embeddings
            sigma = 0.15 * (embeddings.max() - embeddings.min()).item()
            raw = (
                NoiseTunnel(Saliency(forward))
                .attribute(
                    embeddings,
                    nt_type="smoothgrad",
                    nt_samples=20,
                    nt_samples_batch_size=self.batch_size,
                    stdevs=sigma,
                    target=target,
                    additional_forward_args=(mask,),
                    abs=False,
                )
                .norm(dim=-1)
            )
        raw = raw.detach().float().cpu().numpy()
        return [raw[i, : len(e.input_ids)] for i, e in enumerate(chunk)]

    # ---- attention ------------------------------------------------------------------------------

    @torch.no_grad()
    def _attention_scores(self, method: str, chunk: list[Encoded]) -> list[np.ndarray]:
        ids, mask = pad_batch([e.input_ids for e in chunk], self.pad_id, self.device)
        # sdpa returns no attention weights: switch to eager attention for this call only
        before = self.model.config._attn_implementation
        if before != "eager":
            self.model.set_attn_implementation("eager")
        try:
            attentions = self.model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        finally:
            if before != "eager":
                self.model.set_attn_implementation(before)
        if method == "attention":
            from_cls = attentions[-1].float().mean(dim=1)[:, 0, :]  # (B, T)
        else:
            from_cls = attention_rollout(attentions)[:, 0, :]
        raw = from_cls.cpu().numpy()
        return [raw[i, : len(e.input_ids)] for i, e in enumerate(chunk)]

    # ---- perturbation: one text at a time, its perturbations batched ----------------------------

    def _perturbation_scores(self, method: str, e: Encoded, target: int, n_samples: int) -> np.ndarray:
        """Captum perturbs the content pieces only; the forward function puts [CLS] / [SEP] back."""
        from captum._utils.models.linear_model import LinearModel
        from captum.attr import FeatureAblation, KernelShap, Lime

        content_at = torch.as_tensor(e.content, device=self.device)
        ids = torch.tensor(e.input_ids, device=self.device)
        content = ids[content_at].unsqueeze(0)  # (1, T_content)

        def forward(content_ids: torch.Tensor) -> torch.Tensor:  # (P, T_content) -> (P, C)
            full = ids.unsqueeze(0).repeat(content_ids.shape[0], 1)
            full[:, content_at] = content_ids
            return self.probabilities_of_ids(full, torch.ones_like(full))

        words = torch.tensor([e.piece_word[i] for i in e.content], device=self.device).unsqueeze(0)  # (1, T_c)
        common = {"baselines": self.mask_id, "target": target, "perturbations_per_eval": self.batch_size}
        word_level = method in ("lime", "shap")
        with torch.no_grad():
            if word_level and len(e.words) == 1:
                # one player: its Shapley value, and LIME's slope, is the drop when the word is masked
                raw = FeatureAblation(forward).attribute(content, feature_mask=words, **common)
            elif method == "occlusion":
                raw = FeatureAblation(forward).attribute(content, **common)
            elif method == "lime":
                surrogate = LinearModel(train_fn=weighted_ridge, alpha=1.0)  # LIME's Ridge(alpha=1)
                lime = Lime(forward, interpretable_model=surrogate, similarity_func=lime_text_kernel())
                raw = lime.attribute(content, feature_mask=words, n_samples=n_samples, **common)
            else:
                shap = KernelShap(forward)
                shap.interpretable_model = LinearModel(train_fn=weighted_ridge, alpha=0.0)  # its least squares
                raw = shap.attribute(content, feature_mask=words, n_samples=n_samples, **common)
        raw = raw[0].double().cpu().numpy()
        if word_level:  # every piece holds its word's score: share it out
            of_word = words[0].cpu().numpy()
            raw = raw / np.bincount(of_word)[of_word]
        scores = np.zeros(len(e.input_ids))
        scores[e.content] = raw
        return scores


def weighted_ridge(model, dataloader, construct_kwargs: dict, **fit_kwargs) -> dict:
    """Captum `LinearModel` trainer: weighted least squares with an unpenalised intercept, in closed
    form (float64): min_b sum_i w_i (y_i - b0 - x_i b)^2 + alpha |b|^2. Replaces the scikit-learn
    models Captum would import (seconds of import for a solve of a few hundred rows)."""
    xs, ys, ws = [], [], []
    for batch in dataloader:
        x, y, *w = batch
        xs.append(x.double())
        ys.append(y.double().reshape(len(x), -1))
        ws.append(w[0].double().reshape(-1) if w else torch.ones(len(x), dtype=torch.float64))
    x, y, w = torch.cat(xs), torch.cat(ys), torch.cat(ws)  # (N, F), (N, 1), (N,)
    w = w / w.sum()
    x_mean, y_mean = w @ x, w @ y  # (F,), (1,)
    root_w = w.sqrt().unsqueeze(1)
    alpha = float(construct_kwargs.get("alpha", 0.0))
    # [sqrt(W) Xc; sqrt(alpha) I] b = [sqrt(W) yc; 0]: ridge as least squares, minimum norm if singular
    a = torch.cat([root_w * (x - x_mean), alpha**0.5 * torch.eye(x.shape[1], dtype=torch.float64)])
    b = torch.cat([root_w * (y - y_mean), torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64)])
    coef = torch.linalg.lstsq(a, b, driver="gelsd").solution  # (F, 1)
    intercept = y_mean - x_mean @ coef
    model._construct_model_params(norm_type=None, weight_values=coef.T.float(), bias_value=intercept.float().reshape(1))
    return {}
