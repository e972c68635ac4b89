"""Checkpoints in the run's directory: written only when they fit, verified after writing, and restored from
the newest intact one.

tf.train.CheckpointManager writes the data files first and then replaces the `checkpoint` state file
atomically, so a run killed at any moment still has its last complete checkpoint. What that cannot
prevent (a copy or sync that truncated a file, a lost index, flipped bits, a checkpoint of another
configuration) is found on restore: such a checkpoint is set aside as *.corrupt and the next older one
is tried.

A background save (the default in train.py) copies the state into a staging twin of the model, which takes a
fraction of a second, and writes the twin in a thread while training goes on; the write and its verification
are waited for at the next save and at the end of the run. The `checkpoint` state file still changes only after
the data is on disk, so a kill -9 during the write leaves the previous checkpoint as the newest.
"""

import os
import re
import shutil
import threading

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

from rundir.checkpoints import (CORRUPT_SUFFIX, OBJECT_GRAPH_KEY, checkpoint_dir, checkpoint_files, checkpoints_newest_first, damage,
                                set_aside, set_aside_files, weights_dir)
from training.cyclegan import NETWORKS, CycleGAN


VARIABLES = (tf.Variable, tf.keras.Variable)  # Keras 3 weights are not tf.Variables


class CheckpointError(RuntimeError):
    """A checkpoint cannot be restored or written (none usable, no room, a bad write); the message is one line."""


class NonFiniteWeightsError(CheckpointError):
    """A save was refused because a network holds NaN or Inf: writing it would replace a good checkpoint."""


def weights_only(model: CycleGAN) -> tf.train.Checkpoint:
    """The four networks and the step, without optimizers or pools: under the names the full checkpoint uses,
    so models/inference.restore_generators reads either."""
    return tf.train.Checkpoint(step=model.step, **{name: model.network(name) for name in NETWORKS})


class Checkpointer:
    """Saves the whole training state (networks, optimizers, pools, step) under <logdir>/checkpoints, numbered
    by the step, and restores the newest intact one; `last_saved_step` lets the loop skip a second save of a
    step. Weights-only snapshots go to <logdir>/weights and are all kept."""

    def __init__(self, model: CycleGAN, logdir: str, max_to_keep: int = 3, restore_logdir: str | None = None,
                 background: bool = False):
        """`restore_logdir` (default `logdir`) is where the run's checkpoints are read: a non-chief worker of a
        multi_worker run restores the chief's and writes its own into a temporary `logdir`. `background` writes
        from a staging twin in a thread (costs a second copy of the state in memory)."""
        self.model = model
        self.logdir = logdir
        self.restore_logdir = restore_logdir or logdir
        self.max_to_keep = max_to_keep
        self.last_saved_step = None
        self.last_saved_path = None
        self.checkpoint = model.checkpoint()
        self.staging = model.twin() if background else None
        self.written = self.staging.checkpoint() if background else self.checkpoint  # what the manager writes
        self.manager = tf.train.CheckpointManager(self.written, checkpoint_dir(logdir), max_to_keep=max_to_keep)
        self.weights = weights_only(model)
        self.weights_manager = tf.train.CheckpointManager(self.weights, weights_dir(logdir), max_to_keep=None)
        self._writing: threading.Thread | None = None
        self._write_error: str | None = None

    def restore_latest(self) -> str | None:
        """Restores the newest intact checkpoint and returns its path; None for a new run.

        Each damaged one on the way is logged in one line, set aside as *.corrupt and skipped. A restore that
        failed part way may have assigned some variables; the checkpoint that succeeds matched every object of
        the model (assert_existing_objects_matched), so it overwrote them all. Raises CheckpointError when
        there were checkpoints but none is usable.
        """
        directory = checkpoint_dir(self.restore_logdir)
        owner = self.restore_logdir == self.logdir  # only the run's writer sets damaged checkpoints aside
        for path in checkpoints_newest_first(directory):
            checkpoint = self.model.checkpoint()  # a fresh root: nothing of a failed attempt is deferred to it
            reason = damage(path) or self._restore(checkpoint, path)
            if reason is None:
                self.checkpoint = checkpoint
                if self.staging is None:
                    self.written = checkpoint
                else:  # the twin writes from now on: its count of saves goes on from the restored one
                    self.written.save_counter.assign(checkpoint.save_counter)
                self.manager = tf.train.CheckpointManager(self.written, checkpoint_dir(self.logdir),
                                                          max_to_keep=self.max_to_keep)
                self.last_saved_step, self.last_saved_path = self.model.current_step, path
                logging.info("resumed from %s at step %d", path, self.model.current_step)
                return path
            if not owner:
                logging.warning("damaged checkpoint %s: %s; trying the previous one", os.path.basename(path), reason)
                continue
            set_aside(path)
            logging.warning("damaged checkpoint %s: %s; set aside as %s*%s, trying the previous one",
                            os.path.basename(path), reason, os.path.basename(path), CORRUPT_SUFFIX)
        if set_aside_files(directory):
            raise CheckpointError(f"no usable checkpoint in {directory}: every one is damaged (set aside as "
                                  "*.corrupt); use another --logdir to start over")
        return None

    def _restore(self, checkpoint: tf.train.Checkpoint, path: str) -> str | None:
        """Restores `path` into the model; the reason it is unusable, or None."""
        try:
            status = checkpoint.restore(path)
            status.assert_existing_objects_matched()
            if not from_an_earlier_version(path):
                status.assert_consumed()  # a checkpoint of another configuration has objects this model lacks
        except (tf.errors.OpError, ValueError, AssertionError, IndexError, TypeError) as error:
            return f"does not restore into this model ({_first_line(error)})"
        bad = self.non_finite_networks()
        if bad:
            return f"non-finite weights in {', '.join(bad)}"
        return None

    def non_finite_networks(self) -> list[str]:
        return [name for name in NETWORKS
                if not all(bool(tf.reduce_all(tf.math.is_finite(w))) for w in self.model.network(name).weights)]

    def save(self) -> str:
        """Writes a checkpoint numbered by the step (in the background when so built): refuses non-finite
        weights and a disk without room for it, and verifies what was written. Raises CheckpointError for this
        save or for the previous background one."""
        step = self.model.current_step
        self.finish()
        self._check(self.manager, step)
        if self.staging is None:
            path = self._write(self.manager, self.written, step)
        else:
            for live, staged in zip(self.model.state(), self.staging.state(), strict=True):
                staged.assign(live)
            path = os.path.join(self.manager.directory, f"ckpt-{step}")  # the name manager.save gives it
            self._write_error = None
            self._writing = threading.Thread(target=self._write_in_background, args=(step,), name="checkpoint")
            self._writing.start()  # not a daemon: an exiting process still completes the write
        self.last_saved_step, self.last_saved_path = step, path
        return path

    def finish(self) -> None:
        """Waits for a background write and raises CheckpointError if it failed; nothing to do otherwise."""
        if self._writing is None:
            return
        self._writing.join()
        self._writing = None
        if self._write_error:
            raise CheckpointError(self._write_error)

    def _write_in_background(self, step: int) -> None:
        try:
            self._write(self.manager, self.written, step)
        except CheckpointError as error:
            self._write_error = str(error)
        except Exception as error:  # a full disk, say; anything else must reach finish() too, not end the thread
            self._write_error = f"checkpoint at step {step} not written: {_first_line(error)}"
        if self._write_error:
            logging.error("%s", self._write_error)

    def save_weights(self) -> str:
        """Writes a weights-only snapshot <logdir>/weights/ckpt-<step>, checked as `save` checks."""
        step = self.model.current_step
        self._check(self.weights_manager, step)
        return self._write(self.weights_manager, self.weights, step)

    def _check(self, manager: tf.train.CheckpointManager, step: int) -> None:
        """Refuses non-finite weights and a disk without room for a checkpoint."""
        bad = self.non_finite_networks()
        if bad:
            raise NonFiniteWeightsError(f"non-finite weights in {', '.join(bad)} at step {step}; checkpoint not "
                                        "written")
        os.makedirs(manager.directory, exist_ok=True)
        previous = manager.latest_checkpoint
        needed = (files_size(previous) if previous else 0) or variables_size(manager.checkpoint)
        free = shutil.disk_usage(manager.directory).free
        if free < needed:
            kept = f"; {previous} is intact" if previous else ""
            raise CheckpointError(f"not enough space for a checkpoint at step {step} in "
                                  f"{manager.directory}: {free:,} bytes free, {needed:,} needed{kept}")

    @staticmethod
    def _write(manager: tf.train.CheckpointManager, checkpoint: tf.train.Checkpoint, step: int) -> str:
        path = manager.save(checkpoint_number=step)
        reason = damage(path) or mismatch(path, checkpoint)
        if reason:
            set_aside(path)
            raise CheckpointError(f"checkpoint {path} is not whole after writing ({reason}); set aside as "
                                  f"{os.path.basename(path)}*{CORRUPT_SUFFIX}")
        return path


# State that checkpoints of earlier versions hold and this one no longer needs: the pools' random generators,
# before their draws were keyed by (seed, step). Restoring such a checkpoint leaves it unused.
EARLIER_VERSION_KEYS = ("pool_a/rng/", "pool_b/rng/")


def from_an_earlier_version(path: str) -> bool:
    return any(name.startswith(EARLIER_VERSION_KEYS) for name, _ in tf.train.list_variables(path))


def files_size(path: str) -> int:
    return sum(os.path.getsize(name) for name in checkpoint_files(path))


def variables_size(checkpoint: tf.train.Checkpoint) -> int:
    """Bytes of every variable `checkpoint` writes: its size before the first one is written."""
    variables = {id(v): v for v in tf.train.TrackableView(checkpoint).descendants() if isinstance(v, VARIABLES)}
    return sum(int(np.prod(v.shape, dtype=np.int64)) * tf.as_dtype(v.dtype).size for v in variables.values())


def mismatch(path: str, checkpoint: tf.train.Checkpoint) -> str | None:
    """Where the written checkpoint `path` differs from the objects of `checkpoint`: a value its object graph
    names that the index lacks, or a variable stored with another shape. None when it matches."""
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    live = {0: checkpoint}
    for node_id, node in enumerate(graph.nodes):  # breadth first: a node's parent comes before it
        obj = live.get(node_id)
        children = tf.train.TrackableView(obj).children(obj) if obj is not None else {}
        for child in node.children:
            if child.local_name in children:
                live.setdefault(child.node_id, children[child.local_name])
        for attribute in node.attributes:
            if attribute.checkpoint_key not in shapes:
                return f"its index lacks {attribute.checkpoint_key}"
            if isinstance(obj, VARIABLES) and list(obj.shape) != shapes[attribute.checkpoint_key]:
                return (f"{attribute.checkpoint_key} has shape {shapes[attribute.checkpoint_key]}, "
                        f"the model {list(obj.shape)}")
    return None


def _first_line(error: Exception) -> str:
    """The error's first line without TensorFlow's {{function_node ...}} prefix."""
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", str(error).strip())
    return text.splitlines()[0] if text else type(error).__name__
