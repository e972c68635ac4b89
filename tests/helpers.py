"""Shared test helpers: running the entry scripts and reading what they wrote."""

import glob
import os
import re
import subprocess
import sys

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small and fast: few phantom subjects, one summary sample.
QUICK = ["--synthetic_subjects=6", "--synthetic_test_subjects=2", "--summary_images=1", "--log_every_steps=1"]


def script(name: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Runs an entry script of the repository the way a user would; output is captured."""
    kwargs.setdefault("timeout", 600)
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *args], capture_output=True, text=True,
                          cwd=ROOT, **kwargs)


def checkpoint_step(logdir: str) -> int:
    path = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
    assert path is not None, f"no checkpoint in {logdir}"
    return int(tf.train.load_checkpoint(path).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def checkpoint_weight_count(logdir: str) -> dict[str, int]:
    """Parameters per network, read from the raw checkpoint file (not from any model we build).

    With its optimizer in the same checkpoint, a Keras 3 model's weights are
    stored under the optimizer's `_trainable_variables` path.
    """
    path = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
    counts: dict[str, int] = {}
    for name, shape in tf.train.list_variables(path):
        match = re.fullmatch(r"optimizer_(\w+)/_trainable_variables/\d+/\.ATTRIBUTES/VARIABLE_VALUE", name)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + int(np.prod(shape))
    return counts


def summaries(logdir: str) -> dict[str, dict[int, object]]:
    """Every summary in a logdir's event files: tag -> {step: scalar value, or 'image'/'text'}."""
    out: dict[str, dict[int, object]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "scalars":
                    item = float(tf.make_ndarray(value.tensor))
                else:
                    item = plugin
                out.setdefault(value.tag, {})[event.step] = item
    return out
