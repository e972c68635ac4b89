"""Atomic, automatic checkpoints in the run's directory.

tf.train.CheckpointManager writes the data files first and then replaces the
`checkpoint` index file atomically, so a run killed at any moment still has
its last complete checkpoint.
"""

import os

import tensorflow as tf
from absl import logging

from models.networks import build_generator
from training.cyclegan import NETWORKS, CycleGAN

CHECKPOINT_DIR = "checkpoints"


class NonFiniteWeightsError(RuntimeError):
    pass


class Checkpointer:
    def __init__(self, model: CycleGAN, logdir: str, max_to_keep: int = 3):
        self.model = model
        self.checkpoint = model.checkpoint()
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(logdir, CHECKPOINT_DIR), max_to_keep=max_to_keep
        )

    def restore_latest(self) -> bool:
        """Restores the newest checkpoint if there is one; returns whether it did."""
        path = self.manager.latest_checkpoint
        if path is None:
            return False
        self.checkpoint.restore(path).assert_existing_objects_matched()
        logging.info("resumed from %s at step %d", path, int(self.model.step))
        return True

    def save(self) -> str:
        """Writes a checkpoint numbered by the step, refusing non-finite weights."""
        if not all(bool(tf.reduce_all(tf.math.is_finite(w))) for w in self.network_weights()):
            raise NonFiniteWeightsError(f"non-finite weights at step {int(self.model.step)}; checkpoint not written")
        return self.manager.save(checkpoint_number=int(self.model.step))

    def network_weights(self):
        return [v for name in NETWORKS for v in self.model.network(name).weights]


def latest_checkpoint(logdir: str) -> str:
    path = tf.train.latest_checkpoint(os.path.join(logdir, CHECKPOINT_DIR))
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(logdir, CHECKPOINT_DIR)}")
    return path


def restore_generators(logdir: str, checkpoint_path: str | None = None):
    """The two generators and the step of a run's newest (or the given) checkpoint, for inference.

    Restores by object: only the generators and the step are built; optimizers
    and pools in the file are ignored (expect_partial).
    """
    generator_g, generator_f = build_generator("generator_g"), build_generator("generator_f")
    step = tf.Variable(0, dtype=tf.int64, name="step")
    path = checkpoint_path or latest_checkpoint(logdir)
    status = tf.train.Checkpoint(step=step, generator_g=generator_g, generator_f=generator_f).restore(path)
    status.expect_partial().assert_existing_objects_matched()
    return generator_g, generator_f, int(step)
