"""The decoding worker of `lmforge serve` (generation/serve_worker.py) on tiny-gpt2: requests waiting
together share one decoding call and get the answers each would get alone; the queue is bounded; a
request whose client leaves is dropped, or stops its batch; a bad request does not fail its neighbours."""

import time

import pytest
from tiny_server import tiny_generator  # noqa: F401 (fixture)

from lmforge.errors import UserError
from lmforge.generation.logprobs import score_sequences
from lmforge.generation.sampling import SamplingParams
from lmforge.generation.serve_limits import ClientError, ClientGone
from lmforge.generation.serve_worker import DecodingWorker, Job

# About a minute of decoding unless it is stopped: it keeps the worker busy while others queue.
LONG = SamplingParams(n=64, temperature=1.0, max_new_tokens=1000, seed=0)


@pytest.fixture
def worker():
    workers = []

    def start(max_queue: int = 8, batch_rows: int = 8) -> DecodingWorker:
        w = DecodingWorker(max_queue, batch_rows)
        w.start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.close()


def generate(generator, prompts, params, seeded=True) -> Job:
    return Job(generator, "generate", prompts=prompts, params=params, seeded=seeded)


def busy_with_long_job(worker, generator) -> Job:
    long = generate(generator, ["the movie was"], LONG)
    worker.submit(long)
    deadline = time.monotonic() + 10
    while not worker.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.busy
    return long


def test_waiting_requests_share_one_call_and_get_what_each_gets_alone(worker, tiny_generator):
    w = worker(batch_rows=8)
    long = busy_with_long_job(w, tiny_generator)
    sampled = SamplingParams(n=2, temperature=0.8, max_new_tokens=6, seed=5)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6, seed=1)
    jobs = [
        generate(tiny_generator, ["a gripping film", "what is"], sampled),
        generate(tiny_generator, ["the plot"], sampled),
        generate(tiny_generator, ["hello"], greedy),
        generate(tiny_generator, ["hello there"], SamplingParams(temperature=0.0, max_new_tokens=6, seed=9)),
    ]
    futures = [w.submit(job) for job in jobs]
    w.leave(long)  # the long job stops; the four waiting ones run
    with pytest.raises(ClientGone):
        long.future.result(30)
    results = [f.result(60) for f in futures]
    assert w.batches == 3  # the long job, the two sampled jobs together, the two greedy ones (seeds differ) together
    for job, result in zip(jobs, results):
        assert result == tiny_generator.generate(job.prompts, job.params)


def test_requests_without_a_seed_share_a_call_unless_they_share_a_prompt(worker, tiny_generator):
    w = worker(batch_rows=8)
    long = busy_with_long_job(w, tiny_generator)
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=8, seed=0)
    jobs = [generate(tiny_generator, [p], params, seeded=False) for p in ("a", "b", "a")]
    futures = [w.submit(job) for job in jobs]
    w.leave(long)
    results = [f.result(60) for f in futures]
    assert w.batches == 3  # the long job; "a" and "b" under one drawn seed; the second "a" under another
    assert results[0] != results[2]  # one prompt asked twice: two different samples


def test_the_queue_is_bounded_and_a_waiter_that_leaves_gives_up_its_place(worker, tiny_generator):
    w = worker(max_queue=1)
    long = busy_with_long_job(w, tiny_generator)
    waiting = generate(tiny_generator, ["a"], SamplingParams(max_new_tokens=2))
    w.submit(waiting)
    with pytest.raises(ClientError, match="--max-queue") as refused:
        w.submit(generate(tiny_generator, ["b"], SamplingParams(max_new_tokens=2)))
    assert refused.value.status == 503 and refused.value.headers["Retry-After"]
    w.leave(waiting)
    assert waiting.future.cancelled() and not w.waiting
    served = w.submit(generate(tiny_generator, ["b"], SamplingParams(max_new_tokens=2)))  # a place again
    w.leave(long)
    assert len(served.result(30)) == 1


def test_a_request_that_fails_does_not_fail_the_requests_batched_with_it(worker, tiny_generator):
    w = worker(batch_rows=8)
    long = busy_with_long_job(w, tiny_generator)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    good = generate(tiny_generator, ["the movie was"], params)
    too_long = generate(tiny_generator, ["word " * 1020], params)  # past tiny-gpt2's 1,024 positions
    futures = [w.submit(good), w.submit(too_long)]
    w.leave(long)
    assert futures[0].result(60) == tiny_generator.generate(["the movie was"], params)
    with pytest.raises(UserError, match="1024 positions"):
        futures[1].result(60)


def test_scoring_jobs_batch_together(worker, tiny_generator):
    w = worker(batch_rows=8)
    long = busy_with_long_job(w, tiny_generator)
    ids = tiny_generator.tokenizer("the movie was great")["input_ids"]
    jobs = [
        Job(tiny_generator, "score", sequences=[ids], top_k=1),
        Job(tiny_generator, "score", sequences=[ids[:2], ids], top_k=3),
    ]
    futures = [w.submit(job) for job in jobs]
    w.leave(long)
    [alone], pair = futures[0].result(30), futures[1].result(30)
    assert w.batches == 2  # the long job, then both scoring jobs in one call
    [direct] = score_sequences(tiny_generator, [ids], top_k=3)
    for scored in (alone, pair[1]):
        assert scored.tokens == ids
        assert scored.token_logprobs[0] is None
        assert scored.token_logprobs[1:] == pytest.approx(direct.token_logprobs[1:], abs=1e-5)
    assert pair[0].tokens == ids[:2] and len(pair[0].token_logprobs) == 2
