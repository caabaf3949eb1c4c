"""N:M semi-structured sparsity masks.

Convention (NVIDIA's): ``n:m`` keeps ``n`` of every ``m`` consecutive weights along a row's input
(reduction) dimension, so ``2:4`` keeps 2 of 4.
"""

from __future__ import annotations

import torch

from ..errors import NxmiError

MAX_M = 32
# up to this m, m*(m-1)/2 pairwise comparisons beat a sort (6x faster for 2:4 on CPU)
_PAIRWISE_MAX_M = 8


def check_nm(n: int, m: int) -> None:
    """Raise if ``n:m`` is not a valid pattern (``1 <= n <= m``, ``1 <= m <= 32``)."""
    if not isinstance(n, int) or not isinstance(m, int) or isinstance(n, bool) or isinstance(m, bool):
        raise NxmiError(f"N:M must be integers, got n={n!r}, m={m!r}")
    if not 1 <= m <= MAX_M:
        raise NxmiError(f"M must be between 1 and {MAX_M}, got m={m}")
    if not 1 <= n <= m:
        raise NxmiError(f"N:M needs 1 <= n <= m, got n={n}, m={m}")


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest-magnitude entries of every ``m`` consecutive entries
    of each row of a 2-D ``[out, in]`` weight.

    Ties are broken deterministically: among equal magnitudes the entry with the lower input index
    is kept (a stable sort), so the mask depends only on the values.

    Raises:
        ValueError: the weight is not 2-D, ``in % m != 0``, or not ``1 <= n <= m <= 32``.
    """
    if weight.dim() != 2:
        raise NxmiError(f"nm_mask needs a 2-D [out, in] weight, got shape {tuple(weight.shape)}")
    check_nm(n, m)
    out_features, in_features = weight.shape
    if in_features % m != 0:
        raise NxmiError(
            f"N:M {n}:{m} needs the input width to be a multiple of m: weight shape "
            f"{tuple(weight.shape)} has in={in_features}, and {in_features} % {m} = {in_features % m}"
        )
    if n == m:
        return torch.ones_like(weight, dtype=torch.bool)
    if m <= _PAIRWISE_MAX_M:
        return _pairwise_mask(weight, n, m)
    groups = weight.detach().abs().reshape(out_features, in_features // m, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order[..., :n], True)
    return mask.reshape(out_features, in_features)


def _pairwise_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The stable-descending-sort mask without sorting.

    ``|w|`` read as int32 bits keeps the order of non-negative float32 values (and puts NaN above
    inf, -0 equal to +0, as the sort does), so slot ``a < b`` of a group comes first iff
    ``bits_a >= bits_b``. A slot's rank counts the slots that come before it; keep rank < n.
    """
    out_features, in_features = weight.shape
    keys = weight.detach().float().abs().view(torch.int32).reshape(out_features, in_features // m, m)
    cols = keys.unbind(-1)
    rank = [torch.zeros(out_features, in_features // m, dtype=torch.uint8, device=weight.device) for _ in range(m)]
    for a in range(m):
        for b in range(a + 1, m):
            a_first = cols[a] >= cols[b]
            rank[b] += a_first
            rank[a] += ~a_first
    return (torch.stack(rank, -1) < n).reshape(out_features, in_features)
