"""The architecture is part of the specification: exact parameter counts and shapes."""

import numpy as np
import pytest
import tensorflow as tf

from models.instance_norm import InstanceNorm
from models.networks import (
    DISCRIMINATOR_PARAMS,
    GENERATOR_PARAMS,
    TOTAL_PARAMS,
    build_discriminator,
    build_generator,
)


@pytest.fixture(scope="module")
def networks():
    return build_generator(), build_discriminator()


def test_parameter_counts(networks):
    generator, discriminator = networks
    assert generator.count_params() == 54_408_833 == GENERATOR_PARAMS
    assert discriminator.count_params() == 2_763_521 == DISCRIMINATOR_PARAMS
    assert 2 * generator.count_params() + 2 * discriminator.count_params() == 114_344_708 == TOTAL_PARAMS
    assert not generator.non_trainable_weights and not discriminator.non_trainable_weights


def test_shapes(networks):
    generator, discriminator = networks
    x = tf.random.uniform((2, 256, 256, 1), -1, 1, seed=1)
    y = generator(x, training=False)
    assert y.shape == (2, 256, 256, 1) and y.dtype == tf.float32
    assert discriminator(x).shape == (2, 30, 30, 1)


def patchgan_parameters(layers: int, f: int = 64) -> int:
    """Count by hand: a bias-free 4x4 conv per level (instance norm's scale and offset after all but the first),
    the stride-1 conv, and the 4x4 conv to one logit with its bias."""
    widths = [min(2**level, 8) * f for level in range(layers + 1)]
    count = 16 * 1 * widths[0]
    for before, after in zip(widths, widths[1:]):
        count += 16 * before * after + 2 * after
    return count + 16 * widths[-1] + 1


def receptive_field(model: tf.keras.Model) -> int:
    """Input pixels one output sees, from the model's own convolutions (kernel, stride), last to first."""
    convs = [layer for layer in model._flatten_layers() if isinstance(layer, tf.keras.layers.Conv2D)]
    field = 1
    for conv in reversed(convs):
        field = (field - 1) * conv.strides[0] + conv.kernel_size[0]
    return field


@pytest.mark.parametrize("layers, patch, logits", [(3, 70, 30), (4, 142, 14), (5, 286, 6)])
def test_deeper_patchgans(layers, patch, logits):
    """--discriminator_layers: 3 is the design (70x70 patches); each level more about doubles the patch."""
    discriminator = build_discriminator(layers=layers)
    assert discriminator.count_params() == patchgan_parameters(layers)
    assert receptive_field(discriminator) == patch
    assert discriminator(tf.zeros((1, 256, 256, 1))).shape == (1, logits, logits, 1)
    assert patchgan_parameters(3) == DISCRIMINATOR_PARAMS


def test_bottleneck_carries_content(networks):
    """The 1x1 bottleneck is affine-only, so changing the input changes what passes through it."""
    generator, _ = networks
    bottleneck = tf.keras.Model(generator.input, generator.get_layer("down8").output)
    a = bottleneck(tf.random.uniform((1, 256, 256, 1), -1, 1, seed=2)).numpy()
    b = bottleneck(tf.random.uniform((1, 256, 256, 1), -1, 1, seed=3)).numpy()
    assert np.abs(a - b).max() > 1e-4


def instance_norm_reference(x, scale, offset, epsilon=1e-5):
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * scale + offset


def test_instance_norm_matches_numpy():
    rng = np.random.default_rng(0)
    x = (rng.normal(3.0, 2.0, (2, 8, 6, 5))).astype(np.float32)
    layer = InstanceNorm()
    out = layer(x).numpy()
    expected = instance_norm_reference(x.astype(np.float64), layer.scale.numpy(), layer.offset.numpy())
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Per-sample statistics: the second sample does not affect the first.
    alone = layer(x[:1]).numpy()
    np.testing.assert_allclose(out[:1], alone, atol=1e-6)


def test_instance_norm_init_and_config():
    layer = InstanceNorm(epsilon=1e-3)
    layer.build((None, 4, 4, 256))
    scale = layer.scale.numpy()
    assert abs(scale.mean() - 1.0) < 0.01 and 0.01 < scale.std() < 0.03
    assert np.all(layer.offset.numpy() == 0)
    clone = InstanceNorm.from_config(layer.get_config())
    assert clone.epsilon == 1e-3


def test_instance_norm_float32_statistics_under_mixed_precision():
    layer = InstanceNorm(dtype="mixed_bfloat16")
    x = np.random.default_rng(1).normal(1000.0, 8.0, (1, 16, 16, 2)).astype(np.float32)
    x = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()  # what a bfloat16 conv would hand over
    out = layer(x)
    assert out.dtype == tf.bfloat16
    expected = instance_norm_reference(x.astype(np.float64), layer.scale.numpy(), layer.offset.numpy())
    # A bfloat16 mean of values near 1000 is off by up to 2 (a quarter of a standard deviation).
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), expected, atol=0.03)


def test_instance_norm_single_pixel_is_affine_only():
    layer = InstanceNorm()
    x = np.random.default_rng(2).normal(size=(3, 1, 1, 4)).astype(np.float32)
    out = layer(x).numpy()
    np.testing.assert_allclose(out, x * layer.scale.numpy() + layer.offset.numpy(), atol=1e-6)
