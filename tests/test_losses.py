"""The objectives on inputs whose values are known by hand."""

import numpy as np
import pytest
import tensorflow as tf

import losses


def test_lsgan_per_example():
    fake = tf.constant([[0.0, 0.5], [1.0, 2.0]])  # two examples of two patches
    real = tf.constant([[1.0, 1.0], [0.0, 0.5]])
    # Generator: mean((D(fake) - 1)^2) per example: (1 + 0.25) / 2 and (0 + 1) / 2
    np.testing.assert_allclose(losses.generator_adversarial(fake, "lsgan"), [0.625, 0.5])
    # Discriminator: 0.5 * (mean((real - 1)^2) + mean(fake^2)) per example
    real_term = np.array([(0 + 0) / 2, (1 + 0.25) / 2])
    fake_term = np.array([(0 + 0.25) / 2, (1 + 4) / 2])
    np.testing.assert_allclose(losses.discriminator_adversarial(real, fake, "lsgan"), 0.5 * (real_term + fake_term))


def test_bce_matches_numpy():
    logits = np.array([[-2.0, 0.0, 3.0], [1.0, -1.0, 0.5]], np.float32)
    softplus = lambda z: np.log1p(np.exp(z))  # noqa: E731
    # -log(sigmoid(x)) = softplus(-x); -log(1 - sigmoid(x)) = softplus(x)
    np.testing.assert_allclose(losses.generator_adversarial(tf.constant(logits), "bce"), softplus(-logits).mean(1),
                               rtol=1e-6)
    expected = 0.5 * (softplus(-logits).mean(1) + softplus(logits).mean(1))
    np.testing.assert_allclose(losses.discriminator_adversarial(logits, logits, "bce"), expected, rtol=1e-6)


def test_cycle_and_identity_weights_per_example():
    a = tf.zeros((2, 4, 4, 1))
    b = tf.stack([tf.fill((4, 4, 1), 0.25), tf.fill((4, 4, 1), 0.5)])
    np.testing.assert_allclose(losses.cycle(a, b, 10.0), [2.5, 5.0])
    np.testing.assert_allclose(losses.identity(a, b, 10.0, 0.5), [1.25, 2.5])


def test_inversion_prior_reverses_the_head_and_keeps_the_air_against_numpy():
    rng = np.random.default_rng(0)
    unit = rng.uniform(0.0, 1.0, (2, 5, 5, 1)).astype(np.float32)
    air = rng.uniform(size=unit.shape) < 0.3
    translated = rng.uniform(-1.0, 1.0, unit.shape).astype(np.float32)
    expected_unit = np.where(air, 0.0, 1.0 - unit)  # the reference in unit intensities
    np.testing.assert_allclose(losses.inverted_head(tf.constant(unit * 2 - 1), tf.constant(air)),
                               expected_unit * 2 - 1, atol=1e-6)
    per_example = np.abs(translated - (expected_unit * 2 - 1)).reshape(2, -1).mean(1)
    np.testing.assert_allclose(losses.inversion_prior(tf.constant(unit * 2 - 1), tf.constant(translated),
                                                      tf.constant(air), 3.0), 3.0 * per_example, rtol=1e-5)


def test_unknown_gan_loss():
    with pytest.raises(ValueError, match="lsgan"):
        losses.generator_adversarial(tf.zeros((1, 1)), "wgan")
