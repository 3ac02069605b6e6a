"""`lmforge serve` through OpenAI's own Python client (the `openai` package), against a server on a free
loopback port over tiny-gpt2: completions, chat, streaming, log-probabilities and echo, errors, the API
key, and concurrent requests decoded together."""

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from serve_attack import open_request
from tiny_server import tiny_generator, tiny_server  # noqa: F401 (fixtures)

from lmforge.generation.sampling import SamplingParams
from lmforge.generation.serve import CompletionServer, start_in_thread

PROMPT = "the movie was"


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url, api_key="unused", max_retries=0, timeout=60)


def direct_logprobs(generator, ids: list[int]) -> list[float]:
    """Each token's log-probability after the ones before it, straight from transformers."""
    with torch.no_grad():
        logits = generator.model(torch.tensor([ids])).logits[0]
    scores = torch.log_softmax(logits.float(), dim=-1)
    return [scores[t - 1, ids[t]].item() for t in range(1, len(ids))]


def test_completions_are_the_generators_samples(client, tiny_generator):
    prompts = ["what is a nebula ?", "a"]
    answer = client.completions.create(model="tiny-gpt2", prompt=prompts, n=2, temperature=0.7, max_tokens=5, seed=3)
    expected = tiny_generator.generate(prompts, SamplingParams(n=2, temperature=0.7, max_new_tokens=5, seed=3))
    assert [c.text for c in sorted(answer.choices, key=lambda c: c.index)] == [c.text for row in expected for c in row]
    assert answer.usage.completion_tokens == sum(c.tokens for row in expected for c in row)


def test_chat_honours_max_completion_tokens(client):
    messages = [{"role": "user", "content": "tell me about the movie"}]
    answer = client.chat.completions.create(
        model="tiny-gpt2", messages=messages, max_tokens=12, max_completion_tokens=2, temperature=0
    )
    [choice] = answer.choices
    assert choice.message.role == "assistant" and answer.usage.completion_tokens == 2
    assert choice.finish_reason == "length"


def test_streamed_completion_and_chat_assemble_to_the_unstreamed_answer(client):
    body = {"model": "tiny-gpt2", "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    whole = client.completions.create(**body)
    chunks = list(client.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    messages = [{"role": "user", "content": "hi"}]
    whole = client.chat.completions.create(model="tiny-gpt2", messages=messages, max_tokens=4, temperature=0)
    parts = client.chat.completions.create(
        model="tiny-gpt2", messages=messages, max_tokens=4, temperature=0, stream=True
    )
    deltas = [c.choices[0].delta for c in parts]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content


def test_a_stream_arrives_token_by_token_and_joins_to_the_unstreamed_text(client):
    body = {"model": "tiny-gpt2", "prompt": PROMPT, "max_tokens": 10, "temperature": 0}
    whole = client.completions.create(**body).choices[0].text
    texts = [c.choices[0].text for c in client.completions.create(**body, stream=True) if c.choices[0].text]
    assert len(texts) > 1 and "".join(texts) == whole
    chat = {"model": "tiny-gpt2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "temperature": 0}
    whole = client.chat.completions.create(**chat).choices[0].message.content
    parts = [c.choices[0].delta.content for c in client.chat.completions.create(**chat, stream=True)]
    assert len([p for p in parts if p]) > 1 and "".join(p or "" for p in parts) == whole


def test_a_stop_string_spanning_two_tokens_never_reaches_the_stream(client, tiny_generator):
    body = {"model": "tiny-gpt2", "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    free = client.completions.create(**body).choices[0].text
    tokenizer = tiny_generator.tokenizer
    pieces = [tokenizer.decode([t]) for t in tokenizer(free, add_special_tokens=False)["input_ids"]]
    # the last character of one token and the first two of the next, where that string first occurs
    stop = next(
        pieces[k][-1] + pieces[k + 1][:2]
        for k in range(len(pieces) - 1)
        if free.find(pieces[k][-1] + pieces[k + 1][:2]) == len("".join(pieces[: k + 1])) - 1
    )
    whole = client.completions.create(**body, stop=[stop]).choices[0]
    assert whole.finish_reason == "stop" and whole.text == free[: free.find(stop)]
    chunks = list(client.completions.create(**body, stop=[stop], stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_stream_is_server_sent_events_ending_with_done(tiny_server):
    body = json.dumps({"prompt": PROMPT, "max_tokens": 3, "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(tiny_server.url + "/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = response.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert json.loads(events[0].removeprefix("data: "))["object"] == "text_completion"


def test_echo_with_logprobs_scores_the_prompt_as_transformers_does(client, tiny_generator):
    ids = tiny_generator.tokenizer(PROMPT + " great and long")["input_ids"]
    expected = direct_logprobs(tiny_generator, ids)
    for prompt in (PROMPT + " great and long", ids):  # text, and token ids as lm-evaluation-harness sends them
        answer = client.completions.create(model="tiny-gpt2", prompt=prompt, max_tokens=0, echo=True, logprobs=2)
        logprobs = answer.choices[0].logprobs
        assert (
            answer.choices[0].text == PROMPT + " great and long" and "".join(logprobs.tokens) == answer.choices[0].text
        )
        assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
        assert logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
        assert all(max(top.values()) >= lp for top, lp in zip(logprobs.top_logprobs[1:], logprobs.token_logprobs[1:]))
        assert logprobs.text_offset == [0, *[sum(map(len, logprobs.tokens[:k])) for k in range(1, len(ids))]]


def test_a_greedy_one_token_completion_with_echo_is_the_top_token_after_the_prompt(client, tiny_generator):
    """What lm-evaluation-harness's loglikelihood requests ask: echo, logprobs 1, max_tokens 1, temperature 0."""
    ids = tiny_generator.tokenizer(PROMPT)["input_ids"]
    answer = client.completions.create(
        model="tiny-gpt2", prompt=[ids], max_tokens=1, echo=True, logprobs=1, temperature=0
    )
    logprobs = answer.choices[0].logprobs
    assert len(logprobs.tokens) == len(ids) + 1
    greedy = tiny_generator.generate([PROMPT], SamplingParams(temperature=0, max_new_tokens=1))[0][0]
    assert answer.choices[0].text == PROMPT + greedy.text
    assert logprobs.token_logprobs[-1] == max(logprobs.top_logprobs[-1].values())  # the top-1 token
    plain = client.completions.create(model="tiny-gpt2", prompt=PROMPT, max_tokens=3, logprobs=0, temperature=0)
    assert len(plain.choices[0].logprobs.tokens) == 3 and plain.choices[0].logprobs.text_offset[0] == len(PROMPT)


def test_errors_come_in_openais_shape(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=1)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny-gpt2", messages=[{"role": "user", "content": "hi"}], tools=tools)
    assert refused.value.param == "tools" and "calls no tools" in refused.value.message


def test_with_an_api_key_every_request_must_carry_it(tiny_generator):
    server = CompletionServer(("127.0.0.1", 0), tiny_generator, "tiny-gpt2", quiet=True, api_key="s3cret")
    start_in_thread(server)
    try:
        with pytest.raises(openai.AuthenticationError) as wrong:
            openai.OpenAI(base_url=server.url, api_key="guess", max_retries=0).models.list()
        assert wrong.value.code == "invalid_api_key"
        try:
            urllib.request.urlopen(server.url.removesuffix("/v1") + "/health", timeout=10)
            raise AssertionError("a request without the key was answered")
        except urllib.error.HTTPError as e:
            assert e.code == 401 and e.headers["WWW-Authenticate"] == "Bearer"
        good = openai.OpenAI(base_url=server.url, api_key="s3cret", max_retries=0)
        assert good.completions.create(model="tiny-gpt2", prompt=PROMPT, max_tokens=2).choices[0].text is not None
    finally:
        server.shutdown()
        server.server_close()


def test_concurrent_requests_are_decoded_in_one_batch_with_their_own_answers(tiny_server, client, tiny_generator):
    long = open_request(tiny_server, {"prompt": PROMPT, "max_tokens": 1000, "n": 64, "temperature": 1, "seed": 0})
    deadline = time.monotonic() + 10
    while not tiny_server.worker.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    batches = tiny_server.worker.batches
    prompts = ["a gripping film", "the plot", "what is", "hello"]

    def ask(prompt: str):
        return client.completions.create(model="tiny-gpt2", prompt=prompt, max_tokens=6, temperature=0.9, seed=7)

    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(ask, p) for p in prompts]
        while len(tiny_server.worker.waiting) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        long.close()  # the long request's client leaves: it stops, and the four waiting run together
        texts = [a.result(60).choices[0].text for a in answers]
    assert tiny_server.worker.batches == batches + 1
    params = SamplingParams(temperature=0.9, max_new_tokens=6, seed=7)
    assert texts == [tiny_generator.generate([p], params)[0][0].text for p in prompts]
