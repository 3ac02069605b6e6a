"""The attacks of issue 23 item 7 on `lmforge serve`, run with real HTTP against a server on loopback
(tiny-gpt2, small limits), each with one more case of its class. docs/security.md lists them.

Malformed framing is refused by uvicorn's HTTP parser (h11) before the application sees it; its 400
names h11's reason ("invalid HTTP request: bad Content-Length")."""

import gc
import os
import socket
import threading
import time

import pytest
from serve_attack import (
    address,
    closed_by_server,
    open_request,
    post,
    read_answer,
    request_bytes,
    send,
    serve,  # noqa: F401 (fixture)
    wait_until,
)
from tiny_server import tiny_generator  # noqa: F401 (fixture)

SMALL = {"prompt": "the movie was", "max_tokens": 2, "temperature": 0}
# About a minute of decoding on tiny-gpt2 (256 samples x 1,000 tokens) unless it is stopped.
LONG = {"prompt": "the movie was", "max_tokens": 1000, "n": 256, "temperature": 1, "seed": 0}
ROOMY = {"max_request_tokens": 10**7}  # a budget LONG fits in


# ---- the body: a Content-Length that is not a plain size ----------------------------------------------


def test_a_negative_content_length_is_refused_not_read_to_the_end(serve):
    server = serve(max_body_bytes=1000)
    body = {**SMALL, "pad": " " * 2000}  # past the body limit: a negative length used to read all of it
    status, _, answer = post(server, "/v1/completions", body, {"Content-Length": "-1"}, end=True)
    assert status == 400 and "Content-Length" in answer["error"]["message"]


@pytest.mark.parametrize("value", ["abc", "+5", "1_0", " 0x10", "5.0", "99999999999999999999"])
def test_content_lengths_that_int_would_take_or_that_are_not_numbers_are_refused(serve, value):
    status, _, answer = post(serve(), "/v1/completions", SMALL, {"Content-Length": value})
    assert status == 400 and "Content-Length" in answer["error"]["message"]


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Content-Length": None}, 411),  # a POST without a length
        ({"Content-Length": None, "Transfer-Encoding": "chunked"}, 411),
        ({"Content-Length": "5000"}, 413),  # past max_body_bytes
    ],
)
def test_a_missing_chunked_or_too_long_body_is_a_4xx(serve, headers, expected):
    status, _, answer = post(serve(max_body_bytes=4096), "/v1/completions", SMALL, headers)
    assert status == expected and answer["error"]["message"]


def test_two_different_content_lengths_are_refused(serve):
    server = serve()
    data = request_bytes(server, "POST", "/v1/completions", SMALL).replace(
        b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\n", 1
    )
    with socket.create_connection(address(server), timeout=20) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        status, _, answer = read_answer(sock)
    assert status == 400 and "conflicting Content-Length" in answer["error"]["message"]


def test_a_body_shorter_than_its_length_is_a_400(serve):
    data = request_bytes(serve(), "POST", "/v1/completions", SMALL, {"Content-Length": "500"})
    with socket.create_connection(address(serve()), timeout=20) as sock:  # a server of its own
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        status, _, answer = read_answer(sock)
    assert status == 400 and "the body ended before its Content-Length" in answer["error"]["message"]


# ---- the work of one request --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {**SMALL, "n": 3000},  # the request
        {**SMALL, "prompt": ["a"] * 3000},
        {**SMALL, "max_tokens": 10**9},
        {**SMALL, "n": 1e300},
    ],
)
def test_work_beyond_the_request_budget_is_a_400_naming_the_limit(serve, body):
    started = time.monotonic()
    status, _, answer = post(serve(max_request_tokens=2000), "/v1/completions", body)
    assert status == 400 and "--max-request-tokens" in answer["error"]["message"]
    assert time.monotonic() - started < 10  # refused, not generated


def test_a_request_within_the_budget_is_served(serve):
    status, _, answer = post(serve(max_request_tokens=2000), "/v1/completions", {**SMALL, "n": 4})
    assert status == 200 and len(answer["choices"]) == 4


def test_too_many_stop_strings_are_refused(serve):
    body = {**SMALL, "stop": [f"s{k}" for k in range(1000)]}  # each is searched for after every token
    status, _, answer = post(serve(), "/v1/completions", body)
    assert status == 400 and "'stop' has 1000 strings" in answer["error"]["message"]


def test_a_client_that_leaves_stops_its_generation(serve):
    server = serve(**ROOMY)
    long_request = open_request(server, LONG)
    time.sleep(1.5)  # generating by now
    long_request.close()
    started = time.monotonic()
    status, _, answer = post(server, "/v1/completions", SMALL, timeout=30)  # used to wait behind LONG
    assert status == 200 and answer["choices"][0]["completion_tokens"] <= 2
    assert time.monotonic() - started < 15


def test_the_queue_is_bounded_and_a_waiter_that_leaves_gives_up_its_place(serve):
    server = serve(max_queue=1, **ROOMY)
    running = open_request(server, LONG)
    time.sleep(1.0)
    waiting = open_request(server, LONG)
    time.sleep(0.5)
    started = time.monotonic()
    status, headers, answer = post(server, "/v1/completions", SMALL)  # no place left: 503 at once
    assert status == 503 and headers.get("retry-after") and "--max-queue" in answer["error"]["message"]
    assert time.monotonic() - started < 5
    waiting.close()  # the waiter leaves the queue (its own case) ...
    time.sleep(0.5)
    queued = open_request(server, SMALL)  # ... so there is a place again
    time.sleep(0.5)
    running.close()  # and the running request stops when its client goes
    queued.settimeout(30)
    status, _, answer = read_answer(queued)
    queued.close()
    assert status == 200 and len(answer["choices"]) == 1


# ---- idle and slow connections ------------------------------------------------------------------------


def test_idle_connections_are_closed_after_the_read_timeout(serve):
    server = serve(read_timeout=1.0)
    idle = [socket.create_connection(address(server), timeout=10) for _ in range(20)]
    try:
        assert wait_until(lambda: server.connections == 20, within=5)
        assert all(closed_by_server(sock, within=6) for sock in idle)
        assert wait_until(lambda: server.connections == 0, within=5)  # the server holds none of them
    finally:
        for sock in idle:
            sock.close()


def test_a_client_that_sends_its_headers_a_byte_at_a_time_is_cut_off(serve):
    server = serve(read_timeout=1.0)
    data = request_bytes(server, "POST", "/v1/completions", SMALL)
    with socket.create_connection(address(server), timeout=10) as sock:
        started = time.monotonic()
        try:
            for byte in data:  # a byte every 0.2 s: each within any per-read timeout
                sock.sendall(bytes([byte]))
                if closed_by_server(sock, within=0.2):
                    break
        except OSError:  # the server closed it
            pass
        assert time.monotonic() - started < 4


def test_a_body_that_stalls_gets_408(serve):
    server = serve(read_timeout=1.0)
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(request_bytes(server, "POST", "/v1/completions", SMALL)[:-5])  # the body less 5 bytes
        started = time.monotonic()
        status, _, answer = read_answer(sock)
    assert status == 408 and "--read-timeout" in answer["error"]["message"]
    assert time.monotonic() - started < 5


def test_a_client_that_never_reads_its_answer_is_cut_off(serve):
    server = serve(read_timeout=1.0)
    # Megabytes of answer: 16 echoed prompts of 901 tokens, each token with 20 alternatives.
    body = {"prompt": ["the movie was " * 300] * 4, "n": 4, "max_tokens": 0, "echo": True, "logprobs": 20}
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's buffer fills
    sock.connect(address(server))
    try:
        sock.sendall(request_bytes(server, "POST", "/v1/completions", body))
        assert wait_until(lambda: server.connections == 1, within=5)
        assert wait_until(lambda: server.connections == 0, within=30)  # it never read: dropped
    finally:
        sock.close()


def test_connections_past_the_cap_get_503_and_the_slots_come_back(serve):
    server = serve(max_connections=3, read_timeout=5.0)
    held = [socket.create_connection(address(server), timeout=10) for _ in range(3)]
    time.sleep(0.3)
    with socket.create_connection(address(server), timeout=5) as extra:
        status, headers, answer = read_answer(extra)
    assert status == 503 and headers.get("retry-after") and "--max-connections" in answer["error"]["message"]
    for sock in held:
        sock.close()
    assert wait_until(lambda: post(server, "/v1/completions", SMALL)[0] == 200, within=10, step=0.3)


# ---- load_lora_adapter ----------------------------------------------------------------------------------


def live_gpt2_models() -> int:
    from transformers import GPT2LMHeadModel

    gc.collect()
    return sum(type(o) is GPT2LMHeadModel for o in gc.get_objects())  # type(): no proxy objects asked


def test_loaded_models_are_capped_least_recently_used_first(serve, tmp_path):
    server = serve(max_adapters=2, adapter_root=tmp_path)
    before = live_gpt2_models()
    for name in ("a", "b", "c", "d", "e"):
        status, _, _ = post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": "tiny-gpt2"}, timeout=60)
        assert status == 200
        if name == "c":
            assert post(server, "/v1/completions", {**SMALL, "model": "b"})[0] == 200  # b is used: c goes first
    status, _, models = send(server, "GET", "/v1/models")
    assert [m["id"] for m in models["data"]] == ["tiny-gpt2", "d", "e"]
    assert live_gpt2_models() <= before + 2
    status, _, answer = post(server, "/v1/completions", {**SMALL, "model": "a"})  # not the base model, silently
    assert status == 404 and "load it again" in answer["error"]["message"]


def test_a_folder_that_is_not_a_model_is_a_400_never_a_500(serve, tmp_path):
    server = serve(adapter_root=tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad-config").mkdir()
    (tmp_path / "bad-config" / "config.json").write_text('{"model_type": "gpt2", "n_layer": "x"}')
    for folder in ("empty", "bad-config", str(tmp_path / "bad-config")):
        status, _, answer = post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": folder})
        assert status == 400 and answer["error"]["message"].startswith(f"lora_path {folder!r}")


def test_a_path_outside_the_adapter_root_gets_one_answer_whether_or_not_it_exists(serve, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    os.symlink(outside, root / "link")  # a link out of the root (its own case), and `..`
    server = serve(adapter_root=root)
    answers = {}
    for path in (str(outside), str(tmp_path / "no-such-folder"), "/etc", "link", "../outside"):
        status, _, answer = post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": path})
        answers[path] = (status, answer["error"]["message"].replace(repr(path), "PATH"))
    assert set(answers.values()) == {(403, f"lora_path PATH: not under {root}, the only folder this server loads from")}
    status, _, answer = post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "~"})
    assert (status, answer["error"]["message"]) == (400, "lora_path '~': no such folder")  # a name, not the home folder


# ---- Host and Origin --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [("POST", "/v1/completions"), ("GET", "/v1/models")])
def test_a_foreign_host_is_refused(serve, method, path):
    server = serve()
    port = address(server)[1]
    body = SMALL if method == "POST" else None
    status, _, answer = send(server, method, path, body, {"Host": f"attacker.example:{port}"})  # DNS rebinding
    assert status == 403 and "--allowed-hosts" in answer["error"]["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST."):
        assert send(server, method, path, body, {"Host": host})[0] == 200


def test_hosts_named_with_allowed_hosts_are_accepted_and_a_missing_host_is_refused(serve):
    server = serve(allowed_hosts=("box.lan",))
    assert post(server, "/v1/completions", SMALL, {"Host": "box.lan:8000"})[0] == 200
    assert post(server, "/v1/completions", SMALL, {"Host": None})[0] == 400


@pytest.mark.parametrize(
    "origin, expected",
    [
        ("https://attacker.example", 403),  # a page's form or fetch (text/plain needs no preflight)
        ("null", 403),  # a sandboxed frame or a file: page
        ("http://localhost:3000", 200),  # a page on this machine
        ("https://app.example", 200),  # named with allowed_origins
    ],
)
def test_cross_origin_browser_requests_are_refused(serve, origin, expected):
    server = serve(allowed_origins=("https://app.example",))
    status, _, answer = post(server, "/v1/completions", SMALL, {"Origin": origin, "Content-Type": "text/plain"})
    assert status == expected, answer


# ---- every other fault of the client is a 4xx ----------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # nesting past the parser's recursion
        (b'{"prompt": "a", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),  # an integer of 5,000 digits
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_bodies_that_break_the_parser_are_a_400(serve, body, message):
    status, _, answer = post(serve(), "/v1/completions", body)
    assert status == 400 and message in answer["error"]["message"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "BREW"])
def test_other_methods_are_a_405(serve, method):
    status, _, answer = send(serve(), method, "/v1/completions", SMALL)
    assert status == 405 and f"method '{method}' not allowed here: POST" in answer["error"]["message"]


# ---- a bounded load test: everything at once ------------------------------------------------------------


@pytest.mark.slow
def test_a_mixed_load_stays_within_the_limits_and_stops_by_itself(serve):
    """Idle sockets, oversized requests, clients that leave mid-generation and ordinary requests, all at
    once: the server's connections stay within --max-connections, every answer is 200, 400 or 503, every
    ordinary request is served (retrying on 503), and the server is idle again after the read timeout."""
    server = serve(max_connections=8, max_queue=2, read_timeout=1.0, max_request_tokens=2000)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], server.connections)
            time.sleep(0.01)

    statuses, served, refused = [], [], []

    def ask(body, answered):
        for _ in range(100):  # 503 says: try again (bounded: 100 tries of 0.1 s)
            status, _, _ = post(server, "/v1/completions", body, timeout=30)
            statuses.append(status)
            if status != 503:
                answered.append(status)
                return
            time.sleep(0.1)

    def leaver():
        sock = open_request(server, {**LONG, "n": 1})  # 1,003 token positions: within the budget
        time.sleep(0.3)
        sock.close()

    def idle():
        with socket.create_connection(address(server), timeout=10) as sock:
            closed_by_server(sock, within=5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = [threading.Thread(target=idle) for _ in range(10)]
    clients += [threading.Thread(target=ask, args=({**SMALL, "n": 3000}, refused)) for _ in range(10)]
    clients += [threading.Thread(target=leaver) for _ in range(5)]
    clients += [threading.Thread(target=ask, args=({**SMALL, "seed": k}, served)) for k in range(15)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    assert not any(thread.is_alive() for thread in clients)
    assert wait_until(lambda: server.connections == 0, within=5)
    stop.set()
    watcher.join()
    assert peak[0] <= 8
    assert set(statuses) <= {200, 400, 503}
    assert refused == [400] * 10 and served == [200] * 15
