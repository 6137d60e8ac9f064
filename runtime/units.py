"""Quantities in words, shared by the validator and the registry's CLI path
(standard library only: `singa list` imports it)."""
from __future__ import annotations


def human_bytes(n: float) -> str:
    """Bytes in binary units: '512 B', '11.6 MiB', '1.4 TiB'."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} PiB"
