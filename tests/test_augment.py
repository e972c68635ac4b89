"""Augmentation: identity when off, the contract (shape, range, determinism, graph mode), each op vs a reference."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from data.augment import (
    IMAGE_SHAPE,
    JITTER_SIZE,
    AugmentOptions,
    augment,
    bias_field,
    gamma_correct,
    jitter_matrix,
    rotation_zoom_matrix,
    warp,
)

OFF = AugmentOptions(jitter=False, flip=False)
# The warp computes sample coordinates (up to JITTER_SIZE px) in float32: a few roundings of 2^-24 relative each,
# times neighbouring pixels differing by at most 1 in these [0, 1] images, bound a resampled value's error.
WARP_TOLERANCE = 4 * JITTER_SIZE * 2.0**-24
ALL_ON = AugmentOptions(rotate_degrees=10.0, scale=0.1, gamma=0.3, bias_field=0.2)


def head(seed=0):
    """A textured ellipse on exact-zero air, with a wide empty border, like a skull-stripped slice."""
    rng = np.random.default_rng(seed)
    axis = np.arange(256) - 127.5
    inside = np.hypot(axis[:, None], axis[None, :] * 1.3) < 90
    return (inside * rng.uniform(0.1, 1.0, (256, 256)))[..., None].astype(np.float32)


def seed(*values):
    return tf.constant(values, tf.int64)


def run(options, image, *seed_values):
    return augment(tf.constant(image), options, seed(*seed_values)).numpy()


def test_options_enabled_and_validated():
    assert AugmentOptions().enabled
    assert not OFF.enabled
    assert AugmentOptions(jitter=False, flip=False, gamma=0.1).enabled
    for bad in (dict(scale=1.0), dict(bias_field=-0.1), dict(rotate_degrees=-5.0), dict(gamma=float("nan"))):
        with pytest.raises(ValueError):
            AugmentOptions(**bad)


def test_all_off_is_identity():
    image = head()
    np.testing.assert_array_equal(run(OFF, image, 1, 2), image)


def test_all_on_contract_and_air_stays_zero():
    image = head()
    for pair in ((0, 0), (5, 9), (-3, 2**40)):
        out = run(ALL_ON, image, *pair)
        assert out.shape == IMAGE_SHAPE and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        # Far from the head even a 10-degree, 1.2x zoomed, shifted copy only sees air.
        assert (out[:8] == 0).all() and (out[:, :8] == 0).all()
        assert out.max() > 0.5


def test_deterministic_per_seed_and_seeds_differ():
    image = head()
    np.testing.assert_array_equal(run(ALL_ON, image, 3, 4), run(ALL_ON, image, 3, 4))
    assert not np.array_equal(run(ALL_ON, image, 3, 4), run(ALL_ON, image, 3, 5))
    with_int32_seeds = [augment(image, ALL_ON, tf.constant([3, 4], tf.int32)).numpy() for _ in range(2)]
    np.testing.assert_array_equal(*with_int32_seeds)


@pytest.mark.parametrize(
    "single",
    [
        dict(flip=True),
        dict(jitter=True),
        dict(rotate_degrees=10.0),
        dict(scale=0.1),
        dict(gamma=0.3),
        dict(bias_field=0.2),
    ],
)
def test_each_random_op_varies_with_the_seed(single):
    options = dataclasses.replace(OFF, **single)
    outputs = {run(options, head(), i, 0).tobytes() for i in range(8)}
    assert len(outputs) > 1


def test_inside_dataset_map_matches_eager_with_static_shape():
    images = np.stack([head(0), head(1)])
    seeds = tf.data.Dataset.random(seed=7).batch(2)
    dataset = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(images), seeds).map(
        lambda image, pair: augment(image, ALL_ON, pair), num_parallel_calls=tf.data.AUTOTUNE
    )
    assert dataset.element_spec.shape == IMAGE_SHAPE
    for image, pair, out in zip(images, seeds, dataset):
        np.testing.assert_array_equal(out.numpy(), augment(image, ALL_ON, pair).numpy())


def test_flip_alone_is_exact_mirror_or_unchanged_and_both_happen():
    image = head()
    flipped = []
    for i in range(16):
        out = run(AugmentOptions(jitter=False, flip=True), image, i, 0)
        if np.array_equal(out, np.fliplr(image)):
            flipped.append(True)
        else:
            np.testing.assert_array_equal(out, image)
            flipped.append(False)
    assert any(flipped) and not all(flipped)


def resized_with_air(image: np.ndarray) -> np.ndarray:
    """scikit-image's bilinear resize to JITTER_SIZE (half-pixel centres), blending with 0 past the edge."""
    transform = pytest.importorskip("skimage.transform")
    return transform.resize(image[..., 0].astype(np.float64), (JITTER_SIZE, JITTER_SIZE), order=1, mode="constant",
                            cval=0.0, anti_aliasing=False)[..., None]


def test_jitter_alone_is_the_resize_cropped_at_one_integer_offset():
    """The documented jitter, checked against scikit-image: exactly one of the 31 x 31 crops matches."""
    image = np.random.default_rng(4).random(IMAGE_SHAPE).astype(np.float32)
    out = run(AugmentOptions(jitter=True, flip=False), image, 11, 12)
    reference = resized_with_air(image)
    span = JITTER_SIZE - 256 + 1
    errors = np.array([[np.abs(out - reference[r : r + 256, c : c + 256]).max() for c in range(span)]
                       for r in range(span)])
    assert np.count_nonzero(errors <= WARP_TOLERANCE) == 1, np.sort(errors, axis=None)[:3]


@pytest.mark.parametrize("offset", [(0, 0), (7, 23), (30, 30)])
def test_jitter_matrix_equals_resize_then_crop(offset):
    """Every pixel, the border too: past the edge both blend with air (tf.image.resize would repeat the edge)."""
    image = np.random.default_rng(1).random(IMAGE_SHAPE).astype(np.float32)
    out = warp(image, jitter_matrix(tf.constant(offset))).numpy()
    row, col = offset
    np.testing.assert_allclose(out, resized_with_air(image)[row : row + 256, col : col + 256], rtol=0,
                               atol=WARP_TOLERANCE)


def test_warp_fills_outside_with_air_not_mirrored_anatomy():
    tissue = np.ones(IMAGE_SHAPE, np.float32)
    rotated = warp(tissue, rotation_zoom_matrix(45.0, 1.0)).numpy()
    assert (rotated[:20, :20] == 0).all() and (rotated[100:156, 100:156] == 1).all()
    shrunk = warp(tissue, rotation_zoom_matrix(0.0, 0.8)).numpy()
    assert (shrunk[:20] == 0).all() and (shrunk[:, -20:] == 0).all()


def test_rotation_by_90_degrees_matches_rot90():
    image = np.random.default_rng(2).random((65, 65, 1)).astype(np.float32)
    out = warp(image, rotation_zoom_matrix(90.0, 1.0, size=65)).numpy()
    np.testing.assert_allclose(out, np.rot90(image), atol=1e-4)


def test_small_rotation_matches_skimage():
    transform = pytest.importorskip("skimage.transform")
    image = head(3)[..., 0]
    out = warp(image[..., None], rotation_zoom_matrix(-13.0, 1.0)).numpy()[..., 0]
    reference = transform.rotate(image.astype(np.float64), -13.0, order=1, mode="constant", cval=0, preserve_range=True)
    np.testing.assert_allclose(out, reference, rtol=0, atol=WARP_TOLERANCE)


def test_rotation_and_zoom_of_a_ramp_is_exact():
    """Bilinear interpolation reproduces a linear ramp exactly, so the warped ramp has a closed form."""
    rows, cols = np.mgrid[0:256, 0:256].astype(np.float64)
    ramp = lambda y, x: 0.002 * x + 0.0015 * y + 0.05  # noqa: E731
    angle, zoom, centre = np.deg2rad(20.0), 1.25, 127.5
    # Counter-clockwise as displayed (rows point down), magnified 1.25x about the centre.
    source_x = centre + (np.cos(angle) * (cols - centre) - np.sin(angle) * (rows - centre)) / zoom
    source_y = centre + (np.sin(angle) * (cols - centre) + np.cos(angle) * (rows - centre)) / zoom
    image = ramp(rows, cols)[..., None].astype(np.float32)
    out = warp(image, rotation_zoom_matrix(20.0, zoom)).numpy()[..., 0]
    inside = (source_x > 1) & (source_x < 254) & (source_y > 1) & (source_y < 254)
    np.testing.assert_allclose(out[inside], ramp(source_y, source_x)[inside], atol=1e-5)


@pytest.mark.parametrize("exponent", [0.7, 1.0, 1.35])
def test_gamma_matches_numpy(exponent):
    """image ** exponent to within one float32 step (2^-23 relative) of the float64 power."""
    image = np.linspace(0.0, 1.0, 256 * 256, dtype=np.float32).reshape(IMAGE_SHAPE)
    reference = image.astype(np.float64) ** np.float64(np.float32(exponent))
    np.testing.assert_allclose(gamma_correct(image, exponent).numpy(), reference, rtol=2.0**-23, atol=0)


def test_gamma_alone_is_one_power_law_within_its_range():
    """augment() with gamma only: every pixel is image ** g for one g in [exp(-0.5), exp(0.5)]."""
    image = head(6)
    tissue = image > 0
    out = run(AugmentOptions(jitter=False, flip=False, gamma=0.5), image, 8, 9)
    exponents = np.log(out[tissue].astype(np.float64)) / np.log(image[tissue].astype(np.float64))
    exponent = np.median(exponents)
    assert np.exp(-0.5) <= exponent <= np.exp(0.5) and abs(exponent - 1) > 1e-3
    # float32 rounding of out and of the power: a few 2^-24 steps relative
    np.testing.assert_allclose(out[tissue], image[tissue].astype(np.float64) ** exponent, rtol=4 * 2.0**-23)
    assert (out[~tissue] == 0).all()


@pytest.mark.parametrize("options", [dict(gamma=0.5), dict(bias_field=0.3), dict(gamma=0.5, bias_field=0.3)])
def test_intensity_ops_keep_air_exactly_zero_and_change_tissue(options):
    image = head(4)
    out = run(AugmentOptions(jitter=False, flip=False, **options), image, 21, 22)
    air = image == 0
    assert (out[air] == 0).all()
    assert (out[~air] > 0).all() and not np.allclose(out[~air], image[~air])


def test_bias_field_has_mean_one_and_bounded_amplitude():
    amplitudes = []
    for i in range(8):
        field = bias_field(seed(i, 1), 0.2).numpy()
        assert field.shape == IMAGE_SHAPE
        assert abs(field.mean() - 1.0) < 1e-5
        amplitudes.append(np.abs(field - 1.0).max())
        # Smooth: neighbouring pixels differ by a small fraction of the amplitude.
        assert np.abs(np.diff(field, axis=0)).max() < 0.02 and np.abs(np.diff(field, axis=1)).max() < 0.02
    np.testing.assert_allclose(amplitudes, 0.2, rtol=1e-5)  # max |p| is normalised to 1
    assert run(AugmentOptions(jitter=False, flip=False, bias_field=0.2), head(5), 1, 1).max() <= 1.0
