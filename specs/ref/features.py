import torch


def bucketize(x: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Bucket index of each feature value against sorted boundaries (torch.bucketize, right=False)."""
    return torch.bucketize(x, boundaries)


def clamp_log1p(x: torch.Tensor) -> torch.Tensor:
    """Dense-feature preprocessing: log1p of the value clamped at zero."""
    return torch.log1p(torch.clamp(x, min=0.0))
