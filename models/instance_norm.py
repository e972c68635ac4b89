"""Instance normalisation, the per-image normaliser CycleGAN uses instead of batch norm."""

import tensorflow as tf

keras = tf.keras


@keras.utils.register_keras_serializable(package="mri_cyclegan")
class InstanceNorm(keras.layers.Layer):
    """Normalises each sample's channels over H and W, then applies a learned scale and offset.

    Statistics are computed in float32 even under mixed precision, because a
    variance in bfloat16/float16 loses most of its digits. A feature map of a
    single pixel (the U-Net's 1x1 bottleneck) has no spatial statistics: its
    normalised value would be 0 for every input, erasing the content, so there
    the layer applies only its scale and offset (see docs/training.md, "Architecture and losses").
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        self.scale = self.add_weight(
            name="scale",
            shape=(channels,),
            initializer=keras.initializers.RandomNormal(1.0, 0.02),
        )
        self.offset = self.add_weight(name="offset", shape=(channels,), initializer="zeros")
        height, width = input_shape[1], input_shape[2]
        self.affine_only = height == 1 and width == 1

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        if not self.affine_only:
            mean, variance = tf.nn.moments(x, axes=[1, 2], keepdims=True)
            x = (x - mean) * tf.math.rsqrt(variance + self.epsilon)
        x = x * tf.cast(self.scale, tf.float32) + tf.cast(self.offset, tf.float32)
        return tf.cast(x, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
