"""Image-history pool (Shrivastava et al. 2017) kept in TensorFlow variables.

The discriminators see a mix of the newest fakes and fakes from earlier steps,
which damps the oscillation between G and D. Being variables, the pool lives
inside the compiled train step and is saved with the checkpoint.
"""

import tensorflow as tf


class ImagePool(tf.Module):
    """Holds up to `size` images; `size == 0` turns the pool off."""

    def __init__(self, size: int, image_shape=(256, 256, 1), seed: int = 0, name: str | None = None):
        super().__init__(name=name)
        self.size = size
        self.images = tf.Variable(tf.zeros((max(size, 1), *image_shape), tf.float32), trainable=False, name="images")
        self.count = tf.Variable(0, dtype=tf.int32, trainable=False, name="count")
        self.rng = tf.random.Generator.from_seed(seed)

    def query(self, batch: tf.Tensor) -> tf.Tensor:
        """Per image: while filling, store it and return it; then with p=0.5 swap it for a stored one."""
        if self.size == 0:
            return batch
        batch = tf.cast(batch, tf.float32)
        returned = []
        for i in range(batch.shape[0]):  # the batch size is static inside the train step
            image = batch[i]
            returned.append(tf.cond(self.count < self.size, lambda: self._fill(image), lambda: self._maybe_swap(image)))
        return tf.stack(returned)

    def _fill(self, image):
        self.images.scatter_nd_update([[self.count]], image[tf.newaxis])
        with tf.control_dependencies([self.count.assign_add(1)]):
            return tf.identity(image)

    def _maybe_swap(self, image):
        coin = self.rng.uniform((), dtype=tf.float32)
        index = self.rng.uniform((), maxval=self.size, dtype=tf.int32)

        def swap():
            stored = tf.identity(self.images[index])
            with tf.control_dependencies([stored]):
                update = self.images.scatter_nd_update([[index]], image[tf.newaxis])
            with tf.control_dependencies([update]):
                return tf.identity(stored)

        return tf.cond(coin < 0.5, swap, lambda: tf.identity(image))
