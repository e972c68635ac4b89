"""A trained generator as a plain function, from a checkpoint or an exported SavedModel.

translate.py, evaluate.py and export.py go through here. Loading a SavedModel imports neither
training code nor the network definitions, so an exported model works without the research code.
"""

import json
import os
import re
from typing import Callable

import numpy as np
import tensorflow as tf

from data import preprocess
from models.directions import DIRECTIONS
from rundir import flagfile
from rundir.checkpoints import checkpoint_dir, checkpoints_newest_first, damage, latest_checkpoint

Generator = Callable[[np.ndarray], np.ndarray]


def _as_function(network) -> Generator:
    forward = tf.function(lambda x: network(x, training=False), reduce_retracing=True)
    return lambda batch: forward(tf.convert_to_tensor(batch, tf.float32)).numpy()


def restore_generators(checkpoint_path: str, filters: int | None = None) -> tuple[dict[str, tf.keras.Model], int]:
    """The generators ({direction: model}) and the step of a checkpoint, built without the trainer.

    Restores by object: only the generators and the step are built; optimizers, discriminators and
    pools in the file are ignored (expect_partial), so a full checkpoint and a weights-only snapshot
    both work. `filters` is the networks' width (None: the design's). Raises ValueError naming the
    checkpoint with a one-line reason for a damaged one (a missing or truncated file, bad checksums,
    non-finite weights).
    """
    from models.networks import DESIGN_FILTERS, build_generator  # here: loading a SavedModel needs no network code

    damaged = damage(checkpoint_path)
    if damaged:
        raise ValueError(f"{checkpoint_path}: unreadable checkpoint ({damaged})")
    networks = {name: build_generator(d.generator, filters or DESIGN_FILTERS) for name, d in DIRECTIONS.items()}
    step = tf.Variable(0, dtype=tf.int64, name="step")
    objects = {DIRECTIONS[name].generator: network for name, network in networks.items()}
    try:
        tf.train.Checkpoint(step=step, **objects).restore(checkpoint_path).expect_partial() \
            .assert_existing_objects_matched()
    except (tf.errors.OpError, IndexError, AssertionError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{checkpoint_path}: unreadable checkpoint ({reason})") from error
    non_finite = [DIRECTIONS[name].generator for name, network in networks.items()
                  if not all(np.isfinite(w.numpy()).all() for w in network.weights)]
    if non_finite:
        raise ValueError(f"{checkpoint_path}: unreadable checkpoint (non-finite weights in {', '.join(non_finite)})")
    return networks, int(step)


def run_filters(logdir: str, checkpoint_path: str | None = None) -> int | None:
    """The networks' width the run was trained with: its saved --filters (None, the design's, where it saved none)."""
    saved = flagfile.load_run(logdir, checkpoint_path).get("filters")
    try:
        return int(saved) if saved is not None else None
    except ValueError:
        raise ValueError(f"{logdir}: {flagfile.FLAGFILE} has --filters={saved}, not a width") from None


def checkpoint_networks(logdir: str, checkpoint_path: str | None = None) -> tuple[dict[str, tf.keras.Model], str, int]:
    """The Keras generators ({direction: model}) of a run's newest (or the given) checkpoint, its path and step,
    at the width the run saved (run_filters).

    Never falls back silently: when the newest is damaged, the ValueError names it, why, and the newest
    intact one to pass as --checkpoint. Raises FileNotFoundError when the run has no checkpoint.
    """
    filters = run_filters(logdir, checkpoint_path)
    if checkpoint_path:
        path = as_checkpoint_prefix(checkpoint_path)
        networks, step = restore_generators(path, filters)
        return networks, path, step
    newest = latest_checkpoint(logdir)
    try:
        networks, step = restore_generators(newest, filters)
    except ValueError as damaged:
        older = checkpoints_newest_first(checkpoint_dir(logdir))[1:]
        intact = next((path for path in older if _restores(path, filters)), None)
        hint = (f"the newest intact one is {intact}: pass --checkpoint={intact} to use it" if intact
                else f"no intact checkpoint in {checkpoint_dir(logdir)}")
        raise ValueError(f"{damaged}; {hint}") from damaged
    return networks, newest, step


def _restores(path: str, filters: int | None) -> bool:
    try:
        restore_generators(path, filters)
    except ValueError:
        return False
    return True


def as_checkpoint_prefix(path: str) -> str:
    """A checkpoint as given by the user: its prefix (runs/x/checkpoints/ckpt-12), or one of its files."""
    return re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)


def from_checkpoint(logdir: str, checkpoint_path: str | None = None) -> tuple[dict[str, Generator], int]:
    """Both generators ({direction: generator}) of a run's newest (or the given) checkpoint, and its step.

    Raises as checkpoint_networks does.
    """
    networks, _, step = checkpoint_networks(logdir, checkpoint_path)
    return {direction: _as_function(network) for direction, network in networks.items()}, step


def card_path(saved_model: str) -> str:
    """The JSON card export.py writes beside a SavedModel folder: exported/t1_to_t2 -> exported/t1_to_t2.json."""
    return os.path.normpath(saved_model) + ".json"


def exported_direction(saved_model: str) -> str | None:
    """The direction the card of an exported SavedModel names; None when there is no card.

    Raises ValueError (one line) for a card that is not readable JSON or names no direction.
    """
    path = card_path(saved_model)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            direction = json.load(f).get("direction")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: unreadable model card ({type(error).__name__}: {error})") from error
    if direction not in DIRECTIONS:
        raise ValueError(f"{path}: the model card names no direction ({direction!r})")
    return direction


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
        batch = preprocess.to_network(canvases[start : start + batch_size, ..., np.newaxis])
        out[start : start + batch_size] = preprocess.from_network(generator(batch)[..., 0])
    return out
