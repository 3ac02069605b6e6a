"""`lmforge serve`: an OpenAI-compatible HTTP server over the `hf` generation backend.

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models` (and `GET /health`), and
`POST /v1/load_lora_adapter` as vLLM has it (`{"lora_name": ..., "lora_path": ...}`): the folder (a LoRA
run, its final/ folder, or any model lmforge loads) is loaded beside the served model, and requests whose
`model` is that name go to it. Self-improvement loops (V-STaR) use it to sample from each new generator.
The standard library's ThreadingHTTPServer answers requests on threads; generation itself runs one
request at a time (a request's n samples and prompts are batched).

Limits (generation/serve_limits.py, `ServeLimits`; docs/security.md lists the attacks they answer): a body
of at most 16 MB with a plain Content-Length; at most `max_request_tokens` token positions per request
(n x, over its prompts, prompt tokens + max_tokens); `max_queue` requests waiting for the generation
slot and `max_connections` connections (beyond them, 503 with Retry-After); `read_timeout` seconds to
send headers and body; a request whose client disconnects stops between two decoding steps;
`max_adapters` loaded models (least recently used unloaded), only from under `adapter_root`; Host
must be this server's and a browser's Origin a page of it. Every fault of a request answers 4xx.

Request fields, as OpenAI defines them: `prompt` (a string or a list of strings) or `messages`,
`n`, `temperature` (default 1), `top_p` (default 1), `max_tokens` (default 16 for completions, as
OpenAI, and 256 for chat), `stop` (a string or a list), `seed` (default: a fresh random seed per
request; with a seed the answer is reproducible). `model` selects a model loaded with
load_lora_adapter; any other name means the served model. `stream`, `logprobs` and `echo` are
refused with 400; other fields are ignored.
Each choice also carries `completion_tokens`, its own token count (an extension).

Chat: messages are rendered with the tokenizer's chat template when it has one; otherwise as lines
`role: content` followed by `assistant:`, and generation then also stops at "\\nuser:".
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lmforge.errors import UserError
from lmforge.generation.generate import HFGenerator
from lmforge.generation.sampling import Completion, GenerationStopped, SamplingParams
from lmforge.generation.serve_limits import (
    WILDCARD_ADDRESSES,
    ClientError,
    ClientGone,
    DeadlineReader,
    GenerationQueue,
    LoadedModels,
    ServeLimits,
    adapter_folder,
    busy,
    check_work,
    client_gone,
    content_length,
    host_allowed,
    host_names,
    origin_allowed,
    refuse_connection,
)
from lmforge.generation.serve_requests import parse_json, render_chat, sampling_params

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_NAME_CHARS = 256
MAX_PATH_CHARS = 4096
DRAIN_BYTES = 1 << 20  # an unread body is read (up to this) before closing, so the client gets the answer, not a reset


class CompletionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        generator: HFGenerator,
        model_name: str,
        quiet: bool = False,
        limits: ServeLimits | None = None,
    ):
        self.limits = limits or ServeLimits()
        super().__init__(address, Handler)
        self.generator = generator
        self.model_name = model_name
        self.quiet = quiet
        self.queue = GenerationQueue(self.limits.max_queue)
        self.connections = threading.BoundedSemaphore(self.limits.max_connections)
        self.loading = threading.Lock()  # one load_lora_adapter at a time: loads in parallel would pile up models
        self.models_lock = threading.Lock()
        self.loaded = LoadedModels(self.limits.max_adapters)  # lora_name -> its generator, least recently used first
        self.hosts = host_names(address[0], self.limits.allowed_hosts)
        self.any_ip = address[0] in WILDCARD_ADDRESSES

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def generator_for(self, model: object) -> HFGenerator:
        """The generator loaded as `model`; the served one for any other name (404 for an unloaded one)."""
        if not isinstance(model, str):
            return self.generator
        with self.models_lock:
            return self.loaded.use(model) or self.generator

    def load(self, name: str, path: str) -> None:
        """Load the model of `path` (as `lmforge serve` would) under `name`; loading a name again replaces it.
        The least recently used loaded model goes first when --max-adapters are loaded."""
        from lmforge.generation.generate import make_generator
        from lmforge.models.causal_lm import CAUSAL_BUILTINS

        if self.limits.max_adapters == 0:
            raise ClientError(403, "this server loads no other models (--max-adapters 0)")
        folder = adapter_folder(path, self.limits.adapter_root, CAUSAL_BUILTINS)
        if not self.loading.acquire(blocking=False):
            raise busy("another model is being loaded; try again")
        try:
            with self.models_lock:
                self.loaded.make_room(name)
            try:
                generator = make_generator(
                    "hf", folder, batch_size=self.generator.batch_size, dtype=self.generator.dtype
                )
            except MemoryError:
                raise busy(f"lora_path {path!r}: not enough memory to load it now") from None
            except UserError as e:
                raise ClientError(400, f"lora_path {path!r}: {e}") from None
            except Exception as e:  # noqa: BLE001 - a folder of someone else's making fails in its own ways
                reason = (str(e).splitlines() or [""])[0][:200]
                message = f"lora_path {path!r}: not a model lmforge loads ({type(e).__name__}: {reason})"
                raise ClientError(400, message) from None
            with self.models_lock:
                self.loaded.add(name, generator)
        finally:
            self.loading.release()

    # ---- connections: at most max_connections threads --------------------------------------------

    def process_request(self, request, client_address) -> None:
        if not self.connections.acquire(blocking=False):
            refuse_connection(request, self.limits.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request, client_address) -> None:
        if not self.quiet:  # a connection that broke mid-request: one line, not a traceback
            sys.stderr.write(f"lmforge serve: {client_address[0]}: connection failed: {sys.exc_info()[1]!r}\n")


def start_in_thread(server: CompletionServer) -> threading.Thread:
    """Serve on a daemon thread (tests, notebooks); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


class Handler(BaseHTTPRequestHandler):
    server: CompletionServer

    def setup(self) -> None:
        super().setup()
        limits = self.server.limits
        # The headers and the body must all arrive within read_timeout of the connection, however slowly.
        self.deadline: float | None = time.monotonic() + limits.read_timeout
        self.body_read = False
        self.rfile.close()
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, lambda: self.deadline, limits.read_timeout))

    def finish(self) -> None:
        if not self.body_read:
            self._drain()
        super().finish()

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # any other method (PUT, OPTIONS, a made-up one): 405, not http.server's 501
            return self._not_allowed
        raise AttributeError(name)

    def do_GET(self) -> None:
        self._serve(self._get)

    def do_POST(self) -> None:
        self._serve(self._post)

    def _not_allowed(self) -> None:
        self._serve(self._refuse_method)

    def _serve(self, handle) -> None:
        """Answer with what `handle` returns; every fault of the request is a 4xx with one line."""
        try:
            self._check_host()
            answer = handle()
        except ClientGone:
            self.close_connection = True
            self.log_message("%s", "the client left; its generation stopped")
            return
        except ClientError as e:
            self._error(e.status, str(e), headers=e.headers, kind="server_busy" if e.status == 503 else None)
            return
        except UserError as e:
            self._error(400, str(e))
            return
        except Exception:  # noqa: BLE001 - a fault of the server: logged here, a short answer there
            sys.stderr.write(f"lmforge serve: {self.requestline}\n{traceback.format_exc()}")
            self._error(500, "the server failed on this request; its log says why", kind="server_error")
            return
        self._send(200, answer)

    # ---- endpoints --------------------------------------------------------------------------------

    def _get(self) -> dict:
        self.body_read = True
        path = self.path.rstrip("/")
        if path == "/v1/models":
            with self.server.models_lock:
                names = [self.server.model_name, *self.server.loaded]
            models = [{"id": name, "object": "model", "created": 0, "owned_by": "lmforge"} for name in names]
            return {"object": "list", "data": models}
        if path == "/health":
            return {"status": "ok"}
        raise ClientError(404, f"no such endpoint: GET {self.path[:200]}")

    def _post(self) -> dict:
        body = self._read_json()
        endpoints = {
            "/v1/completions": self._completions,
            "/v1/chat/completions": self._chat,
            "/v1/load_lora_adapter": self._load_lora_adapter,
        }
        endpoint = endpoints.get(self.path.rstrip("/"))
        if endpoint is None:
            raise ClientError(404, f"no such endpoint: POST {self.path[:200]}")
        return endpoint(body)

    def _refuse_method(self) -> dict:
        raise ClientError(405, f"method {self.command[:20]!r} not allowed: GET or POST")

    def _completions(self, body: dict) -> dict:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        else:
            raise UserError("'prompt' must be a string or a non-empty list of strings")
        params = sampling_params(body, default_max_tokens=16, max_stop=self.server.limits.max_stop)
        generator = self.server.generator_for(body.get("model"))
        results, prompt_tokens = self._generate(generator, prompts, params)
        choices = [
            {
                "index": i * params.n + j,
                "text": c.text,
                "finish_reason": c.finish_reason,
                "logprobs": None,
                "completion_tokens": c.tokens,
            }
            for i, completions in enumerate(results)
            for j, c in enumerate(completions)
        ]
        return self._answer("cmpl", "text_completion", choices, prompt_tokens, results)

    def _chat(self, body: dict) -> dict:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError("'messages' must be a non-empty list of {role, content} objects")
        generator = self.server.generator_for(body.get("model"))
        prompt, extra_stop = render_chat(generator.tokenizer, messages)
        params = sampling_params(
            body, default_max_tokens=256, extra_stop=extra_stop, max_stop=self.server.limits.max_stop
        )
        results, prompt_tokens = self._generate(generator, [prompt], params)
        choices = [
            {
                "index": j,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "completion_tokens": c.tokens,
            }
            for j, c in enumerate(results[0])
        ]
        return self._answer("chatcmpl", "chat.completion", choices, prompt_tokens, results)

    def _load_lora_adapter(self, body: dict) -> dict:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise UserError("'lora_name' and 'lora_path' must be non-empty strings")
        if len(name) > MAX_NAME_CHARS or len(path) > MAX_PATH_CHARS:
            raise UserError(f"'lora_name' has at most {MAX_NAME_CHARS} characters, 'lora_path' {MAX_PATH_CHARS}")
        self.server.load(name, path)  # a bad folder is a ClientError: 4xx with its message
        return {"status": "ok", "lora_name": name, "lora_path": path}

    def _generate(
        self, generator: HFGenerator, prompts: list[str], params: SamplingParams
    ) -> tuple[list[list[Completion]], int]:
        """The completions, within the request budget, in the one generation slot, stopped if the client goes."""
        prompt_tokens = [generator.count_tokens(p) for p in prompts]
        check_work(prompt_tokens, params.n, params.max_new_tokens, self.server.limits.max_request_tokens)

        def gone() -> bool:
            return client_gone(self.connection)

        with self.server.queue.turn(gone):
            try:
                return generator.generate(prompts, params, should_stop=gone), sum(prompt_tokens)
            except GenerationStopped:
                raise ClientGone() from None

    def _answer(self, prefix: str, kind: str, choices: list, prompt_tokens: int, results) -> dict:
        completion_tokens = sum(c.tokens for completions in results for c in completions)
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.server.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # ---- plumbing ---------------------------------------------------------------------------------

    def _check_host(self) -> None:
        """Refuse a Host that is not this server's (DNS rebinding) and a cross-origin browser request."""
        host, origin = self.headers.get("Host"), self.headers.get("Origin")
        if host is None:
            raise ClientError(400, "a Host header is required")
        if not host_allowed(host, self.server.hosts, self.server.any_ip):
            raise ClientError(403, f"Host {host[:100]!r} is not this server's (--allowed-hosts)")
        if not origin_allowed(origin, self.server.hosts, self.server.limits.allowed_origins):
            raise ClientError(403, f"requests from web pages of {origin[:100]!r} are not allowed (--allowed-origins)")

    def _read_json(self) -> dict:
        limits = self.server.limits
        length = content_length(
            self.headers.get_all("Content-Length") or [], self.headers.get("Transfer-Encoding"), limits.max_body_bytes
        )
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            message = f"the request did not arrive within {limits.read_timeout:g} s (--read-timeout)"
            raise ClientError(408, message) from None
        if len(data) < length:
            raise ClientError(400, f"the body ended after {len(data):,} of its {length:,} bytes")
        self.body_read = True
        return parse_json(data)

    def _drain(self) -> None:
        """Read what the client sent and nobody read, briefly: closing on unread bytes resets the
        connection, and the client would see the reset instead of the answer."""
        try:
            self.connection.settimeout(0.2)
            left = DRAIN_BYTES
            while left > 0:
                chunk = self.connection.recv(min(65536, left))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self.deadline = None
        data = json.dumps(payload, ensure_ascii=False).encode()
        try:
            self.connection.settimeout(self.server.limits.read_timeout)  # a client that does not read: dropped
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client left or stopped reading
            self.close_connection = True

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None, kind: str | None = None) -> None:
        error = {"message": message, "type": kind or "invalid_request_error", "param": None, "code": None}
        self._send(status, {"error": error}, headers)

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"lmforge serve: {self.address_string()} {format % args}\n")
