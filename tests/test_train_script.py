"""train.py end to end on the built-in synthetic data: checkpoints, summaries, resume, signals, divergence."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import QUICK, ROOT, checkpoint_step, checkpoint_weight_count, script, summaries

# Deterministic, with the decay starting after epoch 1 whatever --epochs is, so that a 1-epoch run extended
# to 2 epochs follows the learning-rate curve of a 2-epoch run.
PLAN = ["--steps_per_epoch=2", "--decay_epoch=1", "--deterministic", *QUICK]


def train(logdir, *args, **kwargs):
    return script("train.py", f"--logdir={logdir}", *PLAN, *args, **kwargs)


def final_state(logdir) -> dict[str, np.ndarray]:
    """Every tensor of the newest checkpoint but the manager's count of saves."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
    return {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()
            if not name.startswith("save_counter")}


def assert_same_state(logdir_a, logdir_b):
    """Counters and random states exactly, floats to run-to-run noise.

    oneDNN's CPU kernels may add in another order from run to run, and Adam amplifies that in its first
    steps (seen between two runs of one command: 1e-5 in weights, 4e-3 in a first moment). A resume that
    replays other data, dropout masks or pool draws leaves other images in the pools (1.3 apart when
    resume was broken on purpose); run-to-run noise stays inside 0.05.
    """
    a, b = final_state(logdir_a), final_state(logdir_b)
    assert sorted(a) == sorted(b)
    floats = {name for name in a if np.issubdtype(a[name].dtype, np.floating)}
    assert [name for name in a if name not in floats and not np.array_equal(a[name], b[name])] == []
    pools = {name for name in floats if name.startswith("pool_")}
    assert {name: float(np.abs(a[name] - b[name]).max()) for name in pools} == pytest.approx(
        {name: 0.0 for name in pools}, abs=0.05)
    # Adam's moments carry the amplified noise itself; the weights they produced must still agree.
    weights = {name for name in floats if "/_trainable_variables/" in name}
    assert weights
    assert [name for name in weights if not np.allclose(a[name], b[name], rtol=1e-2, atol=1e-2)] == []


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("run"))
    result = train(logdir, "--epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir


@pytest.fixture(scope="module")
def resumed_run(first_run):
    """The first run, continued to 2 epochs by the same command with --epochs=2."""
    result = train(first_run, "--epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return first_run, result


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


def test_rerun_with_more_epochs_resumes_on_the_new_schedule(resumed_run):
    logdir, result = resumed_run
    assert "resumed from" in result.stderr and "at step 2" in result.stderr
    assert checkpoint_step(logdir) == 4
    lr = summaries(logdir)["learning_rate"]
    # The plan: 4 steps, decay from step 2; the logged rate is the one the step used.
    assert lr[1] == lr[2] == lr[3] == pytest.approx(2e-4) and lr[4] == pytest.approx(1e-4)
    # Every optimizer counted the same steps as the run.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
    for network in ("generator_g", "generator_f", "discriminator_x", "discriminator_y"):
        assert reader.get_tensor(f"optimizer_{network}/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 4
    # A finished run started again does nothing, and keeps its saved flags.
    with open(os.path.join(logdir, "flags.txt")) as f:
        flags_before = f.read()
    again = train(logdir, "--epochs=2", "--synthetic_seed=7")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert checkpoint_step(logdir) == 4
    with open(os.path.join(logdir, "flags.txt")) as f:
        assert f.read() == flags_before


def test_sigkill_mid_epoch_then_restart_equals_the_uninterrupted_run(tmp_path):
    """Killed at whatever step its last checkpoint holds, the restarted run ends where the same command
    run without a stop ends: same data order, augmentation, dropout masks, pool draws and optimizer state."""
    plan = ["--epochs=2", "--save_every_steps=1"]
    uninterrupted, killed = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
    result = train(uninterrupted, *plan)
    assert result.returncode == 0, result.stderr[-3000:]
    args = [sys.executable, os.path.join(ROOT, "train.py"), f"--logdir={killed}", *PLAN, *plan]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = os.path.join(killed, "checkpoints", "checkpoint")
    while not os.path.exists(index) and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = checkpoint_step(killed)
    assert 1 <= killed_at < 4
    result = train(killed, *plan)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {killed_at}" in result.stderr
    assert checkpoint_step(killed) == 4
    assert_same_state(killed, uninterrupted)


def test_sigterm_saves_and_exits_130(tmp_path):
    logdir = str(tmp_path)
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), f"--logdir={logdir}", "--epochs=1",
                                "--steps_per_epoch=50", *QUICK], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # the loop has started once the first epoch is announced
        if "epoch 1/1" in line:
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait() == 130
    assert "Traceback" not in rest
    step = checkpoint_step(logdir)
    assert 0 <= step < 50 and f"SIGTERM at step {step}; saved" in rest


def test_divergence_stops_naming_the_step_without_a_checkpoint(tmp_path):
    result = script("train.py", f"--logdir={tmp_path}", "--epochs=1", "--steps_per_epoch=6", "--lr=1e12", *QUICK)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at step ") and "not finite" in last
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "checkpoint"))


def test_resuming_with_another_precision_is_refused(resumed_run):
    result = script("train.py", f"--logdir={resumed_run[0]}", "--epochs=3", "--precision=mixed_bfloat16", *QUICK)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--precision=float32 (now mixed_bfloat16)" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args, message", [(["--batch_size=0"], "FATAL Flags parsing error: flag --batch_size=0"),
                                           (["--log_every_steps=0"], "FATAL Flags parsing error"),
                                           ([f"--logdir={__file__}"], "error: --logdir=")])
def test_bad_arguments_are_one_line_errors(args, message):
    result = script("train.py", "--epochs=1", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr
