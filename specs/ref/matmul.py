import torch


def matmul_bias_relu(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A linear layer with ReLU: relu(x @ w + bias), x [M, K], w [K, N]."""
    return torch.relu(x @ w + bias)
