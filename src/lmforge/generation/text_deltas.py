"""A completion's text as it is generated, handed out as deltas that never need taking back.

Each new token, the row's tokens so far are decoded whole (a token's own decoding is not its share of
the text: a sentencepiece word's leading space, or a character whose UTF-8 bytes span two byte-level
tokens, only come right in context) and the new suffix is the delta, as in transformers'
`TextIteratorStreamer` (huggingface.co/docs/transformers/internal/generation_utils#transformers.TextIteratorStreamer).
Text that may still change is held back until it cannot:

- a trailing U+FFFD, the replacement character of a character whose bytes have not all come yet;
- an end that may be the start of a stop string: the completion's text stops before the first stop
  string (generation/sampling.py's `cut_at_stop`), so a stop string never reaches the deltas;
- with a tokenizer that cleans up spaces when decoding (`clean_up_tokenization_spaces`, which turns
  "do n't" into "don't" once the last token arrives), everything from the last space.

So the deltas joined are always a prefix of the completion's final text (generation/generate.py decodes
the same tokens the same way), and `rest` gives what is still missing once the completion is done.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmforge.generation.sampling import cut_at_stop

INCOMPLETE_CHARACTER = "\ufffd"


class TextDeltas:
    """One completion's text deltas, fed one generated token at a time (EOS tokens left out)."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.cleans_spaces = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
        self.tokens: list[int] = []
        self.sent = ""
        """the text handed out so far"""

    def restart(self) -> None:
        """The completion is generated again from its first token (its batch was stopped and rerun: the
        samples are seeded, so the text is the same, and what was sent is not sent twice)."""
        self.tokens = []

    def add(self, token: int) -> str:
        """The text that `token` makes certain (often "", e.g. half a character)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, self.stop)
        if not stopped:
            text = text[: len(text) - self._unsure(text)]
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def rest(self, final_text: str) -> str:
        """What the finished completion's text adds to the text handed out."""
        return final_text[len(self.sent) :] if final_text.startswith(self.sent) else ""

    def _unsure(self, text: str) -> int:
        """How many characters at the end of `text` may still change."""
        unsure = len(text) - len(text.rstrip(INCOMPLETE_CHARACTER))
        for stop in self.stop:  # the longest end of `text` that begins `stop` (stop itself is not in it)
            start = text.find(stop[0], max(0, len(text) - len(stop) + 1))
            while start != -1 and not stop.startswith(text[start:]):
                start = text.find(stop[0], start + 1)
            if start != -1:
                unsure = max(unsure, len(text) - start)
        if self.cleans_spaces and " " in text:
            unsure = max(unsure, len(text) - text.rindex(" "))
        return unsure
