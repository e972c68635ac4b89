"""The objectives on inputs whose values are known by hand."""

import numpy as np
import pytest
import tensorflow as tf

import losses


def test_lsgan():
    fake = tf.constant([[0.0, 0.5], [1.0, 2.0]])
    real = tf.constant([[1.0, 1.0], [0.0, 0.5]])
    # Generator: mean((D(fake) - 1)^2) = (1 + 0.25 + 0 + 1) / 4
    assert float(losses.generator_adversarial(fake, "lsgan")) == pytest.approx(0.5625)
    # Discriminator: 0.5 * (mean((real - 1)^2) + mean(fake^2))
    real_term = (0 + 0 + 1 + 0.25) / 4
    fake_term = (0 + 0.25 + 1 + 4) / 4
    assert float(losses.discriminator_adversarial(real, fake, "lsgan")) == pytest.approx(0.5 * (real_term + fake_term))


def test_bce_matches_numpy():
    logits = np.array([-2.0, 0.0, 3.0], np.float32)
    softplus = lambda z: np.log1p(np.exp(z))  # noqa: E731
    # -log(sigmoid(x)) = softplus(-x); -log(1 - sigmoid(x)) = softplus(x)
    assert float(losses.generator_adversarial(tf.constant(logits), "bce")) == pytest.approx(softplus(-logits).mean(), rel=1e-6)
    expected = 0.5 * (softplus(-logits).mean() + softplus(logits).mean())
    assert float(losses.discriminator_adversarial(logits, logits, "bce")) == pytest.approx(expected, rel=1e-6)


def test_cycle_and_identity_weights():
    a = tf.zeros((1, 4, 4, 1))
    b = tf.fill((1, 4, 4, 1), 0.25)
    assert float(losses.cycle(a, b, 10.0)) == pytest.approx(2.5)
    assert float(losses.identity(a, b, 10.0, 0.5)) == pytest.approx(1.25)


def test_unknown_gan_loss():
    with pytest.raises(ValueError, match="lsgan"):
        losses.generator_adversarial(tf.zeros(1), "wgan")
