"""The `openai` generation backend: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, `lmforge serve`).

One `POST {base_url}/completions` per prompt (with `n`, `temperature`, `top_p`, `max_tokens`, `stop`,
`seed`), a bounded pool of threads sending them, a timeout per request, and retries with exponential
backoff on connection errors, 429 and 5xx (a `Retry-After` header is honoured, up to 60 s). Any other
HTTP error, or a server still failing after the retries, is a `UserError` naming the URL and the
server's message. Standard library only.

Reproducibility is the server's: `seed` is sent with every request (vLLM and `lmforge serve` honour it).
Token counts: `lmforge serve` reports each choice's count; other servers report one total per
request, so with n > 1 each completion gets the total divided by n (rounded): an estimate.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmforge.errors import UserError
from lmforge.generation.sampling import Completion, SamplingParams

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 60.0


class OpenAIGenerator:
    """Completions from an OpenAI-compatible server.

    `base_url` is the API root, as the OpenAI client takes it (`http://host:8000/v1`); a URL without a
    path gets `/v1`. The API key is `api_key`, else the environment's OPENAI_API_KEY, else none.
    """

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        concurrency: int = 8,
    ):
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise UserError("openai backend: concurrency >= 1, max_retries >= 0 and timeout > 0 are required")
        base_url = base_url.rstrip("/")
        if base_url.count("/") == 2:  # scheme://host[:port] with no path
            base_url += "/v1"
        self.model = model
        self.base_url = base_url
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.concurrency = concurrency

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, progress: bool = False
    ) -> list[list[Completion]]:
        from lmforge.core.console import progress_bar

        if isinstance(prompts, str):
            raise UserError("generate: prompts must be a list of strings, not one string")
        with progress_bar(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:

            def one(prompt: str) -> list[Completion]:
                result = self.complete(prompt, params)
                bar.update(1)
                return result

            pool = ThreadPoolExecutor(max_workers=self.concurrency)
            try:
                return list(pool.map(one, prompts))
            finally:  # after a failure, the prompts not yet sent are not sent (each would retry in vain)
                pool.shutdown(wait=True, cancel_futures=True)

    def complete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        """The n completions of one prompt: one request."""
        body = {
            "model": self.model,
            "prompt": prompt,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": params.seed,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        answer = self.post("/completions", body)
        try:
            choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
            total = (answer.get("usage") or {}).get("completion_tokens", 0)
            completions = [
                Completion(
                    text=c["text"],
                    tokens=int(c.get("completion_tokens", round(total / max(1, len(choices))))),
                    finish_reason=c.get("finish_reason") or "stop",
                )
                for c in choices
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{self.base_url}/completions: unexpected answer ({e!r}): {str(answer)[:200]}") from None
        if len(completions) != params.n:
            raise UserError(f"{self.base_url}/completions: asked for n={params.n}, got {len(completions)} choices")
        return completions

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Ask the server to load the model at `path` under `name` (vLLM's runtime LoRA loading: start it
        with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; `lmforge serve` loads any run).
        Later requests of this generator ask for `name`. A name the server already holds is kept."""
        try:
            self.post("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)}, expect_json=False)
        except UserError as e:
            if "already been loaded" not in str(e):  # vLLM's answer to a second load of one name
                raise
        self.model = name

    def post(self, path: str, body: dict, expect_json: bool = True) -> dict:
        """POST JSON, retrying connection errors, 429 and 5xx with exponential backoff. With
        `expect_json=False` an answer that is not JSON (vLLM answers some calls in plain text) is
        returned as {"text": ...}."""
        url = self.base_url + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            wait = self.backoff * 2**attempt
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                if not expect_json:
                    try:
                        return json.loads(raw)
                    except json.JSONDecodeError:
                        return {"text": raw.decode(errors="replace")}
                return json.loads(raw)
            except urllib.error.HTTPError as e:
                message = _error_message(e)
                if e.code not in RETRY_STATUS or attempt == self.max_retries:
                    raise UserError(f"{url}: HTTP {e.code}: {message}") from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), MAX_RETRY_AFTER)
            except TimeoutError:
                # Not retried: the server is busy or the generation is long, and a retry would redo the work.
                raise UserError(f"{url}: no answer within {self.timeout:g} s (raise the timeout)") from None
            except (urllib.error.URLError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, TimeoutError):
                    raise UserError(f"{url}: no answer within {self.timeout:g} s (raise the timeout)") from None
                if attempt == self.max_retries:
                    raise UserError(f"{url}: {reason} (after {self.max_retries + 1} tries)") from None
            except json.JSONDecodeError:
                raise UserError(f"{url}: the answer is not JSON") from None
            time.sleep(wait)
        raise AssertionError("unreachable")


def _error_message(e: urllib.error.HTTPError) -> str:
    """The server's own error message when it sent the OpenAI error shape, else the body's start."""
    try:
        raw = e.read().decode("utf-8", "replace")
    except OSError:
        return e.reason or ""
    try:
        error = json.loads(raw).get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    except (ValueError, AttributeError):
        pass
    return raw.strip()[:200] or str(e.reason)
