"""MultiWorkerMirroredStrategy with two worker processes on this machine (TF_CONFIG naming two loopback
ports): the session's full-size run is one (train.py itself, the full-size model, one step; tests/conftest.py),
and so is the narrow trained run the tools' tests read; preemption and kill -9 run on the narrow networks
(train.py --filters=4).

Every subprocess has a timeout; the workers talk over 127.0.0.1 only.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

RUNNER = os.path.join(ROOT, "train.py")
PLAN = [*helpers.NARROW, "--synthetic_subjects=6", "--synthetic_test_subjects=2", "--summary_images=1", "--log_every_steps=1",
        "--batch_size=2", "--deterministic"]
TIMEOUT = 600


def start_workers(logdir, *flags, log_dir, runner=RUNNER) -> list[subprocess.Popen]:
    return helpers.start_workers(runner, logdir, *PLAN, *flags, log_dir=log_dir)


def finish(processes) -> list[tuple[int, str]]:
    return helpers.finish_workers(processes, TIMEOUT)


def checkpoint_values(logdir) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def wait_for_checkpoint(logdir, processes):
    index = os.path.join(logdir, "checkpoints", "checkpoint")
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(index) and all(p.poll() is None for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(p.poll() is None for p in processes), "a worker ended before the first checkpoint"


def test_sigterm_on_one_worker_stops_both_at_one_step_with_a_checkpoint(tmp_path):
    logdir = tmp_path / "run"
    processes = start_workers(logdir, "--epochs=1", "--steps_per_epoch=400", "--save_every_steps=2",
                              log_dir=tmp_path)
    wait_for_checkpoint(logdir, processes)
    processes[1].send_signal(signal.SIGTERM)  # a preemption of the non-chief worker
    results = finish(processes)
    assert [code for code, _ in results] == [143, 143], results[0][1][-3000:]
    step = int(checkpoint_values(logdir)["step/.ATTRIBUTES/VARIABLE_VALUE"])
    assert 2 <= step < 400
    assert all(f"SIGTERM at step {step}; saved" in output and "Traceback" not in output for _, output in results)


def test_a_worker_killed_with_sigkill_then_both_restarted_resume_and_write_one_run(tmp_path):
    """kill -9 of the non-chief mid-run: the chief stops in one line; rerunning both resumes from the newest
    checkpoint and ends at the planned step, with the run written by the chief alone."""
    logdir = tmp_path / "run"
    plan = ("--epochs=1", "--steps_per_epoch=6", "--save_every_steps=2")
    processes = start_workers(logdir, *plan, log_dir=tmp_path)
    wait_for_checkpoint(logdir, processes)
    processes[1].send_signal(signal.SIGKILL)
    (code, output), _ = finish(processes)
    assert code == 1 and "Traceback" not in output
    assert "error: a worker stopped responding after step" in output.strip().splitlines()[-1]
    assert "MultiWorkerMirroredStrategy, 2 replica(s)" in output and "per-replica batch 1" in output
    killed_at = int(checkpoint_values(logdir)["step/.ATTRIBUTES/VARIABLE_VALUE"])
    assert 2 <= killed_at < 6
    results = finish(start_workers(logdir, *plan, log_dir=tmp_path))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert all(f"at step {killed_at}" in output for _, output in results)
    # The chief alone wrote the run: one checkpoint series, one event file per start, the flags.
    assert tf.train.latest_checkpoint(str(logdir / "checkpoints")).endswith("ckpt-6")
    assert not [name for name in os.listdir(logdir / "checkpoints") if "corrupt" in name or "tmp" in name]
    assert len([name for name in os.listdir(logdir) if name.startswith("events.out.tfevents")]) == 2
    assert (logdir / "flags.txt").exists()
    values = checkpoint_values(logdir)
    assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == 6
    assert values["pool_a/count/.ATTRIBUTES/VARIABLE_VALUE"] == 12  # one pool: both workers' fakes of 6 steps
    assert values["pool_b/images/.ATTRIBUTES/VARIABLE_VALUE"].shape == (50, 256, 256, 1)


def test_two_full_size_workers_write_one_checkpoint_of_the_design(full_size_run):
    """The session's full-size run is a two-worker run of train.py itself (tests/conftest.py): the chief alone
    wrote one checkpoint series of the full-size model (its count: test_train_script.py), with one pool per
    domain holding both workers' fakes."""
    logdir = Path(full_size_run)
    assert sorted(os.listdir(logdir / "checkpoints")) == ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    assert len([name for name in os.listdir(logdir) if name.startswith("events.out.tfevents")]) == 1
    assert sum(helpers.checkpoint_weight_count(full_size_run).values()) == 114_344_708
    values = checkpoint_values(logdir)
    assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == 1
    assert values["pool_a/count/.ATTRIBUTES/VARIABLE_VALUE"] == 2 and values["pool_b/count/.ATTRIBUTES/VARIABLE_VALUE"] == 2
