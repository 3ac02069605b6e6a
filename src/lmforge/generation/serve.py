"""`lmforge serve`: an OpenAI-compatible HTTP server over the `hf` generation backend, on uvicorn and
Starlette (uvicorn.dev, www.starlette.io).

The parts: `serve_app.py` (the endpoints, the checks of every request, OpenAI's error shape),
`serve_http.py` (uvicorn's h11 protocol with the connection limits and the read deadline),
`serve_worker.py` (one decoding thread batching the requests that wait in a bounded queue),
`serve_completions.py` (what a completion or chat request computes), `serve_requests.py` (the fields
read), `serve_openai.py` (the answers' shapes and server-sent events), `serve_limits.py` (the limits as
plain functions) and `logprobs.py` (log-probabilities in one forward pass). This module holds the
server itself: the models it serves (the one it started with, and those loaded with
`/v1/load_lora_adapter`, as vLLM's runtime LoRA call, under `--max-adapters` and `--adapter-root`),
the socket, and uvicorn run in this thread or another (`start_in_thread`).

A request's `model` must name a served model: the server's name (`--name`) or a loaded one; any other
name is a 404 in OpenAI's shape (code `model_not_found`); a request without `model` gets the served one.
The server listens on 127.0.0.1 unless told otherwise; with an API key (`--api-key` or LMFORGE_API_KEY)
every request must carry it. See docs/serving.md.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from lmforge.errors import UserError
from lmforge.generation.generate import HFGenerator
from lmforge.generation.serve_completions import request_tokenizer
from lmforge.generation.serve_limits import (
    WILDCARD_ADDRESSES,
    ClientError,
    LoadedModels,
    ServeLimits,
    adapter_folder,
    busy,
    host_names,
)
from lmforge.generation.serve_worker import DecodingWorker

LOOPBACK = ("127.0.0.1", "localhost", "::1")
GRACEFUL_SHUTDOWN_SECONDS = 5  # answers in flight get this long to go out when the server stops


class CompletionServer:
    """The server, bound to `address` at construction (port 0: a free one); `serve_forever` runs it."""

    def __init__(
        self,
        address: tuple[str, int],
        generator: HFGenerator,
        model_name: str,
        quiet: bool = False,
        limits: ServeLimits | None = None,
        api_key: str | None = None,
    ):
        import uvicorn

        from lmforge.generation.serve_app import build_app
        from lmforge.generation.serve_http import limited_protocol

        if api_key is not None and not api_key.strip():
            raise UserError("the API key is empty: give a non-empty --api-key (or LMFORGE_API_KEY), or none")
        self.limits = limits or ServeLimits()
        self.generator = generator
        self.model_name = model_name
        self.quiet = quiet
        self.api_key = api_key.strip() if api_key is not None else None
        self.loading = threading.Lock()  # one load_lora_adapter at a time: loads in parallel would pile up models
        self.models_lock = threading.Lock()
        self.loaded = LoadedModels(self.limits.max_adapters)  # lora_name -> its generator, least recently used first
        self.hosts = host_names(address[0], self.limits.allowed_hosts)
        self.any_ip = address[0] in WILDCARD_ADDRESSES
        self.socket = bind(address)
        self.server_address = self.socket.getsockname()[:2]
        self.worker = DecodingWorker(self.limits.max_queue, generator.batch_size)
        request_tokenizer(generator)  # copied now rather than on the first request
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL if quiet else logging.WARNING)
        config = uvicorn.Config(
            build_app(self),
            http=limited_protocol(self.limits),
            lifespan="off",
            log_config=None,  # uvicorn's warnings through Python's logging; the request lines are ours
            access_log=False,
            server_header=False,
            timeout_keep_alive=min(5, self.limits.read_timeout),
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        self.uvicorn = uvicorn.Server(config)
        self.stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/v1"

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self.uvicorn.server_state.connections)

    # ---- the models -------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        with self.models_lock:
            return [self.model_name, *self.loaded]

    def generator_for(self, model: object) -> tuple[HFGenerator, str]:
        """The generator and name of the model a request asks for; no `model`: the served one; a name
        that is not served: 404 (answering with another model would be silently wrong)."""
        if model is None:
            return self.generator, self.model_name
        if not isinstance(model, str):
            raise UserError("'model' must be a string")
        with self.models_lock:
            loaded = self.loaded.use(model)  # 404 for a name unloaded to make room
        if loaded is not None:
            return loaded, model
        if model == self.model_name:
            return self.generator, self.model_name
        served = ", ".join(map(repr, self.model_names()))
        message = f"the model {model[:200]!r} does not exist here; this server serves {served}"
        raise ClientError(404, message, param="model", code="model_not_found")

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
            request_tokenizer(generator)
            with self.models_lock:
                self.loaded.add(name, generator)
        finally:
            self.loading.release()

    # ---- running ----------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until `shutdown` (or, in the main thread, SIGINT / SIGTERM: uvicorn stops gracefully)."""
        self.worker.start()
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.worker.close()
            self.stopped.set()

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop serving (from another thread): decoding stops, answers in flight get a few seconds."""
        self.uvicorn.should_exit = True
        self.worker.close()
        self.stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


def bind(address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket on `address` (OSError when it cannot be had)."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def start_in_thread(server: CompletionServer, timeout: float = 30.0) -> threading.Thread:
    """Serve on a daemon thread (tests, notebooks) and return once it accepts; stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, name="lmforge-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.uvicorn.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.uvicorn.started:
        raise RuntimeError("lmforge serve did not start")
    return thread
