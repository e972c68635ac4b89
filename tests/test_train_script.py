"""train.py end to end on the built-in synthetic data: checkpoints, summaries, resume, kill -9."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import QUICK, ROOT, checkpoint_step, checkpoint_weight_count, script, summaries


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("run"))
    result = script("train.py", "--epochs=1", "--steps_per_epoch=2", f"--logdir={logdir}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir


def test_writes_checkpoint_summaries_and_flags(first_run):
    assert checkpoint_step(first_run) == 2
    counts = checkpoint_weight_count(first_run)
    assert counts == {"generator_g": 54_408_833, "generator_f": 54_408_833,
                      "discriminator_x": 2_763_521, "discriminator_y": 2_763_521}
    assert sum(counts.values()) == 114_344_708
    tags = summaries(first_run)
    for name in ("g/adversarial", "f/adversarial", "cycle/a_to_b_to_a", "cycle/b_to_a_to_b", "g/identity",
                 "f/identity", "d_x/total", "d_y/total"):
        assert set(tags[f"loss/{name}"]) == {1, 2}
    assert set(tags["learning_rate"]) == {1, 2} and "steps_per_second" in tags
    assert tags["t1_to_t2"] == {2: "images"} and tags["t2_to_t1"] == {2: "images"}
    assert tags["flags"] == {0: "text"} and tags["parameters"] == {0: "text"}
    with open(os.path.join(first_run, "flags.txt")) as f:
        saved = f.read().splitlines()
    assert "--epochs=1" in saved and "--synthetic_subjects=6" in saved and "--pool_size=50" in saved


def test_rerun_with_more_epochs_resumes_on_the_new_schedule(first_run):
    result = script("train.py", "--epochs=2", "--steps_per_epoch=2", f"--logdir={first_run}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and "at step 2" in result.stderr
    assert checkpoint_step(first_run) == 4
    lr = summaries(first_run)["learning_rate"]
    # The new plan: 4 steps, decay from step 2 (epoch 1 of 2); lr logged is the one the step used.
    assert lr[3] == pytest.approx(2e-4) and lr[4] == pytest.approx(1e-4)
    # A finished run started again does nothing.
    again = script("train.py", "--epochs=2", "--steps_per_epoch=2", f"--logdir={first_run}", *QUICK)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert checkpoint_step(first_run) == 4


def test_sigkill_then_restart_ends_at_the_planned_step(tmp_path):
    logdir = str(tmp_path)
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--epochs=3", "--steps_per_epoch=2",
            f"--logdir={logdir}", *QUICK]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = os.path.join(logdir, "checkpoints", "checkpoint")
    deadline = time.monotonic() + 300
    while not os.path.exists(index) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert os.path.exists(index), "the run never wrote its first checkpoint"
    killed_at = checkpoint_step(logdir)
    assert killed_at in (2, 4, 6)
    result = script("train.py", "--epochs=3", "--steps_per_epoch=2", f"--logdir={logdir}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_step(logdir) == 6


def test_deterministic_runs_are_bit_identical(trained_run, tmp_path):
    """--deterministic: the same flags give the same checkpoint, weights, optimizer slots and pools alike."""
    result = script("train.py", "--epochs=1", "--steps_per_epoch=1", "--deterministic", f"--logdir={tmp_path}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    first = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(trained_run, "checkpoints")))
    second = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints")))
    names = sorted(first.get_variable_to_shape_map())
    assert names == sorted(second.get_variable_to_shape_map())
    different = [name for name in names if not np.array_equal(first.get_tensor(name), second.get_tensor(name))]
    assert different == []
