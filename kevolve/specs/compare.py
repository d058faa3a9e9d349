"""How close an output is to the reference, by the rules of a Tolerance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kevolve.specs.model import Tolerance


@dataclass(frozen=True)
class Comparison:
    ok: bool
    max_abs_error: float
    rel_l2_error: float
    mismatched: int  # elements outside atol + rtol * |ref|
    reason: str = ""  # empty when ok


def compare(out: torch.Tensor, ref: torch.Tensor, tol: Tolerance) -> Comparison:
    """Compare an output with a (preferably float64) reference of the same shape."""
    if tuple(out.shape) != tuple(ref.shape):
        return Comparison(False, float("inf"), float("inf"), out.numel(),
                          f"shape {tuple(out.shape)} but the reference has {tuple(ref.shape)}")
    if out.numel() == 0:
        return Comparison(True, 0.0, 0.0, 0)
    if not (out.is_floating_point() or ref.is_floating_point()):
        bad = int((out.to(ref.device) != ref).sum())
        return Comparison(bad == 0, float(bad > 0), float(bad > 0), bad,
                          f"{bad} of {out.numel()} elements differ" if bad else "")
    a = out.detach().to(device=ref.device, dtype=torch.float64)
    b = ref.detach().to(torch.float64)
    a_bad, b_bad = ~torch.isfinite(a), ~torch.isfinite(b)
    if bool((a_bad & ~b_bad).any()):
        n = int((a_bad & ~b_bad).sum())
        return Comparison(False, float("inf"), float("inf"), n,
                          f"{n} elements are NaN or Inf (or were never written) where the reference is finite")
    both = a_bad & b_bad
    same_special = torch.where(both, (a == b) | (a.isnan() & b.isnan()), torch.ones_like(both))
    a = torch.where(b_bad, torch.zeros_like(a), a)
    b = torch.where(b_bad, torch.zeros_like(b), b)
    diff = (a - b).abs()
    mismatched = int((diff > tol.atol + tol.rtol * b.abs()).sum()) + int((~same_special).sum())
    max_abs = float(diff.max())
    ref_norm = float(torch.linalg.vector_norm(b))
    rel_l2 = float(torch.linalg.vector_norm(a - b)) / ref_norm if ref_norm > 0 else max_abs
    if mismatched:
        return Comparison(False, max_abs, rel_l2, mismatched,
                          f"{mismatched} of {out.numel()} elements off by more than atol {tol.atol:g} + "
                          f"rtol {tol.rtol:g}; max error {max_abs:.3g}")
    if rel_l2 > tol.max_rel_l2:
        return Comparison(False, max_abs, rel_l2, 0,
                          f"relative L2 error {rel_l2:.3g} exceeds {tol.max_rel_l2:g}")
    return Comparison(True, max_abs, rel_l2, 0)
