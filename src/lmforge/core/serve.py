"""`lmforge serve`: an OpenAI-compatible HTTP server over the `hf` generation backend.

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models` (and `GET /health`), and
`POST /v1/load_lora_adapter` as vLLM has it (`{"lora_name": ..., "lora_path": ...}`): the folder (a LoRA
run, its final/ folder, or any model lmforge loads) is loaded beside the served model, and requests whose
`model` is that name go to it. Self-improvement loops (V-STaR) use it to sample from each new generator.
The standard library's ThreadingHTTPServer answers requests on threads; generation itself is
serialised by a lock (one model, one batch at a time; a request's n samples and prompts are batched).

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

import json
import math
import secrets
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lmforge.core.generate import Completion, HFGenerator, SamplingParams
from lmforge.errors import UserError

MAX_BODY_BYTES = 16 * 1024 * 1024
FALLBACK_CHAT_STOP = "\nuser:"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class CompletionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], generator: HFGenerator, model_name: str, quiet: bool = False):
        super().__init__(address, Handler)
        self.generator = generator
        self.model_name = model_name
        self.quiet = quiet
        self.lock = threading.Lock()
        self.loaded: dict[str, HFGenerator] = {}  # lora_name -> its generator (load_lora_adapter)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def generator_for(self, model: object) -> HFGenerator:
        return self.loaded.get(model, self.generator) if isinstance(model, str) else self.generator

    def run_generation(
        self, prompts: list[str], params: SamplingParams, model: object = None
    ) -> list[list[Completion]]:
        with self.lock:
            return self.generator_for(model).generate(prompts, params)

    def load(self, name: str, path: str) -> None:
        """Load the model of `path` (as `lmforge serve` would) under `name`; loading a name again replaces it."""
        from lmforge.core.generate import make_generator

        generator = make_generator("hf", path, batch_size=self.generator.batch_size)
        with self.lock:
            self.loaded[name] = generator


def start_in_thread(server: CompletionServer) -> threading.Thread:
    """Serve on a daemon thread (tests, notebooks); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


class Handler(BaseHTTPRequestHandler):
    server: CompletionServer

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            names = [self.server.model_name, *self.server.loaded]
            models = [{"id": name, "object": "model", "created": 0, "owned_by": "lmforge"} for name in names]
            self._send(200, {"object": "list", "data": models})
        elif self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._error(404, f"no such endpoint: GET {self.path}")

    def do_POST(self) -> None:
        path = self.path.rstrip("/")
        endpoints = {
            "/v1/completions": self._completions,
            "/v1/chat/completions": self._chat,
            "/v1/load_lora_adapter": self._load_lora_adapter,
        }
        if path not in endpoints:
            self._error(404, f"no such endpoint: POST {self.path}")
            return
        try:
            body = self._read_json()
            answer = endpoints[path](body)
        except UserError as e:
            self._error(400, str(e))
            return
        except Exception as e:  # noqa: BLE001 - the client gets the reason; the server keeps serving
            self._error(500, f"{type(e).__name__}: {e}", kind="server_error")
            return
        self._send(200, answer)

    # ---- endpoints --------------------------------------------------------------------------------

    def _completions(self, body: dict) -> dict:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        else:
            raise UserError("'prompt' must be a string or a non-empty list of strings")
        params = sampling_params(body, default_max_tokens=16)
        results = self.server.run_generation(prompts, params, body.get("model"))
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
        return self._answer("cmpl", "text_completion", choices, prompts, results)

    def _chat(self, body: dict) -> dict:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError("'messages' must be a non-empty list of {role, content} objects")
        prompt, extra_stop = render_chat(self.server.generator_for(body.get("model")).tokenizer, messages)
        params = sampling_params(body, default_max_tokens=256, extra_stop=extra_stop)
        results = self.server.run_generation([prompt], params, body.get("model"))
        choices = [
            {
                "index": j,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "completion_tokens": c.tokens,
            }
            for j, c in enumerate(results[0])
        ]
        return self._answer("chatcmpl", "chat.completion", choices, [prompt], results)

    def _load_lora_adapter(self, body: dict) -> dict:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise UserError("'lora_name' and 'lora_path' must be non-empty strings")
        self.server.load(name, path)  # a bad folder is a UserError: 400 with its message
        return {"status": "ok", "lora_name": name, "lora_path": path}

    def _answer(self, prefix: str, kind: str, choices: list, prompts: list[str], results) -> dict:
        prompt_tokens = sum(self.server.generator.count_tokens(p) for p in prompts)  # one tokenizer for all
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

    def _read_json(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise UserError("a JSON body with a Content-Length header is required") from None
        if length > MAX_BODY_BYTES:
            raise UserError(f"the body is {length:,} bytes; at most {MAX_BODY_BYTES:,}")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise UserError("the body must be a JSON object")
        return body

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"lmforge serve: {self.address_string()} {format % args}\n")


def sampling_params(body: dict, default_max_tokens: int, extra_stop: tuple[str, ...] = ()) -> SamplingParams:
    """SamplingParams from an OpenAI request body; a field of the wrong type or range is a UserError."""
    for unsupported in ("stream", "logprobs", "echo"):
        if body.get(unsupported) not in (None, False, 0):
            raise UserError(f"'{unsupported}' is not supported by lmforge serve")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise UserError("'stop' must be a string or a list of non-empty strings")
    seed = body.get("seed")
    return SamplingParams(
        n=_number(body, "n", 1, int),
        temperature=_number(body, "temperature", 1.0, float),
        top_p=_number(body, "top_p", 1.0, float),
        max_new_tokens=_number(body, "max_tokens", default_max_tokens, int),
        stop=tuple(stop) + extra_stop,
        seed=secrets.randbelow(2**31) if seed is None else _number(body, "seed", 0, int),
    )


def _number(body: dict, key: str, default, kind: type):
    value = body.get(key)
    if value is None:
        return default
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not is_number or (kind is int and not float(value).is_integer()):
        raise UserError(f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def render_chat(tokenizer, messages: list) -> tuple[str, tuple[str, ...]]:
    """The prompt for chat `messages`, and stop strings the rendering needs."""
    clean = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UserError(f"messages[{k}] must be an object with a string 'role' and a 'content'")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise UserError(f"messages[{k}].content must be a string or a list of text parts")
        clean.append({"role": m["role"], "content": content})
    if getattr(tokenizer, "chat_template", None):
        try:
            prompt = tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - templates raise their own errors (e.g. roles must alternate)
            raise UserError(f"the model's chat template refused these messages: {e}") from None
        # The template writes the BOS token itself; tokenizing the prompt would add a second one.
        bos = tokenizer.bos_token
        if bos and prompt.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
            prompt = prompt[len(bos) :]
        return prompt, ()
    lines = "".join(f"{m['role']}: {m['content']}\n" for m in clean)
    return lines + "assistant:", (FALLBACK_CHAT_STOP,)


# ---- the command ----------------------------------------------------------------------------------

SERVE_DESCRIPTION = """\
Serve a causal language model over HTTP with the OpenAI API, so that any OpenAI client, or
lmforge's own `openai` generation backend, can use it:
  POST /v1/completions       {"prompt": "...", "max_tokens": 64, "temperature": 0, "stop": ["\\n"], "n": 1, "seed": 0}
  POST /v1/chat/completions  {"messages": [{"role": "user", "content": "..."}], ...}
  GET  /v1/models
Generation runs one request at a time; within a request, prompts and samples are batched. With a
"seed" an answer is reproducible; without one, every request draws a fresh seed. The server has no
authentication: it listens on the loopback interface unless --host says otherwise."""

SERVE_EPILOG = """\
examples:
  lmforge serve tiny-gpt2 --port 8001
  lmforge serve gemma-3-270m
  lmforge serve runs/sft-gemma_gsm8k-20261207-120000/   (a finished `lmforge run sft/gemma_gsm8k`)
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "Q: 2+3=?\\nA:", "max_tokens": 8, "temperature": 0}'"""


def add_serve_parser(commands) -> None:
    import argparse

    p = commands.add_parser(
        "serve",
        help="serve a causal LM with an OpenAI-compatible HTTP API (completions, chat, models)",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        metavar="MODEL_OR_RUN_DIR",
        help="gemma-3-270m, tiny-gpt2, a Hugging Face causal-LM folder, or a finished run folder",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences generated together (default: %(default)s)")
    p.add_argument("--name", help="the model id clients see in /v1/models and answers (default: MODEL_OR_RUN_DIR)")
    p.add_argument("--quiet", action="store_true", help="do not log each request on stderr")
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    from lmforge.core.console import say
    from lmforge.core.generate import make_generator

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected 0 to 65535")
    generator = make_generator("hf", args.model, batch_size=args.batch_size)
    name = args.name or (Path(args.model).name if Path(args.model).is_dir() else args.model)
    try:
        server = CompletionServer((args.host, args.port), generator, name, quiet=args.quiet)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    if args.host not in LOOPBACK:
        say(f"listening on {args.host}, beyond this machine, with no authentication")
    say(f"serving {name} at {server.url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
