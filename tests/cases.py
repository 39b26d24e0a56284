"""Seeded random test inputs shared by several test files (hypothesis is not installed)."""

from __future__ import annotations

import torch


def random_mask(gen: torch.Generator, B: int, T: int, kind: str) -> torch.Tensor:
    """A ``[B, T]`` bool mask. kind: 'right' / 'left' padded, 'any' (a contiguous block anywhere; row lengths
    0..T) or 'holes' (each entry on with probability 0.6)."""
    if kind == "holes":
        return torch.rand(B, T, generator=gen) < 0.6
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        n = int(torch.randint(0, T + 1, (1,), generator=gen))
        if kind == "right":
            start = 0
        elif kind == "left":
            start = T - n
        else:
            start = int(torch.randint(0, T - n + 1, (1,), generator=gen))
        mask[b, start:start + n] = True
    return mask
