"""`lmforge serve`: its arguments and the command, over the server in generation/serve.py (docs/serving.md)."""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.errors import UserError
from lmforge.generation.serve_limits import add_limit_flags, limits_from_flags
from lmforge.models.precision import DTYPE_CHOICES

API_KEY_VARIABLE = "LMFORGE_API_KEY"

SERVE_DESCRIPTION = """\
Serve a causal language model over HTTP with the OpenAI API (uvicorn and Starlette), so that any
OpenAI client, lm-evaluation-harness's local-completions model, or lmforge's own `openai` generation
backend can use it:
  POST /v1/completions       {"model": NAME, "prompt": "...", "max_tokens": 64, "temperature": 0, "stop": ["\\n"],
                              "n": 1, "seed": 0, "stream": false, "logprobs": 1, "echo": false}
  POST /v1/chat/completions  {"model": NAME, "messages": [{"role": "user", "content": "..."}], ...}
  GET  /v1/models
Requests that arrive together are decoded together: one decoding thread batches the waiting requests
(same model and sampling parameters) up to --batch-size sequences. With "seed" an answer is
reproducible; without one, every request draws a fresh seed. "model" must be the served name (--name)
or one loaded with /v1/load_lora_adapter (else 404). "tools" are refused. The server listens on the
loopback interface unless --host says otherwise; with --api-key (or $LMFORGE_API_KEY) every request
must send "Authorization: Bearer KEY".

Limits (each a flag below): a request may ask for --max-request-tokens token positions (n x, over its
prompts, prompt tokens + max_tokens), else 400; --max-queue requests wait while a batch decodes and
--max-connections connections are open, beyond them 503 with Retry-After; a client has --read-timeout
seconds to send its request (408 after) and to read its answer; a request stops generating when its
client disconnects; --max-adapters models loaded with /v1/load_lora_adapter are kept (least recently
used unloaded), from folders under --adapter-root only; a Host that is not this server's (DNS rebinding)
and a browser page from another origin get 403. Bodies: at most 16 MB, with a Content-Length."""

SERVE_EPILOG = """\
examples:
  lmforge serve tiny-gpt2 --port 8001
  LMFORGE_API_KEY=$(openssl rand -hex 16) lmforge serve gemma-3-270m
  lmforge serve runs/sft-gemma_gsm8k-20261207-120000/   (a finished `lmforge run sft/gemma_gsm8k`)
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "gemma-3-270m", "prompt": "Q: 2+3=?\\nA:", "max_tokens": 8, "temperature": 0}'"""


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
    p.add_argument(
        "--batch-size", type=int, default=8, help="sequences decoded together, across requests (default: %(default)s)"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="float32",
        help="the weights' type; auto = bfloat16 where this CPU has bfloat16 units (default: %(default)s)",
    )
    p.add_argument("--name", help="the model id clients send and see in /v1/models (default: MODEL_OR_RUN_DIR)")
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"every request must send 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}, else no key; "
        "the variable keeps the key out of the process list)",
    )
    p.add_argument("--quiet", action="store_true", help="do not log each request on stderr")
    add_limit_flags(p)
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args) -> int:
    from lmforge.core.console import say
    from lmforge.generation.generate import make_generator
    from lmforge.generation.serve import LOOPBACK, CompletionServer

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected 0 to 65535")
    limits = limits_from_flags(args)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_VARIABLE) or None
    if api_key is not None and not api_key.strip():
        raise UserError("--api-key: the key is empty")
    generator = make_generator("hf", args.model, batch_size=args.batch_size, dtype=args.dtype)
    name = args.name or (Path(args.model).name if Path(args.model).is_dir() else args.model)
    try:
        server = CompletionServer(
            (args.host, args.port), generator, name, quiet=args.quiet, limits=limits, api_key=api_key
        )
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    if args.host not in LOOPBACK and api_key is None:
        say(f"listening on {args.host}, beyond this machine, with no API key (--api-key or ${API_KEY_VARIABLE})")
    say(f"serving {name} at {server.url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
