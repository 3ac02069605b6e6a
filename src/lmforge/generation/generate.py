"""Batched text generation with explicit sampling parameters, through one interface and two backends.

- `hf` (default): a local transformers causal LM (`HFGenerator`): prompts sorted by length, left
  padded, decoded in batches with the KV cache by a loop of our own; a sequence that hits EOS or a
  stop string leaves the batch at once (its cache rows dropped, so the rest run on a smaller batch),
  and each text is cut at its first stop string.
- `openai`: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, `lmforge serve`) through
  `POST {base_url}/completions` (`OpenAIGenerator`, in generation/openai_client.py).

Reproducibility of the `hf` backend: every sample draws from its own random generator, seeded by
(params.seed, the prompt's text, the sample's index j < n). A completion is therefore a function of
(model, prompt, params, j) alone: the same call gives the same texts, and a prompt gives the same
samples whatever other prompts share its batch, whatever the batch size, and in whatever order the
prompts come, up to floating-point differences between padded batch shapes (which can flip a
near-tie between two tokens; not seen with float32 on the CPU). Two equal prompts in one call get
equal samples; ask for n > 1 to get different ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.generation.sampling import (
    BACKENDS,
    Completion,
    GenerationStopped,
    Generator,
    SamplingParams,
    cut_at_stop,
    sample_seed,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def make_generator(backend: str, model: str | Path, **kw) -> Generator:
    """A generator: `hf` loads `model` (a builtin name, a folder, a finished run) locally, with keyword
    `batch_size`, `seed` (tiny-gpt2's weights) and `dtype` (float32, bfloat16 or auto: see
    models/precision.py); `openai` talks to the server at keyword `base_url`
    that serves `model`, with keywords `api_key`, `timeout`, `max_retries`, `concurrency`."""
    if backend == "hf":
        from lmforge.models.causal_lm import load_causal_lm
        from lmforge.models.precision import resolve_dtype

        seed = kw.pop("seed", 0)
        dtype = resolve_dtype(kw.pop("dtype", "float32"))
        lm, tokenizer = load_causal_lm(str(model), seed=seed, dtype=dtype)
        return HFGenerator(lm, tokenizer, **kw)
    if backend == "openai":
        from lmforge.generation.openai_client import OpenAIGenerator

        return OpenAIGenerator(str(model), **kw)
    raise UserError(f"generation backend {backend!r}: expected one of {', '.join(BACKENDS)}")


class HFGenerator:
    """Generation with a local transformers causal LM: sorted, left-padded batches with the KV cache."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 8):
        if batch_size < 1:
            raise UserError(f"generation: batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.dtype = str(model.dtype).removeprefix("torch.")  # "float32", "bfloat16": what its weights hold
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        forward_parameters = inspect.signature(model.forward).parameters
        # Only the last position's logits are needed: most transformers causal LMs take `logits_to_keep`
        self.keeps_last_logits = "logits_to_keep" in forward_parameters
        self.cache_keyword = "cache" if "cache" in forward_parameters else "past_key_values"  # renamed in 5.x
        config = model.config.get_text_config()
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        progress: bool = False,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int, int], None] | None = None,
    ) -> list[list[Completion]]:
        """For each prompt, its params.n completions. `should_stop` is asked before every forward pass;
        when it says True, GenerationStopped is raised (a server stops work nobody waits for).
        `on_step(i, j, token)`, when given, hears each new token of completion j of prompt i as it is
        chosen, EOS left out (a server streams the text: generation/text_deltas.py); without it the loop
        does nothing more per step."""
        import torch

        from lmforge.core.console import progress_bar

        if isinstance(prompts, str):
            raise UserError("generate: prompts must be a list of strings, not one string")
        lengths = [self.count_tokens(p) for p in prompts]
        for i, length in enumerate(lengths):
            if length == 0:
                raise UserError(f"generate: prompt {i} is empty (no tokens)")
            if self.max_positions and length + params.max_new_tokens > self.max_positions:
                raise UserError(
                    f"generate: prompt {i} has {length} tokens; with max_new_tokens={params.max_new_tokens} it "
                    f"passes the model's {self.max_positions} positions"
                )
        # Greedy samples are all equal: generate one per prompt and copy it.
        samples = 1 if params.temperature == 0 else params.n
        rows = [(i, j) for i in range(len(prompts)) for j in range(samples)]
        rows.sort(key=lambda r: -lengths[r[0]])  # longest first: padding stays small, memory peaks early
        done: dict[tuple[int, int], Completion] = {}
        was_training = self.model.training
        self.model.eval()
        # The decoding loop is ours (_generate_batch), so a folder's generation_config.json (repetition
        # penalty, top_k, ...) plays no part: the sampling parameters are the only ones. Its EOS ids count.
        bar = progress_bar(total=len(rows), desc="generate", unit="sample", disable=not progress)
        try:
            with torch.inference_mode():
                for start in range(0, len(rows), self.batch_size):
                    batch = rows[start : start + self.batch_size]
                    texts = [prompts[i] for i, _ in batch]
                    seeds = [sample_seed(params.seed, prompts[i], j) for i, j in batch]
                    hears = None if on_step is None else _batch_steps(on_step, batch, params.n if samples == 1 else 1)
                    for row, completion in zip(batch, self._generate_batch(texts, seeds, params, should_stop, hears)):
                        done[row] = completion
                    bar.update(len(batch))
        finally:
            bar.close()
            self.model.train(was_training)
        return [[done[(i, j if samples > 1 else 0)] for j in range(params.n)] for i in range(len(prompts))]

    def _generate_batch(
        self,
        texts: list[str],
        seeds: list[int],
        params: SamplingParams,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """Decode one left-padded batch with the KV cache. A row that ends (EOS or a stop string) leaves
        the batch at once, cache included, so the rows still running do not pay for it: with sampled
        lengths, a batch often ends with one or two long rows. `on_step(row, token)` hears each token
        that is part of a row's text."""
        import torch
        from transformers import DynamicCache

        self.tokenizer.padding_side = "left"  # all prompts end at the same column: new tokens line up
        enc = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.model.device)
        mask = enc["attention_mask"]  # (B, P), 0 on the left padding
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P): each row counts from its first token
        cache = DynamicCache(config=self.model.config)
        choose = SeededSampler(seeds, params.temperature, params.top_p) if params.temperature > 0 else None
        active = list(range(len(texts)))  # batch row -> the row of `texts` it holds
        generated: list[list[int]] = [[] for _ in texts]
        ended: dict[int, tuple[int, int]] = {}  # row -> (tokens counted, tokens kept in the text)
        if should_stop and should_stop():
            raise GenerationStopped()
        logits = self._forward(enc["input_ids"], mask, positions, cache)  # (B, V), the last position's
        for step in range(params.max_new_tokens):
            tokens = choose(logits, active) if choose else greedy_choice(logits)  # (B_active,)
            still = []
            for k, (row, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
                generated[row].append(token)
                if token in self.eos_ids:  # counted, but not part of the text
                    ended[row] = (len(generated[row]), len(generated[row]) - 1)
                    continue
                if on_step is not None:
                    on_step(row, token)
                if params.stop and self._has_stop(generated[row], params.stop):
                    ended[row] = (len(generated[row]), len(generated[row]))
                else:
                    still.append(k)
            if not still or step == params.max_new_tokens - 1:
                break
            if len(still) < len(active):  # drop the finished rows from every tensor and the cache
                keep = torch.tensor(still, device=mask.device)
                cache.batch_select_indices(keep)
                mask, positions, tokens = mask[keep], positions[keep], tokens[keep]
                active = [active[k] for k in still]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            positions = positions[:, -1:] + 1
            if should_stop and should_stop():
                raise GenerationStopped()
            logits = self._forward(tokens[:, None], mask, positions, cache)
        completions = []
        for row, tokens_of_row in enumerate(generated):
            n_tokens, text_end = ended.get(row, (len(tokens_of_row), len(tokens_of_row)))
            text = self.tokenizer.decode(tokens_of_row[:text_end], skip_special_tokens=True)
            text, _ = cut_at_stop(text, params.stop)
            completions.append(Completion(text, n_tokens, "stop" if row in ended else "length"))
        return completions

    def _forward(self, input_ids, mask, positions, cache):
        """Logits (B, V) of the last position in the model's dtype, the new keys and values appended to
        `cache`; only the last position goes through the output layer (a 262k-word vocabulary makes it
        the costliest). The sampler widens them to float32 itself; greedy does not need to."""
        kwargs = {self.cache_keyword: cache, **({"logits_to_keep": 1} if self.keeps_last_logits else {})}
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        return out.logits[:, -1]

    def _has_stop(self, tokens: list[int], stop: Sequence[str]) -> bool:
        # The whole generated text each step: a stop string may span tokens; decoding a few hundred
        # tokens costs microseconds next to a forward pass.
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return any(s in text for s in stop)


def _batch_steps(
    on_step: Callable[[int, int, int], None], batch: list[tuple[int, int]], copies: int
) -> Callable[[int, int], None]:
    """`on_step` of `generate` as `_generate_batch` calls it: batch row -> (prompt, sample); a greedy
    row stands for `copies` equal samples (generate copies its completion), so each of them hears it."""

    def on_row_step(row: int, token: int) -> None:
        i, j = batch[row]
        for sample in range(j, j + copies):
            on_step(i, sample, token)

    return on_row_step


def greedy_choice(logits: torch.Tensor) -> torch.Tensor:
    """The highest-scoring token of each row of `logits` (B, V), the first one on a tie, as argmax.

    `max(-1).indices` rather than `argmax`: on the CPU, torch 2.13's argmax over bfloat16 has no fast
    kernel (13 ms for 32 x 262k logits, against 2.4 ms for max; widening to float32 first, as
    transformers' generate does, costs 12 ms), while both take about 2.5 ms on float32. Widening is exact,
    so it could not change the choice anyway."""
    return logits.max(dim=-1).indices


class SeededSampler:
    """Samples each row with its own torch.Generator (softmax at the temperature, then top-p).

    One generator per sample (not one for the batch) makes a sample independent of its batch.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        import torch

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, scores: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The next token (B,) of each row of `scores` (B, V); `rows[b]`: whose generator row b uses."""
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()  # (B, V)
        if self.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # drop a token when the tokens ranked above it already reach top_p (the first always stays)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= self.top_p
            sorted_probs[drop] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        chosen = [torch.multinomial(p, 1, generator=self.generators[row])[0] for p, row in zip(probs, rows)]
        return torch.stack(chosen).to(scores.device)
