"""MultiWorkerMirroredStrategy with two worker processes on this machine (TF_CONFIG naming two loopback
ports): once with train.py itself (the full-size model, one step), then on the narrow networks
(tests/narrow_train.py: train.py's command line, filters=4) for preemption and kill -9.

Every subprocess has a timeout; the workers talk over 127.0.0.1 only.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import FULL_SIZE_GROUP, ROOT, checkpoint_weight_count

pytestmark = pytest.mark.slow

RUNNER = os.path.join(ROOT, "tests", "narrow_train.py")
PLAN = ["--synthetic_subjects=6", "--synthetic_test_subjects=2", "--summary_images=1", "--log_every_steps=1",
        "--batch_size=2", "--deterministic"]
TIMEOUT = 600


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(logdir, *flags, log_dir, runner=RUNNER) -> list[subprocess.Popen]:
    ports = free_ports(2)
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                  "task": {"type": "worker", "index": index}}
        log = open(os.path.join(log_dir, f"worker{index}-{time.monotonic_ns()}.log"), "w")
        processes.append(subprocess.Popen([sys.executable, runner, f"--logdir={logdir}", *PLAN, *flags], cwd=ROOT,
                                          env={**os.environ, "TF_CONFIG": json.dumps(config)}, stdout=log,
                                          stderr=subprocess.STDOUT, text=True))
        processes[-1].log_path = log.name
    return processes


def finish(processes) -> list[tuple[int, str]]:
    """Each worker's exit code and output; kills them all when one outlives the timeout."""
    deadline = time.monotonic() + TIMEOUT
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [(process.returncode, open(process.log_path).read()) for process in processes]


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


@pytest.mark.xdist_group(FULL_SIZE_GROUP)  # not beside another full-size run (memory)
def test_two_full_size_workers_write_one_checkpoint_of_the_design(tmp_path):
    logdir = tmp_path / "run"
    results = finish(start_workers(logdir, "--epochs=1", "--steps_per_epoch=1", log_dir=tmp_path,
                                   runner=os.path.join(ROOT, "train.py")))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert sorted(os.listdir(logdir / "checkpoints")) == ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    counts = checkpoint_weight_count(str(logdir))
    assert counts == {"generator_g": 54_408_833, "generator_f": 54_408_833, "discriminator_x": 2_763_521,
                      "discriminator_y": 2_763_521}
    assert sum(counts.values()) == 114_344_708
    values = checkpoint_values(logdir)
    assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == 1
    assert values["pool_a/count/.ATTRIBUTES/VARIABLE_VALUE"] == 2  # one pool: both workers' fakes
