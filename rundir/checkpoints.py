"""Where a run keeps its checkpoints, and how a tool finds the newest one."""

import os

import tensorflow as tf

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(logdir: str) -> str:
    return os.path.join(logdir, CHECKPOINT_DIR)


def latest_checkpoint(logdir: str) -> str:
    """The newest checkpoint's path; FileNotFoundError (one line, with the fix) when the run has none."""
    path = tf.train.latest_checkpoint(checkpoint_dir(logdir))
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(logdir)}; train first with: "
                                f"python train.py --logdir={logdir}")
    return path
