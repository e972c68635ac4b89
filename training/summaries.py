"""TensorBoard content beyond scalars: translation grids and the run's settings as text."""

import numpy as np
import tensorflow as tf

from training.cyclegan import zero_air


def translation_grid(generator, back, images: np.ndarray, air: tf.Tensor | None = None) -> tf.Tensor:
    """Rows of input | translated | reconstructed for [N, 256, 256, 1] inputs in [-1, 1], as one [0, 1] image;
    with `air` (the inputs' air masks), both outputs are 0 there, as the run trained them."""
    translated = zero_air(generator(images, training=False), air)
    reconstructed = zero_air(back(translated, training=False), air)
    rows = tf.concat([tf.cast(images, tf.float32), translated, reconstructed], axis=2)  # (N, 256, 768, 1)
    grid = tf.reshape(rows, (1, -1, rows.shape[2], rows.shape[3]))  # (1, N*256, 768, 1)
    return tf.clip_by_value((grid + 1.0) / 2.0, 0.0, 1.0)


def markdown_table(rows: dict) -> str:
    lines = ["| name | value |", "|---|---|"]
    lines += [f"| {name} | `{value}` |" for name, value in rows.items()]
    return "\n".join(lines)
