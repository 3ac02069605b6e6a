"""The `openai` backend against real HTTP servers on 127.0.0.1: `lmforge serve`'s server in this
process, and small servers that fail, stall or check the API key."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tiny_server import tiny_generator, tiny_server  # noqa: F401 (fixtures)

from lmforge.errors import UserError
from lmforge.generation.generate import make_generator
from lmforge.generation.openai_client import OpenAIGenerator
from lmforge.generation.sampling import SamplingParams

PROMPTS = ["what is the capital of france ?", "a", "the movie was a gorgeous , witty , seductive film that"]


def test_greedy_and_seeded_samples_match_the_hf_backend(tiny_server, tiny_generator):
    client = make_generator("openai", "tiny-gpt2", base_url=tiny_server.url, concurrency=3)
    for params in (
        SamplingParams(max_new_tokens=8),
        SamplingParams(n=2, temperature=0.9, top_p=0.8, max_new_tokens=6, seed=11),
    ):
        assert client.generate(PROMPTS, params) == tiny_generator.generate(PROMPTS, params)


def test_stop_strings_go_to_the_server(tiny_server, tiny_generator):
    full = tiny_generator.generate(PROMPTS, SamplingParams(max_new_tokens=12))
    params = SamplingParams(max_new_tokens=12, stop=(full[0][0].text[3:5],))
    [[c], *_] = OpenAIGenerator("tiny-gpt2", tiny_server.url).generate(PROMPTS, params)
    assert c.finish_reason == "stop" and c.tokens < 12


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from the server's `script`: a list of (status, seconds to stall) taken in order."""

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.seen.append((body, self.headers.get("Authorization")))
        status, stall = server.script.pop(0) if server.script else (200, 0)
        time.sleep(stall)
        if status == 200:
            choice = {"index": 0, "text": "ok", "finish_reason": "stop"}
            answer = {"choices": [choice], "usage": {"completion_tokens": 2}}
        else:
            answer = {"error": {"message": f"scripted {status}", "type": "server_error"}}
        data = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up waiting
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.daemon_threads = True
    server.script, server.seen = [], []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # no /v1: the client adds it
    yield server
    server.shutdown()
    server.server_close()


def test_503_and_429_are_retried_then_succeed(scripted, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    scripted.script = [(503, 0), (429, 0)]
    client = OpenAIGenerator("m", scripted.url, backoff=0.01)
    [[c]] = client.generate(["hi"], SamplingParams(max_new_tokens=3, stop=("\n",), seed=5))
    assert (c.text, c.tokens, c.finish_reason) == ("ok", 2, "stop")
    assert len(scripted.seen) == 3
    body, auth = scripted.seen[-1]
    assert auth == "Bearer sk-test"
    assert body == {
        "model": "m",
        "prompt": "hi",
        "n": 1,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 3,
        "seed": 5,
        "stop": ["\n"],
    }


def test_a_server_that_keeps_failing_is_a_user_error_after_the_retries(scripted):
    scripted.script = [(500, 0)] * 3
    with pytest.raises(UserError, match="HTTP 500: scripted 500"):
        OpenAIGenerator("m", scripted.url, max_retries=2, backoff=0.01).generate(["hi"], SamplingParams())
    assert len(scripted.seen) == 3


def test_a_bad_request_is_not_retried(scripted):
    scripted.script = [(400, 0)]
    with pytest.raises(UserError, match="HTTP 400: scripted 400"):
        OpenAIGenerator("m", scripted.url, backoff=0.01).generate(["hi"], SamplingParams())
    assert len(scripted.seen) == 1


def test_a_stalled_server_times_out_with_a_clear_error(scripted):
    scripted.script = [(200, 2.0)]
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"no answer within 0.3 s"):
        OpenAIGenerator("m", scripted.url, timeout=0.3).generate(["hi"], SamplingParams())
    assert time.perf_counter() - started < 1.5


def test_no_server_is_a_user_error_after_the_retries(scripted):
    url = scripted.url
    scripted.shutdown()
    scripted.server_close()
    with pytest.raises(UserError, match=r"refused.*after 2 tries"):
        OpenAIGenerator("m", url, max_retries=1, backoff=0.01).generate(["hi"], SamplingParams())


def test_after_a_failure_the_remaining_prompts_are_not_sent(scripted):
    scripted.script = [(400, 0)]
    with pytest.raises(UserError, match="HTTP 400"):
        OpenAIGenerator("m", scripted.url, concurrency=1).generate(["p"] * 20, SamplingParams())
    assert len(scripted.seen) < 20
