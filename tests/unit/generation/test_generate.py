import pytest
import torch

from lmforge.errors import UserError
from lmforge.generation.generate import HFGenerator, make_generator
from lmforge.generation.sampling import SamplingParams, cut_at_stop, sample_seed
from lmforge.models.causal_lm import tiny_gpt2

PROMPTS = [
    "what is the capital of france ?",
    "a",
    "the movie was a gorgeous , witty , seductive film that never once loses its nerve and",
]


@pytest.fixture(scope="module")
def gen():
    return make_generator("hf", "tiny-gpt2", batch_size=8)


def texts(results):
    return [[c.text for c in completions] for completions in results]


def test_left_padding_gives_the_same_greedy_output_alone_and_in_a_batch(gen):
    params = SamplingParams(max_new_tokens=12)
    batched = gen.generate(PROMPTS, params)
    alone = [gen.generate([p], params)[0] for p in PROMPTS]
    assert batched == alone
    assert all(c.finish_reason == "length" and c.tokens == 12 for [c] in batched)


def argmax_tokens(model, tokenizer, prompt: str, steps: int) -> list[int]:
    """Greedy decoding the slow, obvious way: the whole sequence through the model at every step."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=-1)
    return ids[0, -steps:].tolist()


def test_greedy_equals_an_argmax_loop_without_cache(gen):
    expected = gen.tokenizer.decode(argmax_tokens(gen.model, gen.tokenizer, PROMPTS[0], 8))
    [[c]] = gen.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=8))
    assert c.text == expected


def test_a_tiny_top_p_is_greedy(gen):
    greedy = gen.generate(PROMPTS, SamplingParams(max_new_tokens=8))
    nucleus = gen.generate(PROMPTS, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=8, seed=3))
    assert nucleus == greedy


def test_stop_strings_cut_the_text_and_end_the_batch_early(gen):
    full = gen.generate(PROMPTS, SamplingParams(max_new_tokens=20))
    # a stop string taken from each greedy text's 4th to 6th character, so every row meets one early
    stops = tuple(completions[0].text[3:6] for completions in full)
    calls = []
    hook = gen.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        cut = gen.generate(PROMPTS, SamplingParams(max_new_tokens=20, stop=stops))
    finally:
        hook.remove()
    for [whole], [c] in zip(full, cut):
        assert c.finish_reason == "stop"
        assert c.tokens < 20
        assert whole.text.startswith(c.text)
        assert c.text == cut_at_stop(whole.text, stops)[0]
        assert not any(s in c.text for s in stops)
    assert len(calls) == max(c.tokens for [c] in cut)  # one forward per generated token, no more


def test_finished_rows_leave_the_batch_and_the_rest_run_on_unchanged(gen):
    # one row meets its stop string early, the others run to the limit: the finished row's cache rows
    # are dropped, and the rows still running give what they give alone
    full = gen.generate(PROMPTS, SamplingParams(max_new_tokens=16))
    stop = (full[1][0].text[2:5],)
    assert not any(stop[0] in c.text for i, [c] in enumerate(full) if i != 1)  # only row 1 meets it
    rows_per_forward = []
    hook = gen.model.register_forward_hook(lambda _m, args, kwargs, out: rows_per_forward.append(out.logits.shape[0]),
                                           with_kwargs=True)  # fmt: skip
    try:
        cut = gen.generate(PROMPTS, SamplingParams(max_new_tokens=16, stop=stop))
    finally:
        hook.remove()
    alone = [gen.generate([p], SamplingParams(max_new_tokens=16, stop=stop))[0] for p in PROMPTS]
    assert cut == alone
    assert cut[1][0].finish_reason == "stop" and cut[0][0].finish_reason == cut[2][0].finish_reason == "length"
    assert rows_per_forward[0] == 3 and rows_per_forward[-1] == 2  # the row left the batch
    assert rows_per_forward.count(3) == cut[1][0].tokens


def test_eos_ends_a_completion_and_is_not_in_its_text(gen):
    model, tokenizer = tiny_gpt2()
    ids = argmax_tokens(model, tokenizer, PROMPTS[0], 10)
    k = next(k for k in range(1, 10) if ids[k] not in ids[:k])  # the first greedy token not seen before
    model.generation_config.eos_token_id = ids[k]  # plays EOS
    [[c]] = HFGenerator(model, tokenizer).generate([PROMPTS[0]], SamplingParams(max_new_tokens=10))
    assert (c.tokens, c.finish_reason) == (k + 1, "stop")
    assert c.text == tokenizer.decode(ids[:k])


def test_n_samples_differ_and_greedy_samples_are_equal(gen):
    sampled = gen.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=8))
    assert [len(s) for s in sampled] == [3, 3, 3]
    assert all(len(set(t)) == 3 for t in texts(sampled))
    greedy = gen.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=8))
    assert all(len(set(t)) == 1 for t in texts(greedy))


def test_sampling_is_seeded_and_independent_of_the_batch(gen):
    params = SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=6, seed=7)
    first = gen.generate(PROMPTS, params)
    assert gen.generate(PROMPTS, params) == first
    # another order, another batch size, other prompts beside it: each prompt's samples are unchanged
    reordered = gen.generate(PROMPTS[::-1], params)[::-1]
    small_batches = HFGenerator(gen.model, gen.tokenizer, batch_size=1).generate(PROMPTS, params)
    mixed = gen.generate(["an unrelated prompt", PROMPTS[1]], params)[1]
    assert reordered == first and small_batches == first and mixed == first[1]
    other_seed = gen.generate(PROMPTS, SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=6, seed=8))
    assert texts(other_seed) != texts(first)


def test_sample_seeds_are_stable_numbers():
    assert sample_seed(0, "a", 0) == sample_seed(0, "a", 0)
    assert len({sample_seed(0, "a", 0), sample_seed(1, "a", 0), sample_seed(0, "b", 0), sample_seed(0, "a", 1)}) == 4


def test_the_models_own_generation_defaults_are_ignored(gen):
    model, tokenizer = tiny_gpt2()
    model.generation_config.update(do_sample=True, temperature=0.5, top_k=3, repetition_penalty=1.5)
    params = SamplingParams(max_new_tokens=8)
    assert HFGenerator(model, tokenizer).generate(PROMPTS, params) == gen.generate(PROMPTS, params)
    assert model.generation_config.repetition_penalty == 1.5  # and they are back after the call


def test_generation_leaves_a_training_model_in_training_mode():
    model, tokenizer = tiny_gpt2()
    model.train()
    HFGenerator(model, tokenizer).generate(["a"], SamplingParams(max_new_tokens=2))
    assert model.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": ("",)}, "stop strings"),
    ],
)
def test_bad_sampling_params_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        SamplingParams(**kwargs)


def test_a_lone_stop_string_is_one_stop_string():
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)


def test_bad_prompts_are_user_errors(gen):
    with pytest.raises(UserError, match="list of strings"):
        gen.generate("one string", SamplingParams())
    with pytest.raises(UserError, match="prompt 1 is empty"):
        gen.generate(["a", ""], SamplingParams())
    with pytest.raises(UserError, match="1024 positions"):
        gen.generate(["a"], SamplingParams(max_new_tokens=1024))


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="expected one of hf, openai"):
        make_generator("vllm", "tiny-gpt2")
