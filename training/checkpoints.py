"""Atomic, automatic checkpoints in the run's directory.

tf.train.CheckpointManager writes the data files first and then replaces the
`checkpoint` index file atomically, so a run killed at any moment still has
its last complete checkpoint.
"""

import tensorflow as tf
from absl import logging

from rundir.checkpoints import checkpoint_dir
from training.cyclegan import NETWORKS, CycleGAN


class NonFiniteWeightsError(RuntimeError):
    """A save was refused because a network holds NaN or Inf: writing it would replace a good checkpoint."""


class Checkpointer:
    """Saves the whole training state (networks, optimizers, pools, step) under <logdir>/checkpoints, numbered
    by the step, and restores the newest one; `last_saved_step` lets the loop skip a second save of a step."""

    def __init__(self, model: CycleGAN, logdir: str, max_to_keep: int = 3):
        self.model = model
        self.last_saved_step = None
        self.checkpoint = model.checkpoint()
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, checkpoint_dir(logdir), max_to_keep=max_to_keep
        )

    def restore_latest(self) -> bool:
        """Restores the newest checkpoint if there is one; returns whether it did."""
        path = self.manager.latest_checkpoint
        if path is None:
            return False
        self.checkpoint.restore(path).assert_existing_objects_matched()
        self.last_saved_step = self.model.current_step
        logging.info("resumed from %s at step %d", path, self.model.current_step)
        return True

    def save(self) -> str:
        """Writes a checkpoint numbered by the step, refusing non-finite weights."""
        if not all(bool(tf.reduce_all(tf.math.is_finite(w))) for w in self.network_weights()):
            raise NonFiniteWeightsError(f"non-finite weights at step {self.model.current_step}; checkpoint not written")
        path = self.manager.save(checkpoint_number=self.model.current_step)
        self.last_saved_step = self.model.current_step
        return path

    def network_weights(self):
        return [v for name in NETWORKS for v in self.model.network(name).weights]
