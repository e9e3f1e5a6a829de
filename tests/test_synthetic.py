"""Built-in synthetic data: shapes, determinism, label prior, texture-only class signal, site shift."""

from __future__ import annotations

import numpy as np
import pytest

from fgssl.data import synthetic as S


def _balanced_indices(seed: int, num_classes: int, per_class: int, start: int = 0) -> np.ndarray:
    idx = np.arange(start, start + 400 * per_class * num_classes)
    labels = S.labels_for(idx, seed, num_classes)
    picks = [idx[labels == k][:per_class] for k in range(num_classes)]
    assert all(p.size == per_class for p in picks), "search range too small for the rarest class"
    return np.concatenate(picks)


def _nearest_centroid_balanced_accuracy(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Fit class centroids on even positions of each class, score balanced accuracy on odd ones."""
    order = np.argsort(labels, kind="stable")
    features, labels = features[order], labels[order]
    rank = np.concatenate([np.arange(np.sum(labels == k)) for k in range(num_classes)])
    train, test = rank % 2 == 0, rank % 2 == 1
    mu, sd = features[train].mean(0), features[train].std(0) + 1e-9
    z = (features - mu) / sd
    centroids = np.stack([z[train & (labels == k)].mean(0) for k in range(num_classes)])
    pred = ((z[test][:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    truth = labels[test]
    return float(np.mean([np.mean(pred[truth == k] == k) for k in range(num_classes)]))


def _colour_features(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64) / 255
    return np.concatenate([x.mean((2, 3)), x.std((2, 3))], axis=1)


def _texture_features(images: np.ndarray) -> np.ndarray:
    """Windowed power spectrum of the grey image: log energy in radial bands + sorted orientation shares."""
    g = images.astype(np.float64).mean(1) / 255
    g = g - g.mean((1, 2), keepdims=True)
    size = g.shape[-1]
    w = np.hanning(size)
    power = np.abs(np.fft.fft2(g * w[None, :, None] * w[None, None, :])) ** 2
    f = np.fft.fftfreq(size)
    fx, fy = np.meshgrid(f, f)
    r = np.hypot(fx, fy)
    theta = np.arctan2(fy, fx) % np.pi
    total = power[:, r >= 0.06].sum(1) + 1e-12
    edges = np.linspace(0.06, 0.5, 11)
    bands = [np.log(power[:, (r >= lo) & (r < hi)].sum(1) / total + 1e-12) for lo, hi in zip(edges[:-1], edges[1:])]
    ring = (r >= 0.12) & (r < 0.3)
    sectors = np.stack(
        [power[:, ring & (theta >= a) & (theta < a + np.pi / 8)].sum(1) for a in np.arange(8) * np.pi / 8], axis=1
    )
    sectors = np.sort(sectors / (sectors.sum(1, keepdims=True) + 1e-12), axis=1)  # rotation invariant
    return np.concatenate([np.stack(bands, 1), sectors], axis=1)


# ------------------------------------------------------------------------------------------------
# Shapes, types, argument checking
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 32, 96])
def test_shapes_and_dtypes(size: int) -> None:
    images, labels = S.generate(range(5), seed=0, image_size=size)
    assert images.shape == (5, 3, size, size) and images.dtype == np.uint8
    assert labels.shape == (5,) and labels.dtype == np.int64
    assert images.flags.c_contiguous
    assert 0 <= labels.min() and labels.max() < 7


def test_empty_indices() -> None:
    images, labels = S.generate(np.array([], dtype=np.int64), seed=0)
    assert images.shape == (0, 3, 64, 64) and labels.shape == (0,)


def test_images_use_the_range_and_are_not_flat() -> None:
    images, _ = S.generate(range(16), seed=0)
    assert images.std() > 20  # lesion vs skin contrast
    assert images.min() < 60 and images.max() > 180


@pytest.mark.parametrize("k", [0, 1, 11, 100, -3])
def test_unsupported_class_counts_raise(k: int) -> None:
    for call in (
        lambda: S.generate(range(2), 0, num_classes=k),
        lambda: S.labels_for(range(2), 0, num_classes=k),
        lambda: S.class_names(k),
        lambda: S.class_frequencies(k),
    ):
        with pytest.raises(ValueError, match="num_classes"):
            call()


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="site_shift"):
        S.generate(range(2), 0, site=0, site_shift=-1.0)
    with pytest.raises(ValueError, match="non-negative"):
        S.generate(np.array([3, -1]), 0)
    with pytest.raises(ValueError, match="image_size"):
        S.generate(range(2), 0, image_size=4)
    with pytest.raises(ValueError, match="site"):
        S.generate(range(2), 0, site=-2, site_shift=1.0)


# ------------------------------------------------------------------------------------------------
# Names and class prior
# ------------------------------------------------------------------------------------------------


def test_class_names() -> None:
    assert S.class_names(7) == ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC") == S.CLASS_NAMES_7
    assert S.class_names(3) == ("class_0", "class_1", "class_2")
    assert len(S.class_names(10)) == 10


def test_isic_frequencies() -> None:
    freqs = np.asarray(S.ISIC2018_FREQUENCIES)
    assert freqs.sum() == pytest.approx(1.0)
    assert freqs[1] == pytest.approx(6705 / 10015)  # NV
    assert freqs[5] == pytest.approx(115 / 10015)  # DF
    np.testing.assert_allclose(S.class_frequencies(7), freqs)


@pytest.mark.parametrize("k", range(2, 11))
def test_class_frequencies_are_a_skewed_distribution(k: int) -> None:
    p = S.class_frequencies(k)
    assert p.shape == (k,) and p.sum() == pytest.approx(1.0) and (p > 0).all()
    assert p.max() / p.min() > 2.5  # skewed like the real data sets, not balanced


@pytest.mark.parametrize("k", [7, 3, 10])
def test_label_frequencies_match_prior(k: int) -> None:
    labels = S.labels_for(range(20_000), seed=3, num_classes=k)
    observed = np.bincount(labels, minlength=k) / labels.size
    # Binomial standard error is at most 0.0035 at n = 20000; 0.012 is > 3 standard errors.
    np.testing.assert_allclose(observed, S.class_frequencies(k), atol=0.012)


def test_labels_for_equals_generate_labels() -> None:
    idx = np.array([0, 7, 123, 5000, 99_999, 12])
    for k in (7, 4, 10):
        _, labels = S.generate(idx, seed=11, num_classes=k, image_size=16)
        np.testing.assert_array_equal(S.labels_for(idx, seed=11, num_classes=k), labels)
    np.testing.assert_array_equal(S.labels_for(range(50, 80), 2), S.labels_for(np.arange(50, 80), 2))


# ------------------------------------------------------------------------------------------------
# Determinism per (seed, index)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("site, shift", [(None, 0.0), (2, 1.0)])
def test_image_is_independent_of_its_batch(site: int | None, shift: float) -> None:
    kw = dict(seed=5, num_classes=10, site=site, site_shift=shift)
    alone, label_alone = S.generate([205], **kw)
    # In a long range that spans several internal chunks, in a shifted range, and shuffled.
    batch, labels = S.generate(range(0, 300), **kw)
    shifted, _ = S.generate(range(200, 230), **kw)
    shuffled, _ = S.generate(np.array([9, 205, 3, 1000]), **kw)
    np.testing.assert_array_equal(alone[0], batch[205])
    np.testing.assert_array_equal(alone[0], shifted[5])
    np.testing.assert_array_equal(alone[0], shuffled[1])
    assert label_alone[0] == labels[205]


def test_same_seed_same_images() -> None:
    a = S.generate(range(40), seed=1)
    b = S.generate(range(40), seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_any_integer_seed_is_a_valid_key() -> None:
    # numpy ints behave like Python ints; negative and > 64-bit seeds wrap onto 64 bits.
    np.testing.assert_array_equal(S.generate(range(3), np.int64(7))[0], S.generate(range(3), 7)[0])
    np.testing.assert_array_equal(S.generate(range(3), -1)[0], S.generate(range(3), 2**64 - 1)[0])
    assert not np.array_equal(S.generate(range(3), -1)[0], S.generate(range(3), 1)[0])


def test_different_seeds_and_indices_differ() -> None:
    a, _ = S.generate(range(20), seed=0)
    b, _ = S.generate(range(20), seed=1)
    per_image = np.abs(a.astype(int) - b.astype(int)).mean((1, 2, 3))
    assert (per_image > 3).all()
    # No two images within a seed are the same either.
    flat = a.reshape(len(a), -1).astype(int)
    dist = np.abs(flat[:, None] - flat[None]).mean(-1)
    assert dist[~np.eye(len(a), dtype=bool)].min() > 3


# ------------------------------------------------------------------------------------------------
# Class signal lives in texture, not in colour
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [7, 10])
def test_classes_differ_in_texture_not_in_colour(k: int) -> None:
    idx = _balanced_indices(seed=4, num_classes=k, per_class=80)
    images, labels = S.generate(idx, seed=4, num_classes=k)
    colour = _nearest_centroid_balanced_accuracy(_colour_features(images), labels, k)
    texture = _nearest_centroid_balanced_accuracy(_texture_features(images), labels, k)
    chance = 1 / k
    # Verified over seeds 0-9 (80 per class): colour 0.09-0.20 for k=7 (chance 0.14);
    # texture 0.43-0.56 for k=7 and 0.38-0.49 for k=10.
    assert colour < chance + 0.12, f"colour statistics predict the class: {colour:.2f}"
    assert texture > chance + 0.2, f"texture features barely beat chance: {texture:.2f}"
    assert _max_colour_z(images, labels, k) < 4.5


def _max_colour_z(images: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Largest |z| of a class's mean colour feature (channel means/stds) against all classes."""
    feats = _colour_features(images)
    sd = feats.std(0)
    z = [
        (feats[labels == c].mean(0) - feats.mean(0)) / (sd / np.sqrt(np.sum(labels == c)))
        for c in range(num_classes)
    ]
    return float(np.abs(np.stack(z)).max())


def test_no_single_class_has_its_own_colour() -> None:
    # The balanced-accuracy test above can miss a leak confined to one class; this one looks at
    # every class's mean of every colour feature (42 z-scores). Verified with 300 per class over
    # seeds 0-9: without a leak max |z| was 1.4-3.2; with one class's pigment 15% lighter it
    # exceeded 4 for 8 of the 10 seeds (5.1 for seed 8, used here).
    k = 7
    idx = _balanced_indices(seed=8, num_classes=k, per_class=300)
    images, labels = S.generate(idx, seed=8, num_classes=k)
    assert _max_colour_z(images, labels, k) < 4


# ------------------------------------------------------------------------------------------------
# Per-site acquisition shift
# ------------------------------------------------------------------------------------------------


def test_zero_shift_or_no_site_means_no_shift() -> None:
    plain, labels = S.generate(range(10), seed=2)
    for site, shift in ((3, 0.0), (None, 1.0)):
        images, lab = S.generate(range(10), seed=2, site=site, site_shift=shift)
        np.testing.assert_array_equal(images, plain)
        np.testing.assert_array_equal(lab, labels)


def test_site_shift_changes_pixels_and_sites_differ() -> None:
    idx = range(64)
    plain, labels = S.generate(idx, seed=0)
    by_site = [S.generate(idx, seed=0, site=s, site_shift=1.0) for s in range(4)]
    channel_means = [imgs.reshape(64, 3, -1).mean((0, 2)) for imgs, _ in by_site]
    for imgs, lab in by_site:
        np.testing.assert_array_equal(lab, labels)  # a camera does not change the diagnosis
        assert np.abs(imgs.astype(int) - plain.astype(int)).mean() > 5
    # Every pair of sites differs in colour response (mean per channel, grey levels).
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(channel_means[a] - channel_means[b]).max() > 3, (a, b)


def test_site_shift_strength_scales_the_effect() -> None:
    plain, _ = S.generate(range(32), seed=0)
    diffs = [
        np.abs(S.generate(range(32), seed=0, site=1, site_shift=s)[0].astype(int) - plain.astype(int)).mean()
        for s in (0.25, 0.5, 1.0)
    ]
    assert 0 < diffs[0] < diffs[1] < diffs[2]


def test_texture_survives_a_strong_site_shift() -> None:
    # Blur and noise at site_shift=1 weaken the finest textures but must not erase them.
    k = 7
    idx = _balanced_indices(seed=6, num_classes=k, per_class=60)
    images, labels = S.generate(idx, seed=6, num_classes=k, site=2, site_shift=1.0)
    acc = _nearest_centroid_balanced_accuracy(_texture_features(images), labels, k)
    assert acc > 1 / k + 0.15, acc
