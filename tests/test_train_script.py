"""train.py as a process: what only a process shows (the full-size model's parameter count in a real
checkpoint, kill -9 and restart, SIGTERM's exit code, flag errors). The loop's mechanics are tested in-process
in test_loop.py."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import NARROW, QUICK, ROOT, checkpoint_step, checkpoint_weight_count, script, summaries

pytestmark = pytest.mark.slow

PLAN = ["--steps_per_epoch=1", "--decay_epoch=1", "--deterministic", *QUICK]


def narrow_train(logdir, *args, **kwargs):
    """train.py on the narrow networks (--filters=4): the process is what is tested."""
    return script("train.py", f"--logdir={logdir}", *NARROW, *PLAN, *args, **kwargs)


def checkpoint_state(path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(path)
    return {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


def test_writes_the_full_size_model_summaries_and_flags(full_size_run):
    assert checkpoint_step(full_size_run) == 1
    counts = checkpoint_weight_count(full_size_run)
    assert counts == {"generator_g": 54_408_833, "generator_f": 54_408_833,
                      "discriminator_x": 2_763_521, "discriminator_y": 2_763_521}
    assert sum(counts.values()) == 114_344_708
    tags = summaries(full_size_run)
    assert set(tags["loss/generators/total"]) == {1} and tags["t1_to_t2"] == {1: "images"}
    with open(os.path.join(full_size_run, "flags.txt")) as f:
        saved = f.read().splitlines()
    assert "--epochs=1" in saved and "--synthetic_subjects=6" in saved and "--pool_size=50" in saved
    assert "--filters=64" in saved


def test_sigkill_then_restart_ends_where_the_uninterrupted_run_ends(tmp_path):
    """Killed after its first checkpoint, the same command restarted ends at the planned step with the state the
    uninterrupted run reaches (on the narrow networks: what is tested is the process and its files, not the
    model). test_loop.py shows in-process that a resume is bit-exact; across processes
    oneDNN may sum in another order (measured: weight differences about 1e-5 between two runs of one command),
    so each network's weights are compared relative to what its last step changed: a resume that replays other
    data, dropout masks or pool draws moves the weights as much as a step does (relative difference near 1)."""
    plan = ["--epochs=2", "--save_every_steps=1", "--keep_checkpoints=2"]
    uninterrupted, killed = str(tmp_path / "uninterrupted"), str(tmp_path / "killed")
    result = narrow_train(uninterrupted, *plan)
    assert result.returncode == 0, result.stderr[-3000:]
    args = [sys.executable, os.path.join(ROOT, "train.py"), f"--logdir={killed}", *NARROW, *PLAN, *plan]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = os.path.join(killed, "checkpoints", "checkpoint")
    deadline = time.monotonic() + 600
    while not os.path.exists(index) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert checkpoint_step(killed) == 1
    result = narrow_train(killed, *plan)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at step 1" in result.stderr and checkpoint_step(killed) == 2

    checkpoints = os.path.join(uninterrupted, "checkpoints")
    before, after = (checkpoint_state(os.path.join(checkpoints, f"ckpt-{step}")) for step in (1, 2))
    resumed = checkpoint_state(tf.train.latest_checkpoint(os.path.join(killed, "checkpoints")))
    assert sorted(resumed) == sorted(after)
    floats = {name for name in after if np.issubdtype(after[name].dtype, np.floating)}
    assert [name for name in after if name not in floats and not np.array_equal(after[name], resumed[name])] == []
    for network in ("generator_g", "generator_f", "discriminator_x", "discriminator_y"):
        names = [name for name in floats if name.startswith(f"optimizer_{network}/_trainable_variables/")]
        step_change = np.sqrt(sum(np.sum((after[n] - before[n]) ** 2) for n in names))
        difference = np.sqrt(sum(np.sum((after[n] - resumed[n]) ** 2) for n in names))
        assert step_change > 0 and difference / step_change < 0.05, (network, difference, step_change)
    for pool in ("pool_a", "pool_b"):  # the same fakes, to run-to-run noise (< 0.05; 1.3 with a broken resume)
        name = f"{pool}/images/.ATTRIBUTES/VARIABLE_VALUE"
        assert np.abs(after[name] - resumed[name]).max() < 0.05


def test_sigterm_saves_and_exits_143(tmp_path):
    logdir = str(tmp_path)
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), f"--logdir={logdir}", "--epochs=1",
                                "--steps_per_epoch=50", *QUICK], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # the loop has started once the first epoch is announced
        if "epoch 1/1" in line:
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=600) == 143  # 128 + SIGTERM, as shells report it
    assert "Traceback" not in rest
    step = checkpoint_step(logdir)
    assert 0 <= step < 50 and f"SIGTERM at step {step}; saved" in rest


@pytest.mark.parametrize("args, message", [(["--batch_size=0"], "FATAL Flags parsing error: flag --batch_size=0"),
                                           (["--log_every_steps=0"], "FATAL Flags parsing error"),
                                           ([f"--logdir={__file__}"], "error: --logdir=")])
def test_bad_arguments_are_one_line_errors(args, message):
    result = script("train.py", "--epochs=1", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr
