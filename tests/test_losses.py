import pytest
import torch

from fgssl.losses import barlow_twins_loss, cross_correlation, loss_from_correlation


def test_zero_for_identity_correlation():
    assert loss_from_correlation(torch.eye(5)).item() == 0.0
    assert loss_from_correlation(torch.eye(5), variant="authors").item() == 0.0


def test_matches_hand_computed_value():
    c = torch.tensor([[0.5, 0.2], [-0.1, 0.9]])
    # on-diagonal: (1-0.5)^2 + (1-0.9)^2 = 0.25 + 0.01 = 0.26; off-diagonal: 0.2^2 + 0.1^2 = 0.05
    assert loss_from_correlation(c, lam=0.5).item() == pytest.approx(0.26 + 0.5 * 0.05)
    # authors' form: lam^2 * ||C - I||_F^2 = 0.25 * (0.25 + 0.04 + 0.01 + 0.01)
    assert loss_from_correlation(c, lam=0.5, variant="authors").item() == pytest.approx(0.25 * 0.31)


def test_cross_correlation_is_batch_standardised():
    # two dims, four samples: z2 = z1 for dim 0, and dim 1 of z2 is -dim 1 of z1
    z1 = torch.tensor([[1.0, 2.0], [2.0, 0.0], [3.0, 1.0], [4.0, 5.0]])
    z2 = z1 * torch.tensor([1.0, -1.0])
    c = cross_correlation(z1, z2)
    assert c[0, 0].item() == pytest.approx(1.0, abs=1e-4)
    assert c[1, 1].item() == pytest.approx(-1.0, abs=1e-4)
    # C is invariant to per-dimension affine changes of either input
    c2 = cross_correlation(z1 * 3 + 7, z2)
    assert torch.allclose(c, c2, atol=1e-4)


def test_identical_decorrelated_views_give_near_zero_loss():
    z = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))[0][:, :8] * 8
    z = z - z.mean(0)
    assert barlow_twins_loss(z, z).item() < 1e-3


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        cross_correlation(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        cross_correlation(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="variant"):
        loss_from_correlation(torch.eye(2), variant="nope")
