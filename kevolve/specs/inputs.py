"""Concrete inputs for a spec at a shape, from its declared value distributions.

Values are drawn from a seeded generator on the CPU and then moved, so that the same seed gives
the same inputs on every device.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kevolve.specs.model import Dims, InputSpec


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def make_input(spec: InputSpec, dims: Dims, gen: torch.Generator) -> torch.Tensor:
    shape = spec.concrete_shape(dims)
    dtype = torch_dtype(spec.dtype)
    p = spec.dist.params
    kind = spec.dist.kind
    if kind == "normal":
        x = torch.randn(shape, generator=gen, dtype=torch.float32) * float(p.get("std", 1.0))
        x = x + float(p.get("mean", 0.0))
    elif kind == "uniform":
        lo, hi = float(p.get("low", 0.0)), float(p.get("high", 1.0))
        x = torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo
    elif kind == "randint":
        lo = _int_param(p.get("low", 0), dims)
        hi = _int_param(p["high"], dims)
        x = torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64)
    elif kind == "sorted_uniform":
        lo, hi = float(p.get("low", 0.0)), float(p.get("high", 1.0))
        flat = torch.rand(shape, generator=gen, dtype=torch.float32).flatten() * (hi - lo) + lo
        x = torch.sort(flat).values.reshape(shape)
    elif kind == "offsets":
        x = _jagged_offsets(shape, _int_param(p["total"], dims), gen)
    else:  # validated when the spec was loaded
        raise ValueError(f"unknown distribution {kind!r}")
    return x.to(dtype)


def make_inputs(specs: Sequence[InputSpec], dims: Dims, seed: int,
                device: str | torch.device = "cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [make_input(s, dims, gen).to(device) for s in specs]


def _int_param(value, dims: Dims) -> int:
    from kevolve.specs.model import eval_dim

    return eval_dim(value, dims)


def _jagged_offsets(shape: tuple[int, ...], total: int, gen: torch.Generator) -> torch.Tensor:
    """B+1 offsets from 0 to total; segment lengths vary widely and about one in ten is empty."""
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError("offsets must be one-dimensional with at least one entry")
    segments = shape[0] - 1
    if segments == 0:
        return torch.zeros(1, dtype=torch.int64)
    weights = torch.rand(segments, generator=gen) ** 2 + 0.05
    weights[torch.rand(segments, generator=gen) < 0.1] = 0.0
    if float(weights.sum()) == 0.0:
        weights[0] = 1.0
    share = weights / weights.sum() * total
    lengths = torch.floor(share).to(torch.int64)
    # What flooring dropped goes one row each to the largest fractions (never to an empty
    # segment): piled on one segment it made a bag of thousands of rows, whose single program
    # then set the time of every per-bag kernel.
    short = max(0, total - int(lengths.sum()))
    lengths[torch.argsort(share - lengths, descending=True)[:short]] += 1
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
