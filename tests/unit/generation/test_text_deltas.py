"""The text of a completion handed out while it is generated (generation/text_deltas.py), and the
decoding loop's `on_step` that feeds it (generation/generate.py), on tiny-gpt2's byte-level tokenizer."""

from tiny_server import tiny_generator  # noqa: F401 (fixture)

from lmforge.generation.sampling import SamplingParams
from lmforge.generation.text_deltas import TextDeltas


def test_on_step_hears_every_token_and_changes_no_output(tiny_generator):
    prompts = ["the movie was", "hi"]
    for params in (SamplingParams(n=2, max_new_tokens=6), SamplingParams(n=2, temperature=0.8, max_new_tokens=6)):
        heard: dict[tuple[int, int], list[int]] = {}

        def on_step(i: int, j: int, token: int, heard=heard) -> None:
            heard.setdefault((i, j), []).append(token)

        streamed = tiny_generator.generate(prompts, params, on_step=on_step)
        assert streamed == tiny_generator.generate(prompts, params)
        for (i, j), tokens in heard.items():
            assert tiny_generator.tokenizer.decode(tokens) == streamed[i][j].text
        assert sorted(heard) == [(i, j) for i in range(2) for j in range(2)]


def test_a_character_split_across_tokens_is_held_until_whole(tiny_generator):
    tokenizer = tiny_generator.tokenizer
    text = "café ü 日本"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text)  # some characters take several byte tokens
    deltas = TextDeltas(tokenizer, stop=())
    parts = [deltas.add(token) for token in ids]
    assert "".join(parts) == text and not any("\ufffd" in p for p in parts)


def test_a_possible_stop_string_is_held_back_and_a_rerun_sends_nothing_twice(tiny_generator):
    tokenizer = tiny_generator.tokenizer
    ids = tokenizer("the movie was the movie")["input_ids"]
    deltas = TextDeltas(tokenizer, stop=("movie is",))
    parts = [deltas.add(token) for token in ids]
    assert "".join(parts) == "the movie was the " and deltas.rest("the movie was the movie") == "movie"
    deltas.restart()
    assert [deltas.add(token) for token in ids] == [""] * len(ids)
