"""Local explanations of a prompted causal LM: which prompt tokens made its answer likely.

Feature attribution in the prompting paradigm of Zhao et al. 2023 ("Explainability for Large Language
Models: A Survey", section 4): a prompted model's answer is explained by the tokens of its prompt. The
explained quantity is the answer's log-probability given the prompt, computed with teacher forcing in
one forward pass over prompt + answer (A answer tokens a_1 .. a_A):

    reduction "sum" (default)  f = sum_t log p(a_t | prompt, a_<t)       = log p(answer | prompt)
    reduction "mean"           f = 1/A sum_t log p(a_t | prompt, a_<t)   (comparable across answer lengths)

Only the prompt's pieces are attributed: the answer's tokens are the explained output and stay fixed, and
no position id changes. Special tokens (Gemma's <bos>) are never replaced and get 0.

  grad        L2 norm over the embedding of d f / d e_t (Simonyan et al. 2014; Captum Saliency)
  gradxinput  (d f / d e_t) . e_t, signed (Shrikumar et al. 2017, Denil et al. 2014; Captum InputXGradient)
  ig          integrated gradients (Sundararajan et al. 2017, eq. 1), 50 Gauss-Legendre steps from a baseline
              prompt whose pieces are all the baseline token (special tokens kept); the scores add up to
              f(prompt) - f(baseline prompt) (completeness, tested). Captum IntegratedGradients on the embeddings
  occlusion   leave one out (Zeiler & Fergus 2014; Li et al. 2016): f(prompt) - f(prompt with piece t replaced
              by the baseline token) (Captum FeatureAblation)

The baseline token is the tokenizer's pad token (`load_causal_lm` makes it EOS when a model has none), else
its unk token, else EOS: <pad> for both Gemma 3 and tiny-gpt2.

Per answer token: `token_scores` (A, T) attributes each log p(a_k | prompt, a_<k) separately. Occlusion gets it
from its forward passes at no cost; the gradient methods only with `per_token=True` (one more gradient pass per
answer token). For gradxinput, ig and occlusion, `piece_scores` is the sum (or mean) of its rows; a row of grad
is the norm of that token's own gradient.

Words: byte-level BPE and SentencePiece vocabularies mark a piece that begins with a space (Ġ in GPT-2, ▁ in
Gemma and Llama); `word_of_pieces` starts a word at those marks and at line breaks, and a word's score is the
sum of its pieces' scores (the raw piece scores are kept).

Written here (Captum has none of it): the causal-LM target, the baselines, the word grouping, and batching:
prompts are left-padded and answers right-padded, so that every prompt ends at the same column
([pad .. prompt | answer .. pad]), with position ids counted over real tokens only: a prompt gets the same
scores in a batch as alone (tested). Occlusion explains one prompt at a time, its perturbations batched.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lmforge.core.console import progress_bar
from lmforge.errors import UserError
from lmforge.explain.attribution import require_captum
from lmforge.explain.methods import CAUSAL_METHODS, REDUCTIONS
from lmforge.explain.words import word_sums

SPACE_MARKS = "Ġ▁ \t"  # a piece starting with one of these begins a word: GPT-2 byte-level, SentencePiece
LINE_BREAKS = "Ċč\n\r"  # byte-level BPE writes \n as Ċ and \r as č; a line break also ends the word before it
BYTE_FALLBACK_WHITESPACE = {"<0x20>", "<0x09>", "<0x0A>", "<0x0D>"}  # SentencePiece byte fallback (Llama)
LOGITS_BYTES = 2**28  # IG steps and occlusion perturbations per forward pass: float32 logits up to 256 MiB


def word_of_pieces(pieces: Sequence[str], special: Sequence[bool]) -> list[int]:
    """(T,) word index of each piece, -1 for special tokens. A piece starts a new word when it begins with a
    space mark or a line break, follows a line break or a special token, or is the first one."""
    out, word, start = [], -1, True
    for piece, is_special in zip(pieces, special):
        if is_special:
            out.append(-1)
            start = True
            continue
        breaks = piece in BYTE_FALLBACK_WHITESPACE or (piece != "" and piece[0] in SPACE_MARKS + LINE_BREAKS)
        if start or breaks:
            word += 1
        out.append(word)
        start = piece in ("<0x0A>", "<0x0D>") or (piece != "" and piece[-1] in LINE_BREAKS)
    return out


def word_texts(tokenizer, pieces: Sequence[str], piece_word: Sequence[int]) -> list[str]:
    """Each word's text, decoded from its pieces without the space before it; a word that is only whitespace
    (a line break, a trailing space) is shown escaped: \\n, ␣."""
    groups: dict[int, list[str]] = {}
    for piece, w in zip(pieces, piece_word):
        if w >= 0:
            groups.setdefault(w, []).append(piece)
    words = []
    for w in range(len(groups)):
        text = tokenizer.convert_tokens_to_string(groups[w])
        shown = text.strip() or text.replace(" ", "␣").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
        words.append(shown)
    return words


@dataclass
class EncodedPrompt:
    """A prompt and its answer as the model sees them, with the prompt's words."""

    prompt: str
    answer: str
    prompt_ids: list[int]  # (T,) with the tokenizer's special tokens (Gemma: <bos> first)
    answer_ids: list[int]  # (A,) the answer alone, no special tokens
    pieces: list[str]  # (T,)
    piece_word: list[int]  # (T,) -1 for special tokens
    words: list[str]  # (W,)

    @property
    def content(self) -> np.ndarray:
        """Positions of the prompt pieces that are attributed (not special tokens)."""
        return np.flatnonzero(np.asarray(self.piece_word) >= 0)


def encode_prompt(tokenizer, prompt: str, answer: str) -> EncodedPrompt:
    """The prompt is tokenized with the tokenizer's special tokens, as for generation; the answer alone,
    without them, so it must carry its own leading space (" Paris")."""
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not answer_ids:
        raise UserError(f"the answer to prompt {prompt[:40]!r} is empty: nothing to explain")
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(prompt_ids)
    piece_word = word_of_pieces(pieces, [i in special for i in prompt_ids])
    if max(piece_word, default=-1) < 0:
        raise UserError(f"prompt {prompt!r} has no tokens to attribute")
    words = word_texts(tokenizer, pieces, piece_word)
    return EncodedPrompt(prompt, answer, prompt_ids, answer_ids, pieces, piece_word, words)


@dataclass
class PromptAttribution:
    """One explained answer: scores over the prompt's pieces (raw) and words (sums)."""

    method: str
    prompt: str
    answer: str
    reduction: str  # "sum" or "mean"
    log_prob: float  # the explained f: sum (or mean) over the answer tokens of log p(a_t | prompt, a_<t)
    token_log_probs: np.ndarray  # (A,) log p(a_t | prompt, a_<t)
    answer_ids: list[int]
    answer_pieces: list[str]
    baseline_token: str
    input_ids: list[int]  # the prompt's
    pieces: list[str]
    piece_word: list[int]
    piece_scores: np.ndarray  # (T,), 0 at special tokens
    words: list[str]
    word_scores: np.ndarray  # (W,)
    token_scores: np.ndarray | None = None  # (A, T): each answer token's log-probability attributed separately

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "prompt": self.prompt,
            "answer": self.answer,
            "reduction": self.reduction,
            "log_prob": self.log_prob,
            "answer_pieces": self.answer_pieces,
            "token_log_probs": [float(x) for x in self.token_log_probs],
            "baseline_token": self.baseline_token,
            "words": self.words,
            "word_scores": [float(s) for s in self.word_scores],
            "pieces": self.pieces,
            "piece_scores": [float(s) for s in self.piece_scores],
            "token_scores": None if self.token_scores is None else self.token_scores.tolist(),
        }


class PromptExplainer:
    """Attributions of a causal LM's answer to its prompt (any Hugging Face causal LM with `.logits`).

    `batch_size`: prompts per forward pass, and the least number of rows (prompt x IG step, or occlusion
    perturbation) per pass; more rows go in one pass while their logits fit in LOGITS_BYTES.
    `baseline_id` overrides the baseline token (see the module docstring)."""

    def __init__(self, model, tokenizer, batch_size: int = 8, baseline_id: int | None = None):
        require_captum()
        if not getattr(tokenizer, "is_fast", False):
            raise UserError("explanations need a fast (Rust) tokenizer")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        candidates = (baseline_id, tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id)
        self.baseline_id = next((i for i in candidates if i is not None), None)
        if self.baseline_id is None:
            raise UserError("the tokenizer has no pad, unk or EOS token to use as the baseline")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.baseline_id
        config = model.config.get_text_config()
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.vocab_size = config.vocab_size
        # the lm head over the answer positions only: Gemma's 262k-token vocabulary makes it the largest tensor
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    # ---- the explained output ------------------------------------------------------------------

    def token_log_probs_of_embeddings(self, prompt_embeds, answer_embeds, mask, positions, answer_ids) -> torch.Tensor:
        """(B, T, D) prompt and (B, A, D) answer embeddings -> (B, A) log p(a_t | prompt, a_<t).
        `mask` (B, T + A) and `positions` (B, T + A) cover both; prompts end at column T."""
        embeds = torch.cat([prompt_embeds, answer_embeds], dim=1)  # (B, T + A, D)
        n_answer = answer_ids.shape[1]
        kwargs = {"logits_to_keep": n_answer + 1} if self.keeps_logits else {}
        logits = self.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False, **kwargs
        ).logits
        # column T - 1 + t predicts a_t: the answer's positions, the last one (predicting past the answer) dropped
        logits = logits[:, -(n_answer + 1) : -1].float()  # (B, A, V)
        return logits.gather(-1, answer_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)

    def _explained(self, prompt_embeds, answer_embeds, mask, positions, answer_ids, weights) -> torch.Tensor:
        """Captum's forward: (B,) sum_t weights_t log p(a_t | ...); the weights pick the reduction or one token."""
        log_probs = self.token_log_probs_of_embeddings(prompt_embeds, answer_embeds, mask, positions, answer_ids)
        return (log_probs * weights).sum(-1)  # (B, A) -> (B,)

    def _batch(self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]]) -> dict:
        """Left-padded prompts (B, T) and right-padded answers (B, A), their mask and position ids (B, T + A)."""
        width_p, width_a = max(map(len, prompts)), max(map(len, answers))
        prompt_ids = torch.full((len(prompts), width_p), self.pad_id, dtype=torch.long)
        answer_ids = torch.full((len(prompts), width_a), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width_p + width_a), dtype=torch.long)
        for i, (p, a) in enumerate(zip(prompts, answers)):
            prompt_ids[i, width_p - len(p) :] = torch.tensor(list(p))
            answer_ids[i, : len(a)] = torch.tensor(list(a))
            mask[i, width_p - len(p) : width_p + len(a)] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each real token at its unpadded position
        answer_mask = mask[:, width_p:].float()  # (B, A)
        return {
            "prompt_ids": prompt_ids.to(self.device),
            "answer_ids": answer_ids.to(self.device),
            "mask": mask.to(self.device),
            "positions": positions.to(self.device),
            "answer_mask": answer_mask.to(self.device),
        }

    @torch.no_grad()
    def answer_log_probs(self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """For token-id rows of prompts and their answers: each answer's (A,) log p(a_t | prompt, a_<t)."""
        out = []
        embed = self.model.get_input_embeddings()
        for start in range(0, len(prompts), self.batch_size):
            p, a = prompts[start : start + self.batch_size], answers[start : start + self.batch_size]
            b = self._batch(p, a)
            got = self.token_log_probs_of_embeddings(
                embed(b["prompt_ids"]), embed(b["answer_ids"]), b["mask"], b["positions"], b["answer_ids"]
            )
            out += [got[i, : len(row)].double().cpu().numpy() for i, row in enumerate(a)]
        return out

    def rows_per_pass(self, n_answer: int) -> int:
        """Rows per forward pass for IG and occlusion: as many as keep the (rows, A + 1, V) float32 logits
        under LOGITS_BYTES, and at least batch_size (Gemma's 262k-token vocabulary: 85 rows for A = 2; the
        1,000-token tiny-gpt2: every row at once)."""
        return max(self.batch_size, LOGITS_BYTES // (4 * (n_answer + 1) * self.vocab_size))

    def reduce(self, token_log_probs: np.ndarray, reduction: str) -> float:
        return float(token_log_probs.sum() if reduction == "sum" else token_log_probs.mean())

    # ---- the public entry point ----------------------------------------------------------------

    def explain(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        method: str = "ig",
        reduction: str = "sum",
        per_token: bool = False,
        max_new_tokens: int = 16,
        stop: Sequence[str] = ("\n",),
        n_steps: int = 50,
        progress: bool = False,
    ) -> list[PromptAttribution]:
        """One PromptAttribution per prompt. Without `answers`, each answer is the model's greedy completion
        (at most `max_new_tokens`, cut before the first `stop` string). `per_token` adds the (A, T) matrix
        for the gradient methods (occlusion always has it); `n_steps` is IG's step count."""
        if method not in CAUSAL_METHODS:
            choices = ", ".join(CAUSAL_METHODS)
            raise UserError(f"explanation method {method!r} is not available for a causal LM; choose one of {choices}")
        if reduction not in REDUCTIONS:
            raise UserError(f"reduction {reduction!r}: choose one of {', '.join(REDUCTIONS)}")
        prompts = list(prompts)
        if isinstance(answers, str):
            answers = [answers]
        if not prompts or any(not p.strip() for p in prompts):
            raise UserError("nothing to explain: give at least one non-empty prompt")
        if answers is not None and len(answers) != len(prompts):
            raise UserError(f"{len(answers)} answers for {len(prompts)} prompts: give one answer per prompt, or none")
        if answers is None:
            answers = self.generate_answers(prompts, max_new_tokens, stop)
        encoded = [encode_prompt(self.tokenizer, p, a) for p, a in zip(prompts, answers)]
        for e in encoded:
            if self.max_positions and len(e.prompt_ids) + len(e.answer_ids) > self.max_positions:
                raise UserError(
                    f"prompt {e.prompt[:40]!r}: {len(e.prompt_ids)} + {len(e.answer_ids)} answer tokens pass the "
                    f"model's {self.max_positions} positions"
                )
        log_probs = self.answer_log_probs([e.prompt_ids for e in encoded], [e.answer_ids for e in encoded])
        results: list[tuple[np.ndarray, np.ndarray | None]] = [(np.zeros(0), None)] * len(encoded)
        if method == "occlusion":
            for i, e in enumerate(progress_bar(encoded, desc="explain (occlusion)", disable=not progress, leave=False)):
                token_scores = self._occlusion(e)
                results[i] = (self._reduce_rows(token_scores, reduction), token_scores)
        else:
            by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt_ids))  # little padding
            starts = range(0, len(by_length), self.batch_size)
            for start in progress_bar(starts, desc=f"explain ({method})", disable=not progress, leave=False):
                chosen = by_length[start : start + self.batch_size]
                got = self._gradient_scores(method, [encoded[i] for i in chosen], reduction, per_token, n_steps)
                for i, pair in zip(chosen, got):
                    results[i] = pair
        return [self._attribution(method, reduction, e, lp, *r) for e, lp, r in zip(encoded, log_probs, results)]

    def generate_answers(self, prompts: list[str], max_new_tokens: int, stop: Sequence[str]) -> list[str]:
        """The model's greedy completion of each prompt, with the core generator."""
        from lmforge.generation.generate import HFGenerator
        from lmforge.generation.sampling import SamplingParams

        params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=tuple(stop))
        completions = HFGenerator(self.model, self.tokenizer, self.batch_size).generate(prompts, params)
        answers = [c[0].text for c in completions]
        for prompt, answer in zip(prompts, answers):
            if not answer.strip():
                raise UserError(f"the model's answer to prompt {prompt[:40]!r} is empty; give the answer to explain")
        return answers

    @staticmethod
    def _reduce_rows(token_scores: np.ndarray, reduction: str) -> np.ndarray:
        return token_scores.sum(0) if reduction == "sum" else token_scores.mean(0)

    def _attribution(self, method, reduction, e: EncodedPrompt, token_log_probs, scores, token_scores):
        special = np.asarray(e.piece_word) < 0
        scores = np.where(special, 0.0, scores)
        if token_scores is not None:
            token_scores = np.where(special[None, :], 0.0, token_scores)
        return PromptAttribution(
            method=method,
            prompt=e.prompt,
            answer=e.answer,
            reduction=reduction,
            log_prob=self.reduce(token_log_probs, reduction),
            token_log_probs=token_log_probs,
            answer_ids=e.answer_ids,
            answer_pieces=self.tokenizer.convert_ids_to_tokens(e.answer_ids),
            baseline_token=self.tokenizer.convert_ids_to_tokens(self.baseline_id),
            input_ids=e.prompt_ids,
            pieces=e.pieces,
            piece_word=e.piece_word,
            piece_scores=scores,
            words=e.words,
            word_scores=word_sums(scores, e.piece_word, len(e.words)),
            token_scores=token_scores,
        )

    # ---- gradients: one Captum call per batch of prompts (and per answer token with per_token) ----------

    def _gradient_scores(
        self, method: str, chunk: list[EncodedPrompt], reduction: str, per_token: bool, n_steps: int
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per prompt of the chunk: (T,) scores of f and, with per_token, the (A, T) scores of each token."""
        b = self._batch([e.prompt_ids for e in chunk], [e.answer_ids for e in chunk])
        answer_mask = b["answer_mask"]  # (B, A)
        total = answer_mask if reduction == "sum" else answer_mask / answer_mask.sum(-1, keepdim=True)
        raw = self._captum(method, b, total, n_steps)  # (B, T)
        rows = []
        if per_token and answer_mask.shape[1] == 1:  # one-token answers: the total is that token's row
            rows = [raw]
        elif per_token:  # weights = one answer token at a time; rows past an answer's end are dropped below
            eye = torch.eye(answer_mask.shape[1], device=self.device)
            rows = [self._captum(method, b, answer_mask * eye[k], n_steps) for k in range(answer_mask.shape[1])]
        width = b["prompt_ids"].shape[1]
        out = []
        for i, e in enumerate(chunk):
            first = width - len(e.prompt_ids)  # the left padding
            matrix = np.stack([r[i, first:] for r in rows[: len(e.answer_ids)]]) if per_token else None
            out.append((raw[i, first:], matrix))
        return out

    def _captum(self, method: str, b: dict, weights: torch.Tensor, n_steps: int) -> np.ndarray:
        """(B, T) attribution of sum_t weights_t log p(a_t | ...) to each prompt position."""
        from captum.attr import InputXGradient, IntegratedGradients, Saliency

        embed = self.model.get_input_embeddings()
        with torch.no_grad():
            prompt_embeds = embed(b["prompt_ids"])  # (B, T, D)
            answer_embeds = embed(b["answer_ids"])  # (B, A, D), held fixed
        prompt_embeds.requires_grad_()
        extra = (answer_embeds, b["mask"], b["positions"], b["answer_ids"], weights)
        if method == "ig":
            # the baseline prompt: every attributed piece -> the baseline token; special tokens and padding kept
            baseline_ids = b["prompt_ids"].clone()
            special = torch.tensor(self.tokenizer.all_special_ids, device=self.device)
            content = ~torch.isin(baseline_ids, special) & (b["mask"][:, : baseline_ids.shape[1]] == 1)
            baseline_ids[content] = self.baseline_id
            with torch.no_grad():
                baseline = embed(baseline_ids)
            raw = IntegratedGradients(self._explained).attribute(
                prompt_embeds,
                baselines=baseline,
                additional_forward_args=extra,
                n_steps=n_steps,
                internal_batch_size=self.rows_per_pass(weights.shape[1]),  # rows (prompt x step) per pass
            )
            raw = raw.sum(-1)
        elif method == "gradxinput":
            raw = InputXGradient(self._explained).attribute(prompt_embeds, additional_forward_args=extra).sum(-1)
        else:  # grad
            raw = Saliency(self._explained).attribute(prompt_embeds, additional_forward_args=extra, abs=False)
            raw = raw.norm(dim=-1)
        return raw.detach().double().cpu().numpy()

    # ---- occlusion: one prompt at a time, its perturbations batched ------------------------------

    @torch.no_grad()
    def _occlusion(self, e: EncodedPrompt) -> np.ndarray:
        """(A, T): log p(a_k | prompt, a_<k) minus the same with one prompt piece replaced by the baseline
        token. Captum perturbs the attributed pieces only; the forward function puts special tokens back."""
        from captum.attr import FeatureAblation

        content_at = torch.as_tensor(e.content, device=self.device)
        prompt = torch.tensor(e.prompt_ids, device=self.device)
        answer = torch.tensor(e.answer_ids, device=self.device)
        embed = self.model.get_input_embeddings()

        def forward(content_ids: torch.Tensor) -> torch.Tensor:  # (P, T_content) -> (P, A)
            n = content_ids.shape[0]
            prompts = prompt.unsqueeze(0).repeat(n, 1)
            prompts[:, content_at] = content_ids
            answers = answer.unsqueeze(0).repeat(n, 1)
            mask = torch.ones((n, len(prompt) + len(answer)), dtype=torch.long, device=self.device)
            positions = torch.arange(mask.shape[1], device=self.device).unsqueeze(0).repeat(n, 1)
            return self.token_log_probs_of_embeddings(embed(prompts), embed(answers), mask, positions, answers)

        # a forward output of A values per row gives an (A, T_content) attribution: one row per answer token
        raw = FeatureAblation(forward).attribute(
            prompt[content_at].unsqueeze(0),
            baselines=self.baseline_id,
            perturbations_per_eval=self.rows_per_pass(len(e.answer_ids)),
        )
        scores = np.zeros((len(e.answer_ids), len(e.prompt_ids)))
        scores[:, e.content] = raw.reshape(len(e.answer_ids), -1).double().cpu().numpy()
        return scores
