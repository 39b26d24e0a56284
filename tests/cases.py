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


DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def cases(seed: int, n: int, kinds=("right", "left", "any", "holes"), max_b: int = 6, max_t: int = 12):
    """``n`` seeded ``(generator, B, T, mask)`` cases, cycling through the mask kinds of :func:`random_mask`."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        B = int(torch.randint(1, max_b + 1, (1,), generator=gen))
        T = int(torch.randint(1, max_t + 1, (1,), generator=gen))
        yield gen, B, T, random_mask(gen, B, T, kinds[i % len(kinds)])


def close(got: torch.Tensor, expected, dtype: torch.dtype, what: str) -> None:
    """got has `dtype` and matches `expected` (a float64 tensor, or Python floats) within TOL[dtype]."""
    if not isinstance(expected, torch.Tensor):
        expected = torch.tensor(expected, dtype=torch.float64)
    assert type(got) is torch.Tensor, f"{what}: not a tensor: {type(got)}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {dtype}"
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    torch.testing.assert_close(got.double(), expected.double(), **TOL[dtype], msg=lambda m: f"{what}: {m}")
