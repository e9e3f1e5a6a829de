import pytest
import torch

from fgssl.jigsaw import apply_permutation, jigsaw, random_permutations, unjigsaw


def _batch(b=6, h=32, w=32, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [2, 4, 8])
def test_inverse_restores_every_image(n):
    x = _batch()
    y, perm = jigsaw(x, n, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    assert not torch.equal(y, x)
    assert torch.equal(unjigsaw(y, perm, n), x)


def test_each_output_tile_is_the_input_tile_named_by_the_permutation():
    n, t = 4, 8
    x = _batch(b=3, h=n * t, w=n * t)
    y, perm = jigsaw(x, n, torch.Generator().manual_seed(2))
    for b in range(x.shape[0]):
        assert sorted(perm[b].tolist()) == list(range(n * n))  # a bijection of tiles
        for j in range(n * n):
            src = perm[b, j].item()
            out_tile = y[b, :, (j // n) * t:(j // n + 1) * t, (j % n) * t:(j % n + 1) * t]
            in_tile = x[b, :, (src // n) * t:(src // n + 1) * t, (src % n) * t:(src % n + 1) * t]
            assert torch.equal(out_tile, in_tile)


def test_permutations_differ_across_images():
    perm = random_permutations(64, 4, torch.Generator().manual_seed(0))
    distinct = {tuple(p.tolist()) for p in perm}
    assert len(distinct) > 60  # 16! permutations: collisions among 64 draws are essentially impossible


@pytest.mark.parametrize("h,w,n", [(30, 30, 4), (31, 17, 3), (64, 50, 8), (5, 5, 5)])
def test_sizes_not_divisible_by_n(h, w, n):
    x = _batch(b=4, h=h, w=w)
    y, perm = jigsaw(x, n, torch.Generator().manual_seed(3))
    assert y.shape == x.shape
    th, tw = h // n, w // n
    # the leftover border is untouched; the core is a rearrangement of the same pixels
    assert torch.equal(y[:, :, n * th:, :], x[:, :, n * th:, :])
    assert torch.equal(y[:, :, :, n * tw:], x[:, :, :, n * tw:])
    assert torch.equal(unjigsaw(y, perm, n), x)


def test_n1_is_identity():
    x = _batch()
    y, perm = jigsaw(x, 1)
    assert torch.equal(y, x)
    assert perm.shape == (x.shape[0], 1)


def test_seeded_and_reproducible():
    x = _batch()
    a, pa = jigsaw(x, 4, torch.Generator().manual_seed(7))
    b, pb = jigsaw(x, 4, torch.Generator().manual_seed(7))
    c, pc = jigsaw(x, 4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_gradients_flow_through_the_shuffle():
    x = _batch(b=2).requires_grad_()
    y, _ = jigsaw(x, 4, torch.Generator().manual_seed(0))
    (y * torch.arange(y.numel()).view_as(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("bad,match", [(0, ">= 1"), (40, "smaller than")])
def test_bad_granularity(bad, match):
    with pytest.raises(ValueError, match=match):
        jigsaw(_batch(), bad)


def test_wrong_permutation_shape():
    with pytest.raises(ValueError, match="permutation"):
        apply_permutation(_batch(b=2), torch.zeros(2, 3, dtype=torch.long), 2)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_row_select_and_pixel_gather_paths_agree(n):
    from fgssl.jigsaw import _gather_pixels, _select_tile_rows
    x = _batch(b=5, h=32, w=48)
    perm = random_permutations(5, n, torch.Generator().manual_seed(n))
    assert torch.equal(_select_tile_rows(x, perm, n), _gather_pixels(x, perm, n))


def test_non_contiguous_input():
    x = _batch(b=3, h=32, w=32).transpose(2, 3)  # a view with swapped strides
    y, perm = jigsaw(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(unjigsaw(y, perm, 4), x)
