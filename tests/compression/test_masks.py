import pytest
import torch

from nxmiformer.compression import nm_mask


def brute_force_mask(weight, n, m):
    """Independent reference: per group, sort indices by (-|w|, index) in plain Python."""
    out = torch.zeros_like(weight, dtype=torch.bool)
    for r in range(weight.shape[0]):
        for g0 in range(0, weight.shape[1], m):
            group = [(-abs(float(weight[r, g0 + j])), j) for j in range(m)]
            for _, j in sorted(group)[:n]:
                out[r, g0 + j] = True
    return out


@pytest.mark.parametrize(
    "n,m,shape",
    [(2, 4, (3, 8)), (1, 4, (5, 16)), (4, 8, (2, 24)), (2, 8, (4, 16)), (1, 2, (3, 6)),
     (3, 4, (2, 12)), (8, 16, (2, 32)), (5, 32, (2, 64)), (4, 4, (2, 8)), (1, 1, (2, 3))],
)
def test_matches_brute_force(n, m, shape):
    torch.manual_seed(n * 100 + m)
    w = torch.randn(shape)
    mask = nm_mask(w, n, m)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(mask, brute_force_mask(w, n, m))
    assert torch.all(mask.reshape(shape[0], -1, m).sum(-1) == n)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_ties_are_deterministic_and_prefer_lower_index(n, m):
    w = torch.ones(3, 2 * m)
    w[1] = -1.0
    mask = nm_mask(w, n, m)
    assert torch.equal(mask, nm_mask(w.clone(), n, m))
    assert torch.equal(mask, brute_force_mask(w, n, m))
    expected_group = torch.tensor([True] * n + [False] * (m - n))
    assert torch.equal(mask[0, :m], expected_group)


def test_integer_grid_with_many_ties():
    # quantized weights have many equal magnitudes; every group still keeps exactly n
    w = torch.randint(-2, 3, (6, 32)).float()
    mask = nm_mask(w, 2, 4)
    assert torch.equal(mask, brute_force_mask(w, 2, 4))


@pytest.mark.parametrize(
    "shape,n,m,words",
    [((4, 10), 2, 4, ["(4, 10)", "10 % 4"]),
     ((4, 8), 5, 4, ["n=5", "m=4"]),
     ((4, 8), 0, 4, ["n=0"]),
     ((4, 66), 2, 33, ["m=33"]),
     ((8,), 2, 4, ["(8,)"])],
)
def test_bad_input_names_values(shape, n, m, words):
    with pytest.raises(ValueError) as err:
        nm_mask(torch.randn(shape), n, m)
    for word in words:
        assert word in str(err.value)


def test_every_m_from_2_to_32():
    torch.manual_seed(0)
    for m in range(2, 33):
        w = torch.randn(2, m * 2)
        for n in {1, m // 2 or 1, m - 1}:
            mask = nm_mask(w, n, m)
            assert torch.all(mask.reshape(2, -1, m).sum(-1) == n)
            kept_min = torch.where(mask, w.abs(), torch.inf).reshape(2, -1, m).amin(-1)
            dropped_max = torch.where(~mask, w.abs(), -torch.inf).reshape(2, -1, m).amax(-1)
            assert torch.all(kept_min >= dropped_max)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (1, 2), (3, 8)])
def test_special_values_rank_like_a_stable_sort(n, m):
    # the fast path (m <= 8) compares float bits; it must order 0/-0, inf and NaN like the sort
    w = torch.tensor([[0.0, -0.0, 1.0, -1.0, float("inf"), 2.0, float("nan"), -float("inf")] * 2])
    reference = torch.zeros_like(w, dtype=torch.bool)
    groups = w.abs().reshape(1, -1, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    reference.reshape(1, -1, m).scatter_(-1, order[..., :n], True)
    assert torch.equal(nm_mask(w, n, m), reference)
