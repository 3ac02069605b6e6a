import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from tiny_server import call, tiny_generator, tiny_server  # noqa: F401 (fixtures)

from lmforge.errors import UserError
from lmforge.generation.sampling import SamplingParams
from lmforge.generation.serve_requests import FALLBACK_CHAT_STOP, render_chat, sampling_params
from lmforge.models.causal_lm import tiny_gpt2_tokenizer

HELLO = [{"role": "user", "content": "hi"}]


def test_models_lists_the_one_model(tiny_server):
    status, answer = call(tiny_server.url + "/models")
    assert status == 200 and [m["id"] for m in answer["data"]] == ["tiny-gpt2"]


def test_completions_match_the_generator(tiny_server, tiny_generator):
    body = {"prompt": ["what is a nebula ?", "a"], "n": 2, "temperature": 0.7, "max_tokens": 5, "seed": 3}
    status, answer = call(tiny_server.url + "/completions", body)
    assert status == 200 and answer["object"] == "text_completion"
    expected = tiny_generator.generate(body["prompt"], SamplingParams(n=2, temperature=0.7, max_new_tokens=5, seed=3))
    flat = [c for completions in expected for c in completions]
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in answer["choices"]] == [c.text for c in flat]
    assert [c["finish_reason"] for c in answer["choices"]] == ["length"] * 4
    usage = answer["usage"]
    assert usage["completion_tokens"] == 20
    assert usage["total_tokens"] == usage["prompt_tokens"] + 20


def test_a_request_without_seed_gets_a_fresh_one(tiny_server):
    body = {"prompt": "a", "n": 1, "max_tokens": 12}  # temperature defaults to 1, as OpenAI's
    texts = {call(tiny_server.url + "/completions", body)[1]["choices"][0]["text"] for _ in range(3)}
    assert len(texts) > 1


def test_chat_completions_answer_as_the_assistant(tiny_server):
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0}
    status, answer = call(tiny_server.url + "/chat/completions", body)
    assert status == 200 and answer["object"] == "chat.completion"
    [choice] = answer["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/completions", b"{not json", "not valid JSON"),
        ("/completions", {"max_tokens": 4}, "'prompt' must be"),
        ("/completions", {"prompt": [1, "a"]}, "'prompt' must be"),
        ("/completions", {"prompt": [[1, 2], []]}, "'prompt' must be"),
        ("/completions", {"prompt": [5, 1000]}, "token id 1000; this model's token ids are 0 to 999"),
        ("/completions", {"prompt": "a", "n": "2"}, "'n' must be an integer"),
        ("/completions", {"prompt": "a", "temperature": -1}, "temperature must be >= 0"),
        ("/completions", {"prompt": "a", "stream": "yes"}, "'stream' must be true or false"),
        ("/completions", {"prompt": "a", "stop": [""]}, "'stop' must be"),
        ("/completions", {"prompt": "a", "max_tokens": 5000}, "1024 positions"),
        ("/completions", {"prompt": "a", "max_tokens": 0}, "'max_tokens' 0 generates nothing"),
        ("/completions", {"prompt": "a", "logprobs": 21}, "'logprobs' must be 0 to 20"),
        ("/completions", {"prompt": "a", "suffix": "b"}, "'suffix' is not supported"),
        ("/completions", {"prompt": "a", "best_of": 3}, "'best_of' other than 'n'"),
        ("/completions", {"prompt": "a", "presence_penalty": 0.5}, "'presence_penalty' is not supported"),
        ("/chat/completions", {"messages": "hi"}, "'messages' must be"),
        ("/chat/completions", {"messages": [{"content": "hi"}]}, "string 'role'"),
        ("/chat/completions", {"messages": HELLO, "logprobs": True}, "'logprobs' is not"),
        ("/chat/completions", {"messages": HELLO, "tool_choice": "auto"}, "'tool_choice'"),
    ],
)
def test_bad_requests_get_400_with_a_message(tiny_server, path, body, message):
    status, answer = call(tiny_server.url + path, body)
    assert status == 400 and message in answer["error"]["message"]


def test_unknown_paths_get_404_and_unknown_models_404_in_openais_shape(tiny_server):
    assert call(tiny_server.url + "/embeddings", {"input": "a"})[0] == 404
    assert call(tiny_server.url.removesuffix("/v1") + "/nothing")[0] == 404
    status, answer = call(tiny_server.url + "/completions", {"model": "gpt-4", "prompt": "a", "max_tokens": 1})
    assert status == 404 and answer["error"]["code"] == "model_not_found" and answer["error"]["param"] == "model"
    assert "'gpt-4' does not exist here" in answer["error"]["message"]


def test_request_fields_map_to_sampling_params():
    params = sampling_params({"n": 2, "temperature": 0, "top_p": 0.5, "max_tokens": 9, "stop": "\n", "seed": 4}, 16)
    assert params == SamplingParams(n=2, temperature=0.0, top_p=0.5, max_new_tokens=9, stop=("\n",), seed=4)
    assert sampling_params({}, 16).max_new_tokens == 16
    assert sampling_params({"max_tokens": 9, "max_completion_tokens": 3}, 16).max_new_tokens == 3  # the newer name wins
    with pytest.raises(UserError, match="'top_p' must be a number"):
        sampling_params({"top_p": float("nan")}, 16)


def test_chat_without_a_template_is_role_lines_and_stops_at_the_next_user_turn():
    tok = tiny_gpt2_tokenizer()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},  # OpenAI's content parts
    ]
    assert render_chat(tok, messages) == ("system: be brief\nuser: hi\nassistant:", (FALLBACK_CHAT_STOP,))


def test_chat_with_a_template_uses_it_without_a_second_bos():
    tok = tiny_gpt2_tokenizer()
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tok.add_bos_token = True
    prompt, stop = render_chat(tok, [{"role": "user", "content": "hi"}])
    assert stop == ()
    assert prompt.endswith("<user>hi<assistant>")
    assert tok(prompt)["input_ids"].count(tok.bos_token_id) <= 1


@pytest.mark.slow  # `lmforge serve` in a fresh process, loading a model (seconds)
def test_serve_command_starts_and_answers_with_the_api_key_of_the_environment(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "lmforge", "serve", "tiny-gpt2", "--port", "0", "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LMFORGE_API_KEY": "k3y"},
    )
    try:
        line = ""
        while "serving" not in line:
            line = process.stderr.readline()
            assert line or process.poll() is None, "lmforge serve exited before serving"
        url = line.split(" at ")[1].split()[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/models", timeout=30)
        assert refused.value.code == 401
        request = urllib.request.Request(url + "/models", headers={"Authorization": "Bearer k3y"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["data"][0]["id"] == "tiny-gpt2"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_with_a_bad_model_exits_2_with_one_line(cli):
    result = cli("serve", "./no/such/folder")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lmforge: error: model './no/such/folder': not a builtin model (minilm, tiny-bert, gemma-3-270m, tiny-gpt2), "
        "a local folder, or a hub id"
    ]


def test_load_lora_adapter_serves_another_model_by_name_and_refuses_a_bad_folder(tiny_server, tmp_path):
    status, answer = call(f"{tiny_server.url}/load_lora_adapter", {"lora_name": "other", "lora_path": "tiny-gpt2"})
    assert status == 200 and answer["lora_name"] == "other"
    status, models = call(f"{tiny_server.url}/models")
    assert [m["id"] for m in models["data"]] == ["tiny-gpt2", "other"]
    body = {"prompt": "the movie was", "max_tokens": 5, "temperature": 0}
    _, served = call(f"{tiny_server.url}/completions", {**body, "model": "tiny-gpt2"})
    _, other = call(f"{tiny_server.url}/completions", {**body, "model": "other"})
    assert other["choices"][0]["text"] == served["choices"][0]["text"]  # the same weights (seed 0) loaded twice
    assert tiny_server.generator_for("other")[0] is not tiny_server.generator
    status, error = call(f"{tiny_server.url}/load_lora_adapter", {"lora_name": "bad", "lora_path": str(tmp_path)})
    assert status == 400 and str(tmp_path) in error["error"]["message"]
    status, error = call(f"{tiny_server.url}/load_lora_adapter", {"lora_name": "", "lora_path": "x"})
    assert status == 400 and "lora_name" in error["error"]["message"]
    tiny_server.loaded.clear()


def test_serve_help_lists_the_limits(cli):
    result = cli("serve", "--help")
    assert result.returncode == 0
    for flag in ("--max-request-tokens", "--max-queue", "--max-connections", "--read-timeout", "--max-adapters"):
        assert flag in result.stdout
    for flag in ("--adapter-root", "--allowed-hosts", "--allowed-origins", "--api-key"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-queue", "-1"], "--max-queue must be at least 0, got -1"),
        (["--read-timeout", "nan"], "--read-timeout must be a positive number of seconds, got nan"),
        (["--adapter-root", "./no/such/folder"], "--adapter-root ./no/such/folder: not a folder"),
    ],
)
def test_serve_with_a_limit_out_of_range_exits_2_before_loading(cli, args, message):
    result = cli("serve", "tiny-gpt2", *args)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"lmforge: error: {message}"]
