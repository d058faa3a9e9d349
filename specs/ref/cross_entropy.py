import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy of bf16 logits over a vocabulary, computed in float32."""
    return F.cross_entropy(logits.float(), target)
