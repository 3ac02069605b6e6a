"""Which floating-point type a model's weights take on this machine: float32 or bfloat16.

bfloat16 keeps float32's exponent range with an 8-bit mantissa, so a model loaded in it needs no loss
scaling, and a CPU with AVX512-BF16 or AMX multiplies bfloat16 matrices several times faster than
float32 ones (benchmarks/causal_lm/RESULTS.md measures both on the machine at hand). Without those
units, torch still computes in bfloat16, but by converting, which is slower than float32: `auto` then
keeps float32.
"""

from __future__ import annotations

from lmforge.core.hardware import cpu_support
from lmforge.errors import UserError

DTYPES = ("float32", "bfloat16")
DTYPE_CHOICES = (*DTYPES, "auto")


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """`float32` or `bfloat16` for a requested `name` (one of DTYPE_CHOICES). `auto` is bfloat16 on a CUDA
    device that supports it and on a CPU with fast bfloat16 units, float32 elsewhere."""
    import torch

    if name not in DTYPE_CHOICES:
        raise UserError(f"dtype {name!r}: expected one of {', '.join(DTYPE_CHOICES)}")
    if name != "auto":
        return name
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_support().fast_bfloat16 else "float32"


def torch_dtype(name: str):
    """The torch dtype of a resolved name."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
