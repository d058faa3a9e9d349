import torch


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Row softmax over the last dimension."""
    return torch.softmax(x, dim=-1)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """Row log-softmax over the last dimension."""
    return torch.log_softmax(x, dim=-1)
