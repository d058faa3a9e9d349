import torch
import torch.nn.functional as F


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-2, Gemma)."""
    return F.gelu(x, approximate="tanh")


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The gated MLP's middle: silu(gate) * up."""
    return F.silu(a) * b


def bias_gelu_residual(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """A projection's epilogue: gelu(x + bias) + residual."""
    return F.gelu(x + bias) + residual
