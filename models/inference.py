"""A trained generator as a plain function, from a checkpoint or an exported SavedModel.

translate.py and evaluate.py go through here. Loading a SavedModel imports no
training code, so an exported model works without the research code.
"""

from typing import Callable

import numpy as np
import tensorflow as tf

DIRECTIONS = ("t1_to_t2", "t2_to_t1")

Generator = Callable[[np.ndarray], np.ndarray]


def _as_function(network) -> Generator:
    forward = tf.function(lambda x: network(x, training=False), reduce_retracing=True)
    return lambda batch: forward(tf.convert_to_tensor(batch, tf.float32)).numpy()


def from_checkpoint(logdir: str, checkpoint_path: str | None = None) -> tuple[dict[str, Generator], int]:
    """Both generators ({direction: generator}) of a run's newest (or the given) checkpoint, and its step.

    Raises ValueError with a one-line reason for a truncated or corrupt checkpoint.
    """
    from training.checkpoints import restore_generators

    try:
        generator_g, generator_f, step = restore_generators(logdir, checkpoint_path)
    except (tf.errors.OpError, IndexError, AssertionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{checkpoint_path or logdir}: unreadable checkpoint ({reason})") from error
    return {"t1_to_t2": _as_function(generator_g), "t2_to_t1": _as_function(generator_f)}, step


def from_saved_model(path: str) -> Generator:
    """An exported generator (export.py): its serving_default signature, [N, 256, 256, 1] in [-1, 1]."""
    signature = tf.saved_model.load(path).signatures["serving_default"]

    def forward(batch):
        outputs = signature(tf.convert_to_tensor(batch, tf.float32))
        return next(iter(outputs.values())).numpy()

    return forward


def translate_canvases(generator: Generator, canvases: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """[N, 256, 256] slices in [0, 1] -> their translations in [0, 1], in batches."""
    out = np.empty(canvases.shape, np.float32)
    for start in range(0, len(canvases), batch_size):
        batch = canvases[start : start + batch_size, ..., np.newaxis] * 2.0 - 1.0
        out[start : start + batch_size] = np.clip((generator(batch)[..., 0] + 1.0) / 2.0, 0.0, 1.0)
    return out
