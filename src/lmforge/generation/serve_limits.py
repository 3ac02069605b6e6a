"""The limits of `lmforge serve` as plain functions, apart from its HTTP stack (uvicorn and Starlette,
generation/serve_http.py and serve_app.py), which calls them.

Each guards against one attack found on the loopback interface (docs/security.md, issue 23 item 7):

- the body: `content_length` accepts only a plain decimal Content-Length up to the body limit (a
  negative one used to read the whole stream, past the 16 MB limit);
- the work of one request: `request_work` counts the token positions it asks for (n x, over its prompts,
  prompt tokens + max_tokens) and `check_work` refuses more than the budget (n=3000 used to hold the
  one generation lock for minutes);
- waiting: the decoding worker (generation/serve_worker.py) lets `max_queue` requests wait and answers
  the next one `busy` (503 with Retry-After);
- slow or idle clients: `read_timeout`, the time a connection has to send its headers and body
  (enforced by the connection, generation/serve_http.py; a socket timeout alone lets a client that
  sends a byte now and then hold a connection forever), and `max_connections`;
- loaded models: `LoadedModels` keeps the most recently used few (40 loads used to keep 40 models), and
  `adapter_folder` loads only folders under an allowed root, with one answer for every path outside it;
- the browser: `host_allowed` and `origin_allowed` refuse a Host that is not this server's (DNS
  rebinding) and a cross-origin page (a form or fetch from any web site).

Every refusal is a `ClientError`: a UserError with an HTTP status (4xx, or 503 when busy), extra headers
and OpenAI's `param` and `code`; `error_body` is OpenAI's error shape for it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lmforge.errors import UserError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
RETRY_AFTER_SECONDS = 5
FORGOTTEN_NAMES = 1024  # names of unloaded models remembered, so that asking for one is a 404, not the base model


class ClientError(UserError):
    """A request refused with an HTTP `status`, extra response `headers`, and OpenAI's `param` (the field at
    fault) and `code` (a machine-readable reason, e.g. "model_not_found")."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.param = param
        self.code = code


class ClientGone(Exception):
    """The client closed its connection (or its read deadline passed) before its answer was ready."""


@dataclass(frozen=True)
class ServeLimits:
    """What one request, one connection and the whole server may use (`lmforge serve --help`)."""

    max_body_bytes: int = 16 * 1024 * 1024
    """request body size at most"""
    max_request_tokens: int = 262_144
    """token positions one request may ask for: n x sum over prompts of (prompt tokens + max_tokens)"""
    max_stop: int = 16
    """stop strings per request (each is searched for after every generated token)"""
    max_queue: int = 32
    """requests that may wait while a batch decodes; more get 503 with Retry-After"""
    max_connections: int = 64
    """connections open at once; more get 503 with Retry-After"""
    max_logprobs: int = 20
    """top log-probabilities a completion request may ask for per token (`logprobs`), as vLLM's default"""
    read_timeout: float = 30.0
    """seconds a connection has to send its headers and body; also the limit of each send of the answer"""
    max_adapters: int = 2
    """models loaded with load_lora_adapter kept at once, besides the served one (least recently used go)"""
    adapter_root: Path | None = None
    """load_lora_adapter loads only folders under this one (None: any folder)"""
    allowed_hosts: tuple[str, ...] = ()
    """Host names accepted besides loopback names and the bound address ("*": any)"""
    allowed_origins: tuple[str, ...] = ()
    """browser origins accepted besides pages of loopback names and the bound address ("*": any)"""

    def __post_init__(self) -> None:
        # The messages name the `lmforge serve` flags, the way these limits are usually set.
        for name, least in [("max_body_bytes", 1), ("max_request_tokens", 1), ("max_stop", 1), ("max_connections", 1)]:
            if getattr(self, name) < least:
                raise UserError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(self, name)}")
        for name in ("max_queue", "max_adapters", "max_logprobs"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(self, name)}")
        if not 0 < self.read_timeout < float("inf"):
            raise UserError(f"--read-timeout must be a positive number of seconds, got {self.read_timeout}")


def busy(message: str) -> ClientError:
    return ClientError(503, message, {"Retry-After": str(RETRY_AFTER_SECONDS)})


ERROR_TYPES = {500: "server_error", 503: "server_busy"}  # every other status: OpenAI's "invalid_request_error"


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    kind = ERROR_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_bytes(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer carrying `error_body`, closing the connection: for the connection layer, which
    answers before (or instead of) the application."""
    data = json.dumps(error_body(status, message)).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        f"{head}Connection: close\r\n\r\n"
    ).encode() + data


# ---- the body --------------------------------------------------------------------------------------

DECIMAL = re.compile(r"[0-9]{1,15}")


def content_length(values: list[str], transfer_encoding: str | None, max_bytes: int) -> int:
    """The body length of a request from its Content-Length header values: one plain decimal number
    (int() would also take "-1", "+5", " 5" and "1_0"), at most `max_bytes`."""
    if transfer_encoding is not None:
        raise ClientError(411, "Transfer-Encoding is not supported: send the body with a Content-Length")
    if not values:
        raise ClientError(411, "a JSON body with a Content-Length header is required")
    if len(set(v.strip() for v in values)) > 1:
        raise ClientError(400, "the request has several different Content-Length headers")
    value = values[0].strip()
    if not DECIMAL.fullmatch(value):
        raise ClientError(400, f"Content-Length must be a non-negative decimal number, got {value[:40]!r}")
    length = int(value)
    if length > max_bytes:
        raise ClientError(413, f"the body is {length:,} bytes; at most {max_bytes:,}")
    return length


# ---- the work of a request -------------------------------------------------------------------------


def request_work(prompt_tokens: list[int], n: int, max_tokens: int) -> int:
    """Token positions a request asks for: each of its n samples of each prompt holds the prompt's
    tokens and up to max_tokens new ones."""
    return n * sum(tokens + max_tokens for tokens in prompt_tokens)


def check_work(prompt_tokens: list[int], n: int, max_tokens: int, budget: int) -> None:
    work = request_work(prompt_tokens, n, max_tokens)
    if work > budget:
        raise ClientError(
            400,
            f"this request asks for {work:,} token positions (n={n} x {len(prompt_tokens)} prompt(s) of "
            f"{sum(prompt_tokens):,} tokens in all, each + max_tokens={max_tokens}); this server allows at most "
            f"{budget:,} per request (--max-request-tokens): ask for fewer samples, prompts or tokens",
        )


# ---- loaded models ---------------------------------------------------------------------------------


class LoadedModels(OrderedDict):
    """name -> model, least recently used first, at most `capacity`; remembers the names it dropped."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.forgotten: OrderedDict[str, None] = OrderedDict()

    def use(self, name: str):
        """The model loaded as `name` (now the most recently used), None if there is none; 404 if it was
        dropped to make room (answering with the served model instead would be silently wrong)."""
        if name in self:
            self.move_to_end(name)
            return self[name]
        if name in self.forgotten:
            raise ClientError(
                404, f"model {name!r} was unloaded to keep at most {self.capacity} (--max-adapters): load it again"
            )
        return None

    def make_room(self, name: str) -> None:
        """Drop `name` and the least recently used models until one more fits (before loading, so that
        memory never holds more than `capacity` loaded models)."""
        if name in self:  # replaced: until the new one is loaded, asking for it is a 404, not the base model
            self.forget(name)
        while self and len(self) >= self.capacity:
            self.forget(next(iter(self)))

    def add(self, name: str, model) -> None:
        self.make_room(name)
        self[name] = model
        self.forgotten.pop(name, None)

    def forget(self, name: str) -> None:
        self.pop(name, None)
        self.forgotten[name] = None
        while len(self.forgotten) > FORGOTTEN_NAMES:
            self.forgotten.popitem(last=False)


def adapter_folder(path: str, root: Path | None, builtin: tuple[str, ...]) -> str:
    """What load_lora_adapter loads for `path`: a builtin model name, or the resolved folder when it
    lies under `root` (symbolic links and `..` followed first). A path outside `root` gets one answer
    whether or not it exists, so the server tells nothing about the rest of the disk; the path is
    resolved (not expanded: `~` is a name) against `root`, or the working directory without one."""
    if path in builtin:
        return path
    base = root if root is not None else Path.cwd()
    try:
        resolved = (base / path).resolve()  # an absolute `path` replaces `base`
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symbolic-link loop
        raise ClientError(400, f"lora_path {path[:200]!r}: not a usable path") from None
    if root is not None and not resolved.is_relative_to(root.resolve()):
        raise ClientError(403, f"lora_path {path[:200]!r}: not under {root}, the only folder this server loads from")
    if not resolved.is_dir():
        raise ClientError(400, f"lora_path {path[:200]!r}: no such folder")
    return str(resolved)  # absolute: never taken for a hub id, never downloaded


# ---- Host and Origin -------------------------------------------------------------------------------


def host_names(bound: str, extra: tuple[str, ...]) -> frozenset[str]:
    """The Host names this server answers: loopback names, the bound address, and `extra`."""
    names = {*LOOPBACK_NAMES, *(normal_host(h) for h in extra)}
    if bound not in WILDCARD_ADDRESSES:
        names.add(normal_host(bound))
    return frozenset(names)


def normal_host(host: str) -> str:
    """`host` lower-cased, without a port, brackets or a final dot ("[::1]:8000" -> "::1")."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_allowed(host: str | None, names: frozenset[str], any_ip: bool) -> bool:
    """Whether a request's Host header names this server. DNS rebinding needs a domain name that points
    at this machine, so with `any_ip` (a server bound to every interface) any IP literal is accepted."""
    if host is None:
        return False
    name = normal_host(host)
    return "*" in names or name in names or (any_ip and is_ip_literal(name))


def origin_allowed(origin: str | None, names: frozenset[str], origins: tuple[str, ...]) -> bool:
    """Whether a request may come from a browser page of `origin`: no Origin (not a browser's
    cross-origin request), a page of an allowed host name (any port), or one of `origins`."""
    if origin is None:
        return True
    origin = origin.strip().lower()
    if "*" in origins or origin.rstrip("/") in (o.lower().rstrip("/") for o in origins):
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.hostname is not None and normal_host(parts.hostname) in names


# ---- the flags of `lmforge serve` ------------------------------------------------------------------


def add_limit_flags(p) -> None:
    """The flags that set ServeLimits, in their own group of `lmforge serve --help`."""
    d = ServeLimits()
    group = p.add_argument_group("limits")
    group.add_argument(
        "--max-request-tokens",
        type=int,
        default=d.max_request_tokens,
        help="token positions one request may ask for: n x sum over its prompts of (prompt tokens + max_tokens) "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--max-queue",
        type=int,
        default=d.max_queue,
        help="requests waiting while a batch decodes (default: %(default)s)",
    )
    group.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="connections open at once (default: %(default)s)",
    )
    group.add_argument(
        "--read-timeout",
        type=float,
        default=d.read_timeout,
        help="seconds a client has to send its headers and body (default: %(default)s)",
    )
    group.add_argument(
        "--max-adapters",
        type=int,
        default=d.max_adapters,
        help="models loaded with /v1/load_lora_adapter kept at once; 0 refuses loading (default: %(default)s)",
    )
    group.add_argument(
        "--adapter-root",
        metavar="DIR",
        help="/v1/load_lora_adapter loads only folders under DIR (default: the folder the server starts in)",
    )
    group.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        default="",
        help="comma-separated Host names accepted besides localhost, 127.0.0.1, ::1 and --host ('*': any); "
        "with --host 0.0.0.0 any IP address is accepted too",
    )
    group.add_argument(
        "--allowed-origins",
        metavar="ORIGINS",
        default="",
        help="comma-separated browser origins (https://app.example:8080) accepted besides pages of the allowed "
        "host names ('*': any)",
    )


def limits_from_flags(args) -> ServeLimits:
    """The limits of the command line's flags (exit 2 naming a flag out of range)."""
    root = Path(args.adapter_root or ".").expanduser()
    if not root.is_dir():
        raise UserError(f"--adapter-root {args.adapter_root}: not a folder")

    def names(text: str) -> tuple[str, ...]:
        return tuple(n.strip() for n in text.split(",") if n.strip())

    return ServeLimits(
        max_request_tokens=args.max_request_tokens,
        max_queue=args.max_queue,
        max_connections=args.max_connections,
        read_timeout=args.read_timeout,
        max_adapters=args.max_adapters,
        adapter_root=root.resolve(),
        allowed_hosts=names(args.allowed_hosts),
        allowed_origins=names(args.allowed_origins),
    )
