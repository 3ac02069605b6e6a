"""The decoding worker of `lmforge serve`: one thread that owns the models, fed by a bounded queue.

The HTTP side (generation/serve_app.py, on uvicorn's event loop) turns each request into a `Job` and
`submit`s it; the worker takes the job waiting longest together with the waiting jobs that can share its
decoding call, up to the generator's `batch_size` rows, and runs them as one call of the project's
generator (`HFGenerator.generate`, generation/generate.py) or of the scorer (`score_sequences`,
generation/logprobs.py): concurrent requests fill one batch instead of waiting for each other. This
is request-level batching: a request that arrives while a batch decodes waits for the next one.
Iteration-level scheduling (Orca, Yu et al. 2022, OSDI; vLLM) lets it join the running batch at the
next step; for that, serve with vLLM (docs/serving.md).

An idle worker waits GATHER_SECONDS (20 ms) for the requests sent together to arrive before it
decodes. Jobs share a call when they have the same model and the same sampling parameters. A
request's seed enters each sample's own random generator (`sample_seed(seed, prompt, j)`,
generation/sampling.py), so seeded requests batch only with the same seed; requests without a seed
batch together under one fresh seed drawn for the call, unless they share a prompt (which would then
get the same samples). Greedy requests ignore the seed. A batch's answers are therefore the ones each
request would get alone (up to floating-point differences between batch shapes, as in
generation/generate.py).

Bounds: at most `max_queue` jobs wait while a batch decodes (one more when the worker is idle: it
is taken after the gathering wait); past that `submit` answers busy (503 with Retry-After). A job
whose client leaves (`leave`) is dropped from the queue, or, while its batch decodes, stops the batch
between two decoding steps: the other jobs of the batch go back to the front of the queue and run
again (their answers are the same: every sample is seeded), so a request nobody waits for does not
hold the model.

Streaming: a generation job with `on_text` hears each of its completions' text as it grows, from the
decoding thread, as `on_text(choice index, delta)` (the index as in the answer: prompt x n + sample).
The worker feeds each generated token to the completion's `TextDeltas` (generation/text_deltas.py),
kept on the job, so that a job rerun after its batch stopped sends nothing twice.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from lmforge.generation.generate import HFGenerator
from lmforge.generation.logprobs import ScoredSequence, score_sequences
from lmforge.generation.sampling import Completion, GenerationStopped, SamplingParams
from lmforge.generation.serve_limits import ClientGone, busy
from lmforge.generation.text_deltas import TextDeltas

# An idle worker waits this long for more jobs before it decodes: requests a client sends together
# (lm-evaluation-harness's num_concurrent, a thread pool) arrive a few milliseconds apart, and would
# otherwise run as one lone request and then a batch of the rest. Triton's dynamic batcher calls this
# the queue delay (max_queue_delay_microseconds).
GATHER_SECONDS = 0.02


@dataclass(eq=False)
class Job:
    """One request's decoding work: `generate` completions of `prompts`, or `score` `sequences`."""

    generator: HFGenerator
    kind: str
    """"generate" or "score\""""
    prompts: list[str] = field(default_factory=list)
    params: SamplingParams | None = None
    seeded: bool = True
    """whether the request named its seed (else the worker draws one per decoding call)"""
    sequences: list[list[int]] = field(default_factory=list)
    top_k: int = 0
    on_text: Callable[[int, str], None] | None = None
    """hears each completion's new text while it is generated (called on the decoding thread)"""
    deltas: dict[int, TextDeltas] = field(default_factory=dict)
    """choice index -> what of its text was handed to on_text"""
    gone: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    started: bool = False

    @property
    def rows(self) -> int:
        """Sequences this job adds to a batch."""
        if self.kind == "score":
            return len(self.sequences)
        return len(self.prompts) * (1 if self.params.temperature == 0 else self.params.n)

    @property
    def key(self) -> tuple:
        """Jobs with equal keys can share one decoding call."""
        if self.kind == "score":
            return (id(self.generator), "score")
        params = self.params
        if params.temperature == 0:  # greedy: the seed plays no part
            params = replace(params, seed=0)
        elif not self.seeded:
            params = replace(params, seed=-1)  # any seedless request: one seed drawn per call
        return (id(self.generator), "generate", params)


class DecodingWorker:
    """One thread decoding batches of jobs; `submit` from any thread, then wait on the job's future."""

    def __init__(self, max_queue: int, batch_rows: int, gather_seconds: float = GATHER_SECONDS):
        self.max_queue = max_queue
        self.batch_rows = batch_rows
        self.gather_seconds = gather_seconds
        self.waiting: deque[Job] = deque()
        self.busy = False
        self.closed = False
        self.lock = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="lmforge-serve-decoding", daemon=True)
        self.batches = 0  # decoding calls made (tests and logs read it)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> Future:
        """Queue `job`; 503 (busy) when `max_queue` jobs already wait."""
        with self.lock:
            if self.closed:
                raise busy("the server is shutting down")
            room = self.max_queue + (0 if self.busy else 1)
            if len(self.waiting) >= room:
                doing = "a batch decoding and " if self.busy else ""
                raise busy(f"the server is busy: {doing}{len(self.waiting)} requests waiting (--max-queue)")
            self.waiting.append(job)
            self.lock.notify()
        return job.future

    def leave(self, job: Job) -> None:
        """The client of `job` has gone: drop it from the queue, or stop its batch."""
        job.gone.set()
        with self.lock:
            if job in self.waiting:
                self.waiting.remove(job)
                job.future.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """Stop: the decoding batch stops at its next step, waiting jobs get 503."""
        with self.lock:
            self.closed = True
            left, self.waiting = list(self.waiting), deque()
            self.lock.notify_all()
        for job in left:
            _settle(job, error=busy("the server is shutting down"))
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    # ---- the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while self._run_one():
            pass

    def _run_one(self) -> bool:
        """Wait for jobs and decode one batch; False once closed. (A function of its own, so that no job,
        nor the model it holds, stays referenced from this thread between batches.)"""
        with self.lock:
            while not self.waiting and not self.closed:
                self.lock.wait()
            gathered = time.monotonic() + self.gather_seconds
            while not self.closed and sum(job.rows for job in self.waiting) < self.batch_rows:
                if (left := gathered - time.monotonic()) <= 0:
                    break
                self.lock.wait(left)
            if self.closed:
                return False
            batch = self._take()
            self.busy = bool(batch)
        try:
            if batch:
                self._decode(batch)
        finally:
            with self.lock:
                self.busy = False
        return True

    def _take(self) -> list[Job]:
        """The job waiting longest and the waiting jobs that can share its call, within batch_rows rows
        (the first job always goes, whatever its size). Called with the lock held."""
        batch: list[Job] = []
        rows = 0
        prompts: set[str] = set()
        for job in list(self.waiting):
            if batch and (job.key != batch[0].key or rows + job.rows > self.batch_rows):
                continue
            if batch and not job.seeded and prompts.intersection(job.prompts):
                continue  # under one drawn seed, a shared prompt would get the same samples
            self.waiting.remove(job)
            if not job.started:
                if not job.future.set_running_or_notify_cancel():
                    continue  # cancelled while waiting
                job.started = True
            batch.append(job)
            rows += job.rows
            prompts.update(job.prompts)
            if rows >= self.batch_rows:
                break
        return batch

    def _decode(self, batch: list[Job]) -> None:
        def should_stop() -> bool:
            return self.closed or any(job.gone.is_set() for job in batch)

        self.batches += 1
        try:
            results = _compute(batch, should_stop)
        except GenerationStopped:
            self._put_back(batch)
            return
        except Exception as error:  # noqa: BLE001 - each job gets its own answer, not its neighbour's fault
            if len(batch) > 1:  # run each alone, so that a fault names the request that caused it
                for job in batch:
                    self._decode([job])
            else:
                _settle(batch[0], error=error)
            return
        for job, result in zip(batch, results, strict=True):
            _settle(job, result=result)

    def _put_back(self, batch: list[Job]) -> None:
        """After a stop: the jobs whose clients left are done; the rest wait at the front again."""
        staying = [job for job in batch if not job.gone.is_set()]
        for job in batch:
            if job.gone.is_set():
                _settle(job, error=ClientGone())
        with self.lock:
            if self.closed:
                leaving, staying = staying, []
            else:
                leaving = []
                self.waiting.extendleft(reversed(staying))
        for job in leaving:
            _settle(job, error=busy("the server is shutting down"))


def _compute(batch: list[Job], should_stop: Callable[[], bool]) -> list:
    """One decoding call for the jobs of `batch` (equal keys); each job's share of the results."""
    first = batch[0]
    if first.kind == "score":
        sequences = [s for job in batch for s in job.sequences]
        top_k = max(job.top_k for job in batch)
        scored = score_sequences(first.generator, sequences, top_k, should_stop)
        return _split(scored, [len(job.sequences) for job in batch])
    params = first.params
    if not first.seeded and params.temperature > 0:
        params = replace(params, seed=secrets.randbelow(2**31))
    prompts = [p for job in batch for p in job.prompts]
    on_step = _text_steps(batch, params) if any(job.on_text for job in batch) else None
    completions = first.generator.generate(prompts, params, should_stop=should_stop, on_step=on_step)
    return _split(completions, [len(job.prompts) for job in batch])


def _text_steps(batch: list[Job], params: SamplingParams) -> Callable[[int, int, int], None]:
    """The generator's `on_step` for a batch: each token of a streaming job's completion to its
    TextDeltas, and the new text, if any, to the job's on_text."""
    owners = [(job, k) for job in batch for k in range(len(job.prompts))]  # prompt of the call -> (job, its prompt)
    tokenizer = batch[0].generator.tokenizer  # this thread's: decoding does not touch its padding settings
    for job in batch:
        for deltas in job.deltas.values():
            deltas.restart()

    def on_step(i: int, j: int, token: int) -> None:
        job, k = owners[i]
        if job.on_text is None:
            return
        index = k * params.n + j
        if index not in job.deltas:
            job.deltas[index] = TextDeltas(tokenizer, params.stop)
        if delta := job.deltas[index].add(token):
            job.on_text(index, delta)

    return on_step


def _split(items: list, sizes: list[int]) -> list[list]:
    parts, start = [], 0
    for size in sizes:
        parts.append(items[start : start + size])
        start += size
    return parts


def _settle(job: Job, result: list[list[Completion]] | list[ScoredSequence] | None = None, error=None) -> None:
    """Hand the job its result or error (its future may have been cancelled meanwhile)."""
    if job.future.done():
        return
    if not job.started and not job.future.set_running_or_notify_cancel():
        return
    job.started = True
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)
