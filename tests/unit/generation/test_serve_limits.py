"""The limits of `lmforge serve` as plain functions (generation/serve_limits.py), apart from its HTTP stack;
test_serve_attacks.py runs the attacks they answer against a real server, test_serve_worker.py the queue."""

import pytest

from lmforge.errors import UserError
from lmforge.generation.serve_limits import (
    ClientError,
    LoadedModels,
    ServeLimits,
    adapter_folder,
    check_work,
    content_length,
    host_allowed,
    host_names,
    normal_host,
    origin_allowed,
    request_work,
)


@pytest.mark.parametrize(
    "values, expected",
    [(["12"], 12), (["0"], 0), ([" 7 "], 7), (["5", "5"], 5)],
)
def test_content_length_takes_one_plain_decimal(values, expected):
    assert content_length(values, None, 100) == expected


@pytest.mark.parametrize(
    "values, encoding, status",
    [
        (["-1"], None, 400),
        (["+5"], None, 400),
        (["1_0"], None, 400),
        (["٣"], None, 400),  # a digit int() reads, in another script
        (["5", "6"], None, 400),
        ([], None, 411),
        (["5"], "chunked", 411),
        (["101"], None, 413),
    ],
)
def test_content_length_refuses_the_rest(values, encoding, status):
    with pytest.raises(ClientError) as error:
        content_length(values, encoding, 100)
    assert error.value.status == status


def test_request_work_counts_every_position_of_every_sample():
    # brute force: each of n samples of each prompt holds its prompt and max_tokens new tokens
    prompts, n, max_tokens = [3, 5, 1], 4, 7
    assert request_work(prompts, n, max_tokens) == sum(
        1 for p in prompts for _ in range(n) for _ in range(p + max_tokens)
    )
    check_work(prompts, n, max_tokens, budget=request_work(prompts, n, max_tokens))  # at the budget: fine
    with pytest.raises(ClientError, match="--max-request-tokens") as error:
        check_work(prompts, n, max_tokens, budget=request_work(prompts, n, max_tokens) - 1)
    assert error.value.status == 400


@pytest.mark.parametrize(
    "host, expected",
    [("LocalHost:80", "localhost"), ("[::1]:8000", "::1"), ("example.org.", "example.org"), ("::1", "::1")],
)
def test_normal_host(host, expected):
    assert normal_host(host) == expected


def test_hosts_are_loopback_names_the_bound_address_and_the_allowed_ones():
    names = host_names("10.0.0.5", ("box.lan",))
    assert all(
        host_allowed(h, names, any_ip=False) for h in ("localhost:1", "127.0.0.1", "[::1]:8", "10.0.0.5", "box.lan")
    )
    assert not any(host_allowed(h, names, any_ip=False) for h in ("attacker.example", "10.0.0.6", "", None))
    wildcard = host_names("0.0.0.0", ())
    assert "0.0.0.0" not in wildcard
    assert host_allowed("192.168.1.9:8000", wildcard, any_ip=True)  # an IP literal cannot be rebound
    assert not host_allowed("rebind.attacker.example", wildcard, any_ip=True)
    assert host_allowed("anything", host_names("127.0.0.1", ("*",)), any_ip=False)


def test_origins_are_pages_of_allowed_hosts_or_named_ones():
    names = host_names("127.0.0.1", ())
    assert origin_allowed(None, names, ())
    assert origin_allowed("http://localhost:3000", names, ())
    assert origin_allowed("http://[::1]:3000", names, ())
    assert not origin_allowed("https://attacker.example", names, ())
    assert not origin_allowed("null", names, ())
    assert not origin_allowed("file://localhost", names, ())
    assert origin_allowed("https://App.example/", names, ("https://app.example",))
    assert origin_allowed("https://attacker.example", names, ("*",))


def test_loaded_models_drop_the_least_recently_used_and_remember_its_name():
    models = LoadedModels(2)
    models.add("a", 1)
    models.add("b", 2)
    assert models.use("a") == 1  # a is now the most recent
    models.add("c", 3)  # b goes
    assert list(models) == ["a", "c"]
    with pytest.raises(ClientError, match="load it again") as error:
        models.use("b")
    assert error.value.status == 404
    assert models.use("never-loaded") is None  # the served model answers it
    models.add("b", 4)
    assert models.use("b") == 4 and list(models) == ["c", "b"]
    models.add("b", 5)  # loading a name again replaces it
    assert list(models) == ["c", "b"] and models["b"] == 5


def test_adapter_folder_resolves_under_the_root_and_refuses_the_rest(tmp_path):
    (tmp_path / "run" / "final").mkdir(parents=True)
    assert adapter_folder("run/final", tmp_path, ("tiny-gpt2",)) == str(tmp_path / "run" / "final")
    assert adapter_folder("tiny-gpt2", tmp_path, ("tiny-gpt2",)) == "tiny-gpt2"
    for path in ("/", "..", "run/../../x", "org/name\0"):
        with pytest.raises(ClientError) as error:
            adapter_folder(path, tmp_path, ())
        assert error.value.status in (400, 403)
    with pytest.raises(ClientError, match="no such folder"):
        adapter_folder("org/name", tmp_path, ())  # under the root and absent: never taken for a hub id


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_request_tokens", 0, "--max-request-tokens must be at least 1"),
        ("max_queue", -1, "--max-queue must be at least 0"),
        ("read_timeout", float("nan"), "--read-timeout must be a positive number"),
        ("read_timeout", float("inf"), "--read-timeout must be a positive number"),
        ("max_logprobs", -1, "--max-logprobs must be at least 0"),
    ],
)
def test_limits_out_of_range_are_refused_naming_the_flag(field, value, message):
    with pytest.raises(UserError, match=message):
        ServeLimits(**{field: value})
