"""tf.data input: the two domains unpaired, shuffled independently, augmented in parallel."""

import numpy as np
import tensorflow as tf

from data.augment import AugmentOptions, augment


def _domain(slices: np.ndarray, batch_size: int, seed: int, options: AugmentOptions | None) -> tf.data.Dataset:
    """One domain's endless stream of [-1, 1] batches; `slices` are [N, 256, 256] in [0, 1].

    `slices` is an array in host memory or a data.cache.CachedSlices that reads each slice from
    disk when it is looked up; either way the dataset shuffles indices into it, so no copy lands
    in the graph (whose protos are limited to 2 GB) and a cache keeps memory flat.
    """
    if isinstance(slices, np.ndarray):
        slices = np.ascontiguousarray(slices, dtype=np.float32)
    size = tuple(slices.shape[1:])

    def lookup(index):
        image = tf.numpy_function(lambda i: slices[i], [index], tf.float32, stateful=False)
        return tf.ensure_shape(image, size)[..., tf.newaxis]

    indices = tf.data.Dataset.range(len(slices)).shuffle(len(slices), seed=seed, reshuffle_each_iteration=True)
    images = indices.repeat().map(lookup, num_parallel_calls=tf.data.AUTOTUNE)
    if options is not None and options.enabled:
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        images = tf.data.Dataset.zip(images, seeds).map(
            lambda image, pair: augment(image, options, pair), num_parallel_calls=tf.data.AUTOTUNE
        )
    return images.map(lambda x: x * 2.0 - 1.0, num_parallel_calls=tf.data.AUTOTUNE).batch(  # to [-1, 1]
        batch_size, drop_remainder=True
    )


def unpaired_dataset(
    slices_a: np.ndarray,
    slices_b: np.ndarray,
    batch_size: int,
    seed: int,
    options: AugmentOptions | None = None,
    epoch: int = 0,
    skip: int = 0,
) -> tf.data.Dataset:
    """Endless (A, B) batch pairs; A and B never come from a shared index, so no pairing leaks in.

    Order and augmentation are a function of (seed, epoch) alone, so a run resumed
    `skip` batches into an epoch sees exactly the batches an uninterrupted run would.
    """
    seed_a, seed_b = (int(s) for s in np.random.SeedSequence([seed, epoch]).generate_state(2))
    a = _domain(slices_a, batch_size, seed_a, options)
    b = _domain(slices_b, batch_size, seed_b, options)
    return tf.data.Dataset.zip(a, b).skip(skip).prefetch(tf.data.AUTOTUNE)
