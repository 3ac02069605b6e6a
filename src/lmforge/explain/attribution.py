"""Local explanations of a classifier's prediction: a score per word piece and per word.

Feature attribution, the first family of local explanations in Zhao et al. 2023 ("Explainability for
Large Language Models: A Survey", section 3.1.1), in its four kinds: gradients, perturbation,
surrogate models and attention. The explained output is the softmax probability of the target label
(the predicted one unless a label is given), the same quantity ERASER's faithfulness metrics move.

  grad        L2 norm over the embedding of d p / d e_t (Simonyan et al. 2014; Captum Saliency)
  gradxinput  (d p / d e_t) . e_t, signed (Shrikumar et al. 2017; Captum InputXGradient)
  ig          integrated gradients (Sundararajan et al. 2017, eq. 1): (e - e') . mean over the path of
              d p / d e, from a baseline e' that keeps [CLS] / [SEP] and replaces every other piece by
              [PAD]. By default each text's steps are chosen by its own completeness error: trapezoid
              rule from 8 steps, doubled until |sum - (p(x) - p(e'))| is within 5% of p(x) - p(e'), at
              most 256 (explain/integrated_gradients.py); with `ig_steps=N`, N Gauss-Legendre steps
              exactly as Captum's IntegratedGradients on the input embeddings (50 before). Either way
              each text reports the steps it used and its completeness error
  smoothgrad  the gradient averaged over 20 copies of the embeddings with Gaussian noise, then its L2
              norm per piece; sigma = 0.15 x (max - min) of this text's own embeddings (Smilkov et al.
              2017, section 3.1); each text's noise is drawn from its own seeded generator, so a text
              gets the same scores alone or in a batch (Captum Saliency; NoiseTunnel's sampling)
  attention   last layer's attention from [CLS] to each piece, mean over heads (raw attention)
  rollout     attention rollout (Abnar & Zuidema 2020, section 3): per layer A' = 0.5 A + 0.5 I with
              A the head mean, rows renormalised, multiplied from the first layer up; the [CLS] row
  occlusion   leave one out: p(x) - p(x with piece t replaced by [MASK]) (Captum FeatureAblation)
  lime        LIME over words (Ribeiro et al. 2016) as the authors' `lime` package does it (explain/lime.py):
              the text itself plus 199 samples that each replace a uniform number (1..W) of words by
              [MASK], kernel sqrt(exp(-D^2 / 25^2)) on D = 100 x cosine distance, Ridge(alpha=1) fit
  shap        Kernel SHAP over words (Lundberg & Lee 2017, theorem 2), 200 samples, words replaced by
              [MASK] (Captum KernelShap)
  random      uniform random scores, seeded: the floor every faithfulness table needs

grad, smoothgrad, attention, rollout (and random) are magnitudes (never negative); the others are signed,
positive where a piece supports the target. Special tokens get 0. Words are the tokenizer's own
pre-tokenized words; a word's score is the sum of its pieces' scores. lime and shap score words, not
pieces: each piece gets an equal share of its word's score so that pieces still sum to the word.

Written here (Captum has no such pieces): raw attention, rollout, LIME (explain/lime.py), baselines,
word-piece to word aggregation, batching over many texts (gradient and attention methods run whole
batches through Captum at once; perturbation methods batch each text's perturbations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lmforge.core.console import progress_bar
from lmforge.errors import UserError
from lmforge.explain.integrated_gradients import (
    MAX_STEPS,
    TOLERANCE,
    adaptive_integrated_gradients,
    check_options,
    relative_completeness_error,
)
from lmforge.explain.lime import lime_fit, lime_masks, weighted_ridge
from lmforge.explain.methods import ATTENTION_METHODS, GRADIENT_METHODS, METHODS
from lmforge.explain.words import Encoded, encode_text, mask_words, share_word_scores, word_sums

SMOOTHGRAD_SAMPLES = 20  # Smilkov et al. 2017 (section 3.1) see little change beyond 50; 20 for cost
SMOOTHGRAD_NOISE = 0.15  # sigma / (max - min) of the input; the paper finds 10-20% works well (section 3.1)
# rows x padded tokens in one forward and backward pass of IG: a short text's 50 (or 65) points run in one
# pass, as Captum runs them; a 128-token text at most 64 rows. Before, a pass held batch_size x 10 rows
# whatever their length (160 x 128 tokens at worst).
IG_TOKENS_PER_PASS = 8192


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
    ig_steps: int | None = None  # integrated gradients only: the steps this text used
    ig_completeness_error: float | None = None  # |sum of scores - (p(x) - p(baseline))| / |p(x) - p(baseline)|

    def to_dict(self) -> dict:
        ig = {}
        if self.ig_steps is not None:
            ig = {"ig_steps": self.ig_steps, "ig_completeness_error": self.ig_completeness_error}
        return {
            "method": self.method,
            "text": self.text,
            "target": self.target_label,
            "probabilities": dict(zip(self.labels, self.probabilities)),
            "words": self.words,
            "word_scores": [float(s) for s in self.word_scores],
            "pieces": self.pieces,
            "piece_scores": [float(s) for s in self.piece_scores],
            **ig,
        }


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


def text_seed(seed: int, input_ids: Sequence[int]) -> int:
    """A seed for one text's random draws (LIME's samples, SmoothGrad's noise) from the run's seed and the
    text's token ids: the draws do not depend on which other texts share the call, or in what order."""
    return int(np.random.SeedSequence([seed, *input_ids]).generate_state(1)[0])


def require_captum():
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        raise UserError("explanations need Captum: pip install 'lmforge[explain]'") from None


class Explainer:
    """Attributions for a sequence classifier (any Hugging Face model with a `.logits` output)."""

    def __init__(
        self,
        model,
        tokenizer,
        labels: list[str],
        max_length: int = 128,
        batch_size: int = 16,
        ig_tokens_per_pass: int = IG_TOKENS_PER_PASS,
    ):
        require_captum()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.max_length = max_length
        self.batch_size = batch_size
        self.ig_tokens_per_pass = ig_tokens_per_pass
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
        ig_steps: int | None = None,
        ig_tolerance: float = TOLERANCE,
        ig_max_steps: int = MAX_STEPS,
    ) -> list[Attribution]:
        """One Attribution per text; `target` a label name or index, or None for the predicted label.
        `n_samples` is LIME's and SHAP's sample count; `seed` fixes their samples and the random scores;
        `progress` shows a bar over the batches. Integrated gradients: `ig_steps` None refines each text
        (trapezoid rule, 8, 16, 32, ... steps) until its relative completeness error is at most `ig_tolerance`
        or it has `ig_max_steps` (explain/integrated_gradients.py); `ig_steps=N` runs N Gauss-Legendre steps,
        Captum's IntegratedGradients exactly."""
        if method not in METHODS:
            raise UserError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
        check_options(ig_steps, ig_tolerance, ig_max_steps)
        ig_report: dict[int, tuple[int, float]] = {}  # text -> (steps, completeness error)
        texts = list(texts)
        if not texts or any(not t.strip() for t in texts):
            raise UserError("nothing to explain: give at least one non-empty text")
        encoded = [encode_text(self.tokenizer, t, self.max_length) for t in texts]
        probs = self.probabilities([e.input_ids for e in encoded])
        targets = [self.target_index(target, p) for p in probs]
        torch.manual_seed(seed)  # kernel SHAP's sampling (Captum draws from torch's global generator)
        rng = np.random.default_rng(seed)
        if method == "random":
            scores = [rng.random(len(e.input_ids)) for e in encoded]
        else:
            scores = [np.zeros(0)] * len(encoded)
            by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))  # little padding
            starts = range(0, len(by_length), self.batch_size)
            for start in progress_bar(starts, desc=f"explain ({method})", disable=not progress, leave=False):
                chosen = by_length[start : start + self.batch_size]
                chunk, chunk_targets = [encoded[i] for i in chosen], [targets[i] for i in chosen]
                if method == "ig":
                    ig = (ig_steps, ig_tolerance, ig_max_steps)
                    got, steps, errors = self._integrated_gradients(chunk, chunk_targets, *ig)
                    ig_report.update(zip(chosen, zip(steps, errors)))
                elif method in GRADIENT_METHODS:
                    got = self._gradient_scores(method, chunk, chunk_targets, seed)
                elif method in ATTENTION_METHODS:
                    got = self._attention_scores(method, chunk)
                else:
                    pairs = zip(chunk, chunk_targets)
                    got = [self._perturbation_scores(method, e, t, n_samples, seed) for e, t in pairs]
                for i, piece_scores in zip(chosen, got):
                    scores[i] = piece_scores
        attributions = [self._attribution(method, e, p, t, s) for e, p, t, s in zip(encoded, probs, targets, scores)]
        for i, (steps, error) in ig_report.items():
            attributions[i].ig_steps, attributions[i].ig_completeness_error = steps, error
        return attributions

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

    def _gradient_scores(self, method: str, chunk: list[Encoded], targets: list[int], seed: int) -> list[np.ndarray]:
        from captum.attr import InputXGradient, Saliency

        ids, mask = pad_batch([e.input_ids for e in chunk], self.pad_id, self.device)
        embed = self.model.get_input_embeddings()
        with torch.no_grad():
            embeddings = embed(ids)  # (B, T, D)
        embeddings.requires_grad_()
        target = torch.tensor(targets, device=self.device)
        forward = self.probabilities_of_embeddings
        if method == "gradxinput":
            raw = InputXGradient(forward).attribute(embeddings, target=target, additional_forward_args=(mask,)).sum(-1)
        elif method == "grad":
            raw = Saliency(forward).attribute(embeddings, target=target, additional_forward_args=(mask,), abs=False)
            raw = raw.norm(dim=-1)
        else:
            raw = self._smoothgrad(embeddings.detach(), mask, target, chunk, seed)
        raw = raw.detach().float().cpu().numpy()
        return [raw[i, : len(e.input_ids)] for i, e in enumerate(chunk)]

    # ---- integrated gradients: adaptive steps, or Captum's fixed steps ----------------------------

    def ig_rows_per_pass(self, width: int) -> int:
        """(text x step) rows per forward and backward pass of IG for texts padded to `width` tokens."""
        return max(1, self.ig_tokens_per_pass // width)

    def _integrated_gradients(
        self, chunk: list[Encoded], targets: list[int], ig_steps: int | None, tolerance: float, max_steps: int
    ):
        """(scores per text, steps per text, relative completeness error per text) for a batch of texts."""
        from captum.attr import IntegratedGradients

        ids, mask = pad_batch([e.input_ids for e in chunk], self.pad_id, self.device)
        baseline_ids = ids.clone()  # [CLS] / [SEP] and padding kept, every content piece -> [PAD]
        for i, e in enumerate(chunk):
            baseline_ids[i, torch.as_tensor(e.content, device=self.device)] = self.pad_id
        embed = self.model.get_input_embeddings()
        with torch.no_grad():
            embeddings, baseline = embed(ids), embed(baseline_ids)  # (B, T, D) each
        target = torch.tensor(targets, device=self.device)
        lengths = [len(e.input_ids) for e in chunk]
        if ig_steps is None:
            raw, steps, errors = adaptive_integrated_gradients(
                lambda points, row_mask, text: self.probabilities_of_embeddings(points, row_mask)[
                    torch.arange(len(points)), target[text]
                ],  # (R,) each row's target probability
                embeddings,
                baseline,
                mask,
                lengths,
                tolerance,
                max_steps,
                self.ig_rows_per_pass,
            )
        else:
            raw = IntegratedGradients(self.probabilities_of_embeddings).attribute(
                embeddings.requires_grad_(),
                baselines=baseline,
                target=target,
                additional_forward_args=(mask,),
                n_steps=ig_steps,
                internal_batch_size=max(len(chunk), self.ig_rows_per_pass(ids.shape[1])),  # rows per pass
            )
            raw = raw.sum(-1)
            with torch.no_grad():
                p_input = self.probabilities_of_ids(ids, mask)[torch.arange(len(chunk)), target]
                p_baseline = self.probabilities_of_ids(baseline_ids, mask)[torch.arange(len(chunk)), target]
            totals = raw.detach().sum(-1)
            gaps = p_input - p_baseline
            steps = [ig_steps] * len(chunk)
            errors = [relative_completeness_error(float(t), float(g)) for t, g in zip(totals, gaps)]
        raw = raw.detach().float().cpu().numpy()
        return [raw[i, :n] for i, n in enumerate(lengths)], steps, errors

    def _smoothgrad(self, embeddings, mask, target, chunk: list[Encoded], seed: int) -> torch.Tensor:
        """(B, T) L2 norm of the mean gradient over SMOOTHGRAD_SAMPLES noisy copies of `embeddings` (B, T, D).
        Each text's noise: N(0, sigma^2) with sigma = SMOOTHGRAD_NOISE x (max - min) of its own embeddings
        (padding left out), drawn as Captum's NoiseTunnel draws it for a batch of one, from a generator
        seeded by the text: the same noise, and the same scores, alone or in any batch."""
        from captum.attr import Saliency

        n = SMOOTHGRAD_SAMPLES
        noise = torch.zeros((n, *embeddings.shape))  # (n, B, T, D), 0 at padding
        for i, e in enumerate(chunk):
            own = embeddings[i, : len(e.input_ids)]  # (T_i, D)
            sigma = SMOOTHGRAD_NOISE * (own.max() - own.min()).item()
            generator = torch.Generator().manual_seed(text_seed(seed, e.input_ids))
            noise[:, i, : len(e.input_ids)] = torch.normal(0.0, torch.full((n, *own.shape), sigma), generator=generator)
        saliency, total = Saliency(self.probabilities_of_embeddings), torch.zeros_like(embeddings)
        for draw in noise.to(embeddings.device):  # one forward and backward pass per sample, the batch at once
            noisy = (embeddings + draw).requires_grad_()
            total += saliency.attribute(noisy, target=target, additional_forward_args=(mask,), abs=False)
        return (total / n).norm(dim=-1)

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

    def _perturbation_scores(self, method: str, e: Encoded, target: int, n_samples: int, seed: int) -> np.ndarray:
        """Occlusion and kernel SHAP through Captum, LIME written out (explain/lime.py). Only content
        pieces are perturbed; [CLS] / [SEP] stay."""
        from captum._utils.models.linear_model import LinearModel
        from captum.attr import FeatureAblation, KernelShap

        if method == "lime":
            return self._lime_scores(e, target, n_samples, seed)
        content_at = torch.as_tensor(e.content, device=self.device)
        ids = torch.tensor(e.input_ids, device=self.device)
        content = ids[content_at].unsqueeze(0)  # (1, T_content)

        def forward(content_ids: torch.Tensor) -> torch.Tensor:  # (P, T_content) -> (P, C)
            full = ids.unsqueeze(0).repeat(content_ids.shape[0], 1)
            full[:, content_at] = content_ids
            return self.probabilities_of_ids(full, torch.ones_like(full))

        words = torch.tensor([e.piece_word[i] for i in e.content], device=self.device).unsqueeze(0)  # (1, T_c)
        common = {"baselines": self.mask_id, "target": target, "perturbations_per_eval": self.batch_size}
        with torch.no_grad():
            if method == "occlusion":
                raw = FeatureAblation(forward).attribute(content, **common)
            elif len(e.words) == 1:  # one player: its Shapley value is the drop when the word is masked
                raw = FeatureAblation(forward).attribute(content, feature_mask=words, **common)
            else:
                shap = KernelShap(forward)
                shap.interpretable_model = LinearModel(train_fn=captum_least_squares)
                raw = shap.attribute(content, feature_mask=words, n_samples=n_samples, **common)
        raw = raw[0].double().cpu().numpy()
        if method == "shap":  # every piece holds its word's score: share it out
            of_word = words[0].cpu().numpy()
            raw = raw / np.bincount(of_word)[of_word]
        scores = np.zeros(len(e.input_ids))
        scores[e.content] = raw
        return scores

    def _lime_scores(self, e: Encoded, target: int, n_samples: int, seed: int) -> np.ndarray:
        """LIME over the text's words: samples with a word's pieces replaced by [MASK] where it is removed,
        the target's probability on each, LIME's kernel-weighted ridge; each piece gets an equal share
        of its word's coefficient."""
        masks = lime_masks(len(e.words), n_samples, np.random.RandomState(text_seed(seed, e.input_ids)))  # (N, W)
        outputs = self.probabilities(mask_words(e.input_ids, e.piece_word, masks, self.mask_id))[:, target]  # (N,)
        coef, _ = lime_fit(masks, outputs)  # (W,)
        return share_word_scores(coef, e.piece_word)


def captum_least_squares(model, dataloader, construct_kwargs: dict, **fit_kwargs) -> dict:
    """Captum `LinearModel` trainer for kernel SHAP: weighted least squares with an intercept (alpha 0),
    in closed form; replaces the scikit-learn model Captum would import (seconds of import for a solve
    of a few hundred rows)."""
    xs, ys, ws = [], [], []
    for batch in dataloader:
        x, y, *w = batch
        xs.append(x.double().cpu().numpy())
        ys.append(y.double().reshape(-1).cpu().numpy())
        ws.append(w[0].double().reshape(-1).cpu().numpy() if w else np.ones(len(x)))
    coef, intercept = weighted_ridge(np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), alpha=0.0)
    weights = torch.tensor(coef, dtype=torch.float32).unsqueeze(0)  # (1, F)
    model._construct_model_params(norm_type=None, weight_values=weights, bias_value=torch.tensor([intercept]))
    return {}
