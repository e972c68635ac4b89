"""CycleGAN objectives: adversarial (LSGAN or BCE), cycle consistency, identity, and the inversion prior.

Each returns one value per example ([batch] from [batch, ...] inputs), the mean over that example's
pixels or patches, so that the train step can average over the global batch across replicas
(tf.nn.compute_average_loss). All losses take float32 tensors; callers cast mixed-precision outputs first.
"""

import tensorflow as tf

GAN_LOSSES = ("lsgan", "bce")


def _check(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(GAN_LOSSES)}")


def per_example_mean(values: tf.Tensor) -> tf.Tensor:
    """[batch, ...] -> [batch]: the mean over everything but the batch axis."""
    return tf.reduce_mean(tf.reshape(values, (tf.shape(values)[0], -1)), axis=1)


def _against(logits: tf.Tensor, target: float, kind: str) -> tf.Tensor:
    """Per-example mean adversarial loss of `logits` against a constant label (1 real, 0 fake)."""
    labels = tf.fill(tf.shape(logits), tf.constant(target, logits.dtype))
    if kind == "lsgan":
        return per_example_mean(tf.square(logits - labels))
    return per_example_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def generator_adversarial(fake_logits: tf.Tensor, kind: str = "lsgan") -> tf.Tensor:
    """The generator wants its fakes judged real."""
    _check(kind)
    return _against(fake_logits, 1.0, kind)


def discriminator_adversarial(real_logits: tf.Tensor, fake_logits: tf.Tensor, kind: str = "lsgan") -> tf.Tensor:
    """Real judged real, fake judged fake; halved, as in CycleGAN, to slow D relative to G."""
    _check(kind)
    return 0.5 * (_against(real_logits, 1.0, kind) + _against(fake_logits, 0.0, kind))


def l1(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Per-example mean absolute difference, the cycle and identity distance."""
    return per_example_mean(tf.abs(a - b))


def cycle(real: tf.Tensor, reconstructed: tf.Tensor, lambda_cycle: float) -> tf.Tensor:
    """lambda_cycle * |x - F(G(x))|_1."""
    return lambda_cycle * l1(real, reconstructed)


def identity(real: tf.Tensor, same: tf.Tensor, lambda_cycle: float, lambda_identity: float) -> tf.Tensor:
    """lambda_identity * lambda_cycle * |y - G(y)|_1: keeps G from changing an image already in its target contrast."""
    return lambda_identity * lambda_cycle * l1(real, same)


def inverted_head(source: tf.Tensor, air: tf.Tensor) -> tf.Tensor:
    """Images in [-1, 1] with the head's intensities reversed (unit x -> 1 - x) and the air kept at -1 (unit 0)."""
    return tf.where(air, -1.0, -source)


def inversion_prior(source: tf.Tensor, translated: tf.Tensor, air: tf.Tensor, weight) -> tf.Tensor:
    """weight * |inverted_head(x) - G(x)|_1: T1 and T2 order the brain's tissues in reverse, so a translation
    starts from the reversed source rather than from the identity that a U-Net's skips make easy."""
    return weight * l1(inverted_head(source, air), translated)
