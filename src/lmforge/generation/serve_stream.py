"""`stream: true` of `lmforge serve`, token by token: server-sent events in OpenAI's chunk format
(platform.openai.com/docs/api-reference/completions/object and .../chat/streaming) sent while the
completions are generated.

The request is checked and handed to the decoding worker before the answer starts, so that a bad
request still gets its 4xx and a full queue its 503. The job's `on_text` runs on the decoding thread
(generation/serve_worker.py); it hands each text delta to this request's asyncio queue with
`loop.call_soon_threadsafe`, and the response reads the queue. The deltas are text that can no longer
change (generation/text_deltas.py: no half character, no possible start of a stop string); once the
job is done, each choice's rest of the text, its finish reason, the usage (when asked) and
`data: [DONE]` follow, so the chunks joined are the text a plain request gets. A fault once the answer
has started goes out as an event carrying OpenAI's error object (which OpenAI's client raises), then
[DONE]. A client that leaves stops its job, as for a plain request.

Completions with `logprobs` or `echo` are not streamed token by token: their whole answer goes out in
chunks once it is ready (generation/serve_openai.py's `completion_events`).
"""

from __future__ import annotations

import asyncio
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from lmforge.generation.sampling import Completion
from lmforge.generation.serve_completions import check_prompts, prepare, request_tokenizer
from lmforge.generation.serve_limits import ClientError, ClientGone, ServeLimits, error_body
from lmforge.generation.serve_openai import event, usage
from lmforge.generation.serve_requests import ChatRequest, CompletionRequest, render_chat
from lmforge.generation.serve_worker import DecodingWorker, Job

Chunk = Callable[[int, dict], dict]
"""(choice index, what the choice says) -> the choice of a chunk"""


def streams_tokens(req: CompletionRequest) -> bool:
    """Whether a completion request is streamed token by token (not one asking for log-probabilities)."""
    return req.stream and req.logprobs is None and not req.echo


async def completion_stream(
    generator, name: str, req: CompletionRequest, limits: ServeLimits, worker: DecodingWorker, request
) -> AsyncIterator[str]:
    """The events of a streamed completion request (checked and queued before this returns)."""
    prompts = await asyncio.to_thread(prepare, generator, req.prompts)
    check_prompts(generator, prompts, req.params.n, req.max_tokens, limits)
    job = Job(generator, "generate", prompts=[p.text for p in prompts], params=req.params, seeded=req.seeded)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": name}

    def choice(index: int, says: dict) -> dict:
        text = says.get("text", "")
        return {"index": index, "text": text, "logprobs": None, "finish_reason": says.get("finish_reason")}

    return _events(worker, job, request, head, choice, [], sum(len(p.ids) for p in prompts), req.include_usage)


async def chat_stream(
    generator, name: str, req: ChatRequest, limits: ServeLimits, worker: DecodingWorker, request
) -> AsyncIterator[str]:
    """The `chat.completion.chunk` events of a streamed chat request (checked and queued before this returns)."""
    text, extra_stop = await asyncio.to_thread(render_chat, request_tokenizer(generator), req.messages)
    params = replace(req.params, stop=req.params.stop + extra_stop)
    prompts = await asyncio.to_thread(prepare, generator, [text])
    check_prompts(generator, prompts, params.n, params.max_new_tokens, limits)
    job = Job(generator, "generate", prompts=[text], params=params, seeded=req.seeded)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time())}
    head["model"] = name

    def choice(index: int, says: dict) -> dict:
        delta = {"content": says["text"]} if "text" in says else {}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": says.get("finish_reason")}

    role = {"delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    roles = [{"index": j, **role} for j in range(params.n)]
    return _events(worker, job, request, head, choice, roles, len(prompts[0].ids), req.include_usage)


def _events(
    worker: DecodingWorker,
    job: Job,
    request,
    head: dict,
    choice: Chunk,
    first: list[dict],
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Queue `job` with an `on_text` that feeds this request's queue (503 here when the worker is full);
    the events: `first` choices, the text deltas, each choice's rest and end, the usage, [DONE]."""
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue = asyncio.Queue()  # (choice index, text), then None once the job is done

    def on_text(index: int, text: str) -> None:  # on the decoding thread
        try:
            loop.call_soon_threadsafe(deltas.put_nowait, (index, text))
        except RuntimeError:  # the event loop has closed (the server is stopping): nobody to tell
            pass

    job.on_text = on_text
    result = asyncio.wrap_future(worker.submit(job))
    # After the deltas: the future's result comes through the loop after every call_soon_threadsafe before it.
    result.add_done_callback(lambda f: (f.cancelled() or f.exception(), deltas.put_nowait(None)))
    extra = {"usage": None} if include_usage else {}

    def chunk(choice_: dict) -> str:
        return event({**head, "choices": [choice_], **extra})

    async def events() -> AsyncIterator[str]:
        left = asyncio.ensure_future(_disconnected(request))
        left.add_done_callback(lambda f: f.cancelled() or worker.leave(job))
        sent: dict[int, str] = {}
        try:
            for choice_ in first:
                yield chunk(choice_)
            while (item := await deltas.get()) is not None:
                index, text = item
                sent[index] = sent.get(index, "") + text
                yield chunk(choice(index, {"text": text}))
            try:
                rows: list[list[Completion]] = result.result()
            except (ClientGone, asyncio.CancelledError):
                return
            except ClientError as e:
                yield event(error_body(e.status, str(e), e.param, e.code))
                yield event("[DONE]")
                return
            except Exception:  # noqa: BLE001 - a fault of the server: logged here, a short event there
                sys.stderr.write(f"lmforge serve: streaming {head['object']}\n{traceback.format_exc()}")
                yield event(error_body(500, "the server failed on this request; its log says why"))
                yield event("[DONE]")
                return
            completions = [c for row in rows for c in row]
            for index, completion in enumerate(completions):
                done = sent.get(index, "")
                if rest := completion.text[len(done) :] if completion.text.startswith(done) else "":
                    yield chunk(choice(index, {"text": rest}))
                end = choice(index, {"finish_reason": completion.finish_reason})
                yield chunk({**end, "completion_tokens": completion.tokens})
            if include_usage:
                completion_tokens = sum(c.tokens for c in completions)
                yield event({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
            yield event("[DONE]")
        finally:
            left.cancel()
            if not result.done():
                worker.leave(job)

    return events()


async def _disconnected(request) -> None:
    """Return when the client disconnects (its whole request has been read: the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
