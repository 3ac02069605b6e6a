"""Show attributions: a coloured heat map in the terminal (24-bit ANSI background per word; plain words
when NO_COLOR is set) and a self-contained HTML page (words shaded, the raw per-piece values in a table
below each text).

Colours follow Captum's convention: green supports the explained label (for a causal LM: makes the
answer more likely), red speaks against it; the shade is the score over the largest absolute score
in that text.
"""

from __future__ import annotations

from html import escape

import numpy as np

from lmforge.core.console import use_color
from lmforge.explain.attribution import Attribution
from lmforge.explain.causal import PromptAttribution


def _shares(scores: np.ndarray) -> np.ndarray:
    """Scores scaled to [-1, 1] by the largest magnitude (all zeros stay zero)."""
    top = float(np.abs(scores).max()) if len(scores) else 0.0
    return scores / top if top > 0 else np.zeros_like(scores, dtype=float)


def _rgb(share: float) -> tuple[int, int, int]:
    """White blended towards green (positive) or red (negative) by |share|."""
    target = (44, 160, 44) if share >= 0 else (214, 39, 40)
    s = min(1.0, abs(share))
    return tuple(round(255 + (t - 255) * s) for t in target)


def _on_colour(word: str, share: float) -> str:
    """`word` on its shade (24-bit ANSI background), or plain when NO_COLOR is set."""
    if not use_color():
        return word
    r, g, b = _rgb(share)
    return f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{word}\x1b[0m"


def terminal_heatmap(a: Attribution) -> str:
    """One line of words on coloured backgrounds, then the prediction and the top words."""
    words = [_on_colour(word, share) for word, share in zip(a.words, _shares(a.word_scores))]
    top = np.argsort(-a.word_scores)[:5]  # the words that support the label most
    ranked = ", ".join(f"{a.words[i]} {a.word_scores[i]:+.4f}" for i in top)
    p = a.probabilities[a.target]
    return f"{' '.join(words)}\n  {a.method}: explaining {a.target_label} (p = {p:.3f}); top words: {ranked}"


def _spans_html(words: list[str], scores: np.ndarray) -> str:
    spans = []
    for word, score, share in zip(words, scores, _shares(scores)):
        r, g, b = _rgb(share)
        spans.append(f'<span class="w" style="background:rgb({r},{g},{b})" title="{score:+.5f}">{escape(word)}</span>')
    return " ".join(spans)


def attribution_html(a: Attribution) -> str:
    """A fragment: the shaded words, the prediction, and the raw per-piece values."""
    probs = ", ".join(f"{escape(label)} {p:.3f}" for label, p in zip(a.labels, a.probabilities))
    pieces = "".join(
        f'<tr><td>{escape(piece)}</td><td class="num">{score:+.5f}</td></tr>'
        for piece, score in zip(a.pieces, a.piece_scores)
    )
    return (
        f'<div class="attr"><p class="text">{_spans_html(a.words, a.word_scores)}</p>'
        f"<p>{escape(a.method)}, explaining <b>{escape(a.target_label)}</b>; probabilities: {probs}</p>"
        f"<details><summary>per word piece</summary><table><tr><th>piece</th><th>score</th></tr>{pieces}"
        "</table></details></div>"
    )


def _top_words(words: list[str], scores: np.ndarray, k: int = 5) -> str:
    top = np.argsort(-scores, kind="stable")[:k]  # the words that support the output most
    return ", ".join(f"{words[i]} {scores[i]:+.4f}" for i in top)


def _explained(a: PromptAttribution) -> str:
    """What the scores explain, with its value."""
    n = f"{len(a.answer_ids)} token{'s' if len(a.answer_ids) > 1 else ''}"
    if a.reduction == "sum":
        return f"log p(answer | prompt) = {a.log_prob:.3f} ({n}, p = {np.exp(a.log_prob):.3g})"
    return f"mean log p per answer token = {a.log_prob:.3f} ({n})"


def prompt_terminal_heatmap(a: PromptAttribution) -> str:
    """The prompt's words on coloured backgrounds, the answer in bold, then what is explained and the top words."""
    words = [_on_colour(word, share) for word, share in zip(a.words, _shares(a.word_scores))]
    answer = a.answer.replace("\n", "\\n")
    answer = f"\x1b[1m{answer}\x1b[0m" if use_color() else f"[{answer}]"
    return f"{' '.join(words)} {answer}\n  {a.method}: {_explained(a)}; top words: {_top_words(a.words, a.word_scores)}"


def prompt_attribution_html(a: PromptAttribution) -> str:
    """A fragment: the shaded prompt, the answer, the raw per-piece values and, when there, the matrix of
    answer tokens x prompt pieces (shaded over the whole matrix)."""
    pieces = "".join(
        f'<tr><td>{escape(piece)}</td><td class="num">{score:+.5f}</td></tr>'
        for piece, score in zip(a.pieces, a.piece_scores)
    )
    matrix = ""
    if a.token_scores is not None:
        shares = _shares(a.token_scores.ravel()).reshape(a.token_scores.shape)
        head = "".join(f"<th>{escape(p)}</th>" for p in a.pieces)
        rows = ""
        for piece, lp, scores, row_shares in zip(a.answer_pieces, a.token_log_probs, a.token_scores, shares):
            cells = "".join(
                f'<td class="num" style="background:rgb{_rgb(sh)}">{s:+.3f}</td>' for s, sh in zip(scores, row_shares)
            )
            rows += f"<tr><th>{escape(piece)} ({lp:.2f})</th>{cells}</tr>"
        matrix = (
            "<details><summary>per answer token (rows, with log p) x prompt piece</summary>"
            f"<table><tr><th></th>{head}</tr>{rows}</table></details>"
        )
    return (
        f'<div class="attr"><p class="text">{_spans_html(a.words, a.word_scores)} '
        f'<b class="answer">{escape(a.answer)}</b></p>'
        f"<p>{escape(a.method)}, explaining the answer: {escape(_explained(a))}; baseline token "
        f"<code>{escape(a.baseline_token)}</code></p>"
        f"<details><summary>per word piece</summary><table><tr><th>piece</th><th>score</th></tr>{pieces}"
        f"</table></details>{matrix}</div>"
    )


STYLE = (
    ".w{padding:.1rem .2rem;border-radius:3px;line-height:2}.attr{margin:1rem 0}.text{font-size:1.1rem}"
    ".answer{text-decoration:underline}"
)
