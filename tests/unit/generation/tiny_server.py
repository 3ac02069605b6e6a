"""An `lmforge serve` server over tiny-gpt2, running in this process on a free loopback port, and a
way to POST JSON to it.

Import the fixtures `tiny_generator` and `tiny_server` into a test module to use them.
"""

import json
import urllib.error
import urllib.request

import pytest

from lmforge.generation.generate import make_generator
from lmforge.generation.serve import CompletionServer, start_in_thread


@pytest.fixture(scope="module")
def tiny_generator():
    return make_generator("hf", "tiny-gpt2", batch_size=4)


@pytest.fixture(scope="module")
def tiny_server(tiny_generator):
    server = CompletionServer(("127.0.0.1", 0), tiny_generator, "tiny-gpt2", quiet=True)
    start_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


def call(url: str, body: dict | bytes | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of a GET (no body) or a POST."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
