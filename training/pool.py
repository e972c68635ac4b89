"""Image-history pool (Shrivastava et al. 2017) kept in TensorFlow variables.

The discriminators see a mix of the newest fakes and fakes from earlier steps,
which damps the oscillation between G and D. Being variables, the pool lives
inside the compiled train step and is saved with the checkpoint.

Its coin flips and slot choices come from a stateless generator keyed by (seed, step), so every
replica of a distributed run makes the same decisions on the same (gathered) fakes, one pool per
domain is identical everywhere, and a restored pool continues exactly: the draws depend on the step,
not on a generator state that would need saving.
"""

import tensorflow as tf

# Written by every replica with identical values: keep the first replica's (no summing).
_SAME_ON_EVERY_REPLICA = tf.VariableAggregation.ONLY_FIRST_REPLICA


class ImagePool(tf.Module):
    """Holds up to `size` images; `size == 0` turns the pool off."""

    def __init__(self, size: int, image_shape=(256, 256, 1), seed: int = 0, name: str | None = None):
        super().__init__(name=name)
        self.size = size
        self.seed = seed
        self.images = tf.Variable(tf.zeros((max(size, 1), *image_shape), tf.float32), trainable=False, name="images",
                                  aggregation=_SAME_ON_EVERY_REPLICA)
        self.count = tf.Variable(0, dtype=tf.int32, trainable=False, name="count", aggregation=_SAME_ON_EVERY_REPLICA)

    def query(self, batch: tf.Tensor, step) -> tf.Tensor:
        """Per image, in order: while filling, store it and return it; then with p=0.5 swap it for a stored one.

        `step` keys the random draws; the batch size must be static (it is inside the train step).
        """
        if self.size == 0:
            return batch
        batch = tf.cast(batch, tf.float32)
        n = batch.shape[0]
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        coins = tf.random.stateless_uniform([n], seed=key)
        slots = tf.random.stateless_uniform([n], seed=key + [0, 1 << 40], maxval=self.size, dtype=tf.int32)
        images, count = tf.convert_to_tensor(self.images), tf.convert_to_tensor(self.count)
        returned = []
        for i in range(n):
            image = batch[i]
            filling = count < self.size
            swap = tf.logical_and(tf.logical_not(filling), coins[i] < 0.5)
            slot = tf.where(filling, count, slots[i])
            stored = images[slot]
            returned.append(tf.where(swap, stored, image))
            kept = tf.where(tf.logical_or(filling, swap), image, stored)  # the slot's new content
            images = tf.tensor_scatter_nd_update(images, [[slot]], kept[tf.newaxis])
            count = tf.where(filling, count + 1, count)
        self.images.assign(images)
        self.count.assign(count)
        return tf.stack(returned)
