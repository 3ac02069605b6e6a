"""What the CPU offers for bfloat16, as torch's own dispatch sees it: recorded in every manifest, and
read by models/precision.py to choose a dtype when asked for `auto`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CpuSupport:
    avx512_bf16: bool
    """bfloat16 dot products in AVX-512 (Intel Cooper Lake and later, AMD Zen 4 and later)"""
    amx: bool
    """Intel AMX tile matrix units (Sapphire Rapids and later)"""

    @property
    def fast_bfloat16(self) -> bool:
        return self.avx512_bf16 or self.amx


def cpu_support() -> CpuSupport:
    import torch

    def probe(name: str) -> bool:
        check = getattr(torch.cpu, name, None)  # private helpers: absent in some builds, then say no
        try:
            return bool(check()) if check else False
        except RuntimeError:
            return False

    return CpuSupport(avx512_bf16=probe("_is_avx512_bf16_supported"), amx=probe("_is_amx_tile_supported"))
