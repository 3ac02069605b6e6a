"""The ASGI application of `lmforge serve` (Starlette, www.starlette.io): its endpoints, the checks every
request goes through, and OpenAI's error shape for every fault.

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`,
`POST /v1/load_lora_adapter` (vLLM's runtime LoRA call), and vLLM's tokenizer endpoints at the root
(`POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`), which lm-evaluation-harness's
`local-completions` model finds and uses as its tokenizer (`tokenizer_backend=remote`, chosen by itself
when they answer).

Every request, before its endpoint: its Host must be this server's and a browser's Origin a page of it
(DNS rebinding, cross-origin pages: 403), and, when the server has an API key, `Authorization: Bearer
KEY` must carry it (compared in constant time; 401 otherwise). A body needs a plain Content-Length of
at most 16 MB. Every fault of a request is a 4xx in OpenAI's error shape {"error": {"message", "type",
"param", "code"}}; a fault of the server is a 500 whose traceback goes to the server's log only.
"""

from __future__ import annotations

import asyncio
import hmac
import sys
import traceback

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lmforge.errors import UserError
from lmforge.generation.serve_completions import chat, complete, request_tokenizer
from lmforge.generation.serve_limits import (
    ClientError,
    ClientGone,
    content_length,
    error_body,
    host_allowed,
    origin_allowed,
)
from lmforge.generation.serve_openai import completion_events
from lmforge.generation.serve_requests import chat_request, completion_request, parse_json
from lmforge.generation.serve_stream import chat_stream, completion_stream, streams_tokens
from lmforge.generation.serve_worker import Job

MAX_NAME_CHARS = 256
MAX_PATH_CHARS = 4096


def build_app(server):
    """The application serving the models of `server` (a CompletionServer, generation/serve.py): the
    whole ASGI app, the checks, then the routes."""

    def route(path: str, handler, method: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return await answer_faults(handler, request)

        return Route(path, endpoint, methods=[method])

    async def completions(request: Request) -> Response:
        body = await read_json(request, server)
        generator, name = server.generator_for(body.get("model"))
        vocab = min(len(request_tokenizer(generator)), generator.model.config.get_text_config().vocab_size)
        req = completion_request(body, vocab, server.limits.max_stop, server.limits.max_logprobs)
        if streams_tokens(req):
            return events(await completion_stream(generator, name, req, server.limits, server.worker, request))
        whole = await complete(generator, name, req, server.limits, lambda job: decode(request, server, job))
        return events(completion_events(whole, req.include_usage)) if req.stream else JSONResponse(whole)

    async def chat_completions(request: Request) -> Response:
        body = await read_json(request, server)
        generator, name = server.generator_for(body.get("model"))
        req = chat_request(body, server.limits.max_stop)
        if req.stream:
            return events(await chat_stream(generator, name, req, server.limits, server.worker, request))
        whole = await chat(generator, name, req, server.limits, lambda job: decode(request, server, job))
        return JSONResponse(whole)

    async def models(request: Request) -> Response:
        listed = [{"id": name, "object": "model", "created": 0, "owned_by": "lmforge"} for name in server.model_names()]
        return JSONResponse({"object": "list", "data": listed})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def load_lora_adapter(request: Request) -> Response:
        body = await read_json(request, server)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise UserError("'lora_name' and 'lora_path' must be non-empty strings")
        if len(name) > MAX_NAME_CHARS or len(path) > MAX_PATH_CHARS:
            raise UserError(f"'lora_name' has at most {MAX_NAME_CHARS} characters, 'lora_path' {MAX_PATH_CHARS}")
        await asyncio.to_thread(server.load, name, path)  # seconds: the other requests go on meanwhile
        return JSONResponse({"status": "ok", "lora_name": name, "lora_path": path})

    async def tokenize(request: Request) -> Response:
        body = await read_json(request, server)
        generator, _ = server.generator_for(body.get("model"))
        prompt, special = body.get("prompt"), body.get("add_special_tokens", True)
        if not isinstance(prompt, str) or not isinstance(special, bool):
            raise UserError("'prompt' must be a string and 'add_special_tokens' true or false")
        encoded = await asyncio.to_thread(request_tokenizer(generator), prompt, add_special_tokens=special)
        ids = list(encoded["input_ids"])
        return JSONResponse({"count": len(ids), "max_model_len": generator.max_positions, "tokens": ids})

    async def detokenize(request: Request) -> Response:
        body = await read_json(request, server)
        generator, _ = server.generator_for(body.get("model"))
        tokenizer = request_tokenizer(generator)
        tokens, vocab = body.get("tokens"), len(tokenizer)
        valid = isinstance(tokens, list) and all(type(t) is int and 0 <= t < vocab for t in tokens)
        if not valid:
            raise UserError(f"'tokens' must be a list of token ids, each 0 to {vocab - 1}")
        text = await asyncio.to_thread(tokenizer.decode, tokens)
        return JSONResponse({"prompt": text})

    async def tokenizer_info(request: Request) -> Response:
        tokenizer = request_tokenizer(server.generator)
        info = {
            "tokenizer_class": type(tokenizer).__name__,
            "eos_token": tokenizer.eos_token,
            "bos_token": tokenizer.bos_token,
            "pad_token": tokenizer.pad_token,
            "chat_template": getattr(tokenizer, "chat_template", None),
            "model_max_length": server.generator.max_positions,
        }
        return JSONResponse(info)

    routes = [
        route("/v1/completions", completions, "POST"),
        route("/v1/chat/completions", chat_completions, "POST"),
        route("/v1/models", models, "GET"),
        route("/health", health, "GET"),
        route("/v1/load_lora_adapter", load_lora_adapter, "POST"),
        route("/tokenize", tokenize, "POST"),
        route("/detokenize", detokenize, "POST"),
        route("/tokenizer_info", tokenizer_info, "GET"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: unknown_route})
    return Checks(app, server)


class Checks:
    """ASGI middleware: Host, Origin and API key of every request, and one log line per request."""

    def __init__(self, app, server):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        statuses: list[int] = []

        async def logged(message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            await send(message)

        try:
            self.check(Headers(scope=scope))
        except ClientError as e:
            await error_response(e.status, str(e), e.headers, e.param, e.code)(scope, receive, logged)
        else:
            await self.app(scope, receive, logged)
        if not self.server.quiet:
            client = (scope.get("client") or ("-",))[0]
            status = statuses[0] if statuses else "-"
            sys.stderr.write(f"lmforge serve: {client} {scope['method']} {scope['path'][:200]} {status}\n")

    def check(self, headers: Headers) -> None:
        server = self.server
        host, origin = headers.get("host"), headers.get("origin")
        if host is None:
            raise ClientError(400, "a Host header is required")
        if not host_allowed(host, server.hosts, server.any_ip):
            raise ClientError(403, f"Host {host[:100]!r} is not this server's (--allowed-hosts)")
        if not origin_allowed(origin, server.hosts, server.limits.allowed_origins):
            raise ClientError(403, f"requests from web pages of {origin[:100]!r} are not allowed (--allowed-origins)")
        if server.api_key is not None:
            given = headers.get("authorization", "")
            scheme, _, key = given.partition(" ")
            if scheme.lower() != "bearer" or not key:
                raise ClientError(
                    401,
                    "this server needs an API key: send the header 'Authorization: Bearer KEY'",
                    {"WWW-Authenticate": "Bearer"},
                    code="invalid_api_key",
                )
            if not hmac.compare_digest(key.strip().encode(), server.api_key.encode()):
                message = "the API key is not this server's"
                raise ClientError(401, message, {"WWW-Authenticate": "Bearer"}, code="invalid_api_key")


async def answer_faults(handler, request: Request) -> Response:
    """The handler's answer; each fault of the request as a 4xx, a fault of the server as a 500."""
    try:
        return await handler(request)
    except (ClientGone, ClientDisconnect):  # nobody to answer: nothing is sent
        return Response(status_code=499)
    except ClientError as e:
        return error_response(e.status, str(e), e.headers, e.param, e.code)
    except UserError as e:
        return error_response(400, str(e))
    except Exception:  # noqa: BLE001 - a fault of the server: logged here, a short answer there
        sys.stderr.write(f"lmforge serve: {request.method} {request.url.path[:200]}\n{traceback.format_exc()}")
        return error_response(500, "the server failed on this request; its log says why")


async def unknown_route(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "GET, POST").replace(", ", " or ")
        return error_response(405, f"method {request.method[:20]!r} not allowed here: {allowed}")
    return error_response(exc.status_code, f"no such endpoint: {request.method[:20]} {request.url.path[:200]}")


def error_response(
    status: int, message: str, headers: dict | None = None, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """An error in OpenAI's shape; the connection closes after it (a refused body may be left unread)."""
    return JSONResponse(error_body(status, message, param, code), status, {**(headers or {}), "Connection": "close"})


def events(chunks) -> StreamingResponse:
    """Server-sent events (text/event-stream), as OpenAI streams."""
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def read_json(request: Request, server) -> dict:
    """The request's JSON object: a plain Content-Length within the limit, then the body."""
    headers = request.headers
    content_length(headers.getlist("content-length"), headers.get("transfer-encoding"), server.limits.max_body_bytes)
    data = await request.body()  # the connection gives it read_timeout to arrive (generation/serve_http.py)
    return await asyncio.to_thread(parse_json, data) if len(data) > 65536 else parse_json(data)


async def decode(request: Request, server, job: Job) -> list:
    """`job` done by the decoding worker; ClientGone when the client leaves first (the job then stops)."""
    result = asyncio.wrap_future(server.worker.submit(job))
    result.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even when nobody waits
    left = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({result, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if result.done():
        return result.result()
    server.worker.leave(job)
    raise ClientGone()


async def disconnected(request: Request) -> None:
    """Return when the client disconnects (its whole request has been read: the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
