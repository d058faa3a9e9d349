import torch
import torch.nn.functional as F


def embedding_bag_sum(table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sum of embedding rows per bag; bag b holds indices[offsets[b]:offsets[b+1]]."""
    return F.embedding_bag(indices, table, offsets, mode="sum", include_last_offset=True)


def jagged_segment_sum(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sum of the rows of each segment of a jagged tensor: out[b] = values[offsets[b]:offsets[b+1]].sum(0)."""
    segments = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    ids = torch.repeat_interleave(torch.arange(segments, device=values.device), lengths)
    out = torch.zeros(segments, values.shape[1], dtype=values.dtype, device=values.device)
    return out.index_add_(0, ids, values)
