import pytest
import torch

from fgssl.augment import random_view
from fgssl.config import ConfigError, config_from_dict
from fgssl.data.images import MEAN, STD, to_float


def _raw(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def test_colour_jitter_is_one_gain_per_image_and_channel_within_its_bounds():
    x = to_float(torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8))
    plain = random_view(x, torch.Generator().manual_seed(3), jitter=0.0)
    cast = random_view(x, torch.Generator().manual_seed(3), jitter=0.0, colour=0.25)
    # the same warp (drawn first), then each channel of each image scaled by one factor in [0.75, 1.25]
    ratio = _raw(cast) / _raw(plain)
    gain = ratio.flatten(2).median(dim=2).values
    assert torch.allclose(ratio, gain[:, :, None, None].expand_as(ratio), atol=1e-4)
    assert ((gain >= 0.75) & (gain <= 1.25)).all() and gain.std() > 0.05
    # off by default: the random stream and the view are those of before the option existed
    assert torch.equal(random_view(x, torch.Generator().manual_seed(3)),
                       random_view(x, torch.Generator().manual_seed(3), colour=0.0))


def test_colour_jitter_bounds_are_checked():
    assert config_from_dict({"train": {"colour_jitter": 0.2}}).train.colour_jitter == 0.2
    with pytest.raises(ConfigError, match="train.colour_jitter"):
        config_from_dict({"train": {"colour_jitter": 1.0}})
