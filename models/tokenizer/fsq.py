"""AMPLIFY's codebook-size -> FSQ levels mapping (``get_fsq_level`` in amplify/models/motion_tokenizer.py)."""
from __future__ import annotations

import math

# floor(log2(codebook_size)) -> levels. The product of the levels is the number of codes FSQ really has:
# 15, 64, 240, 512, 1000, 1920, 4375 (so the default 2048 gives only 1920 codes).
_LEVELS_BY_POWER = {
    4: (5, 3),
    6: (8, 8),
    8: (8, 6, 5),
    9: (8, 8, 8),
    10: (8, 5, 5, 5),
    11: (8, 8, 6, 5),
    12: (7, 5, 5, 5, 5),
}


def fsq_levels(codebook_size: int) -> list[int]:
    """FSQ levels for a nominal ``codebook_size``, exactly as the official ``get_fsq_level``.

    The official function floors ``log2(codebook_size)`` and looks the power up (so 3000 and 4095 both give
    ``[8, 8, 6, 5]`` and 2048 gives ``[8, 8, 6, 5]`` = 1920 codes). Where it has no entry (powers <= 3, 5, 7 and
    >= 13) it crashes with ``UnboundLocalError``; here that is a ``ValueError`` naming the supported sizes.
    Returns a new list each call.
    """
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int):
        raise ValueError(f"codebook_size must be an integer, got {codebook_size!r}")
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be positive, got {codebook_size}")
    power = int(math.log2(codebook_size))
    # math.log2 is exact for powers of two; guard the floor against rounding just below an integer
    if 2 ** (power + 1) <= codebook_size:
        power += 1
    elif 2 ** power > codebook_size:
        power -= 1
    if power not in _LEVELS_BY_POWER:
        supported = ", ".join(f"{2 ** p}..{2 ** (p + 1) - 1}" for p in sorted(_LEVELS_BY_POWER))
        raise ValueError(
            f"codebook_size = {codebook_size} (floor(log2) = {power}) has no FSQ levels in the official AMPLIFY "
            f"mapping; supported sizes (floored to a power of two): {supported}")
    return list(_LEVELS_BY_POWER[power])


def fsq_num_codes(codebook_size: int) -> int:
    """The number of codes FSQ really has for ``codebook_size`` (the product of the levels; 2048 -> 1920)."""
    return math.prod(fsq_levels(codebook_size))
