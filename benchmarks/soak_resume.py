r"""Soak test of resume: a run saving every step, killed with SIGKILL at random moments, then finished.

  python benchmarks/soak_resume.py --kills=20 --seed=0

Each training process is a subprocess driving training/loop.py on the narrow networks (filters=4, as
tests/test_loop.py) and small synthetic data, so many kills fit in minutes. The script:

1. trains an uninterrupted reference run in a subprocess;
2. starts the same run in another folder and kills it with SIGKILL --kills times in a row: a quarter of the
   kills at a random moment of start-up (uniform up to the reference's time to its first checkpoint), the
   others 1 to 4 steps after the resumed one, at a random point of a step (uniform up to the reference's
   time per step), so they land between steps and in the middle of writing a checkpoint; never in the last
   five steps, so the run is still unfinished when the kills end; after each kill every checkpoint in the
   folder must pass the file checks (rundir/checkpoints.damage) and restore on the next start without
   being set aside;
3. finishes it and compares: the planned final step, every tensor of the final checkpoint equal to the
   reference's (both run with TF_ENABLE_ONEDNN_OPTS=0 and --deterministic, so equality is the tolerance;
   each network's difference relative to its last step's change is printed too), and that the folder holds
   only complete checkpoints and nothing set aside.

Exits 0 when everything holds, 1 otherwise. Not part of the test suite: a run takes minutes.
"""

import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_integer("kills", 20, "SIGKILLs before the run is allowed to finish.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
flags.DEFINE_integer("epochs", 3, "Epochs of the run.", lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", 20, "Steps per epoch.", lower_bound=1)
flags.DEFINE_string("workdir", None, "Where the two runs go (default: a new temporary folder, kept).")
flags.DEFINE_string("train_logdir", None, "Internal: train this logdir in this process (the child mode).")

FILTERS = 4
STARTUP_KILLS = 0.25  # share of kills during start-up (imports, data, tracing) rather than training


def run_flags() -> dict:
    return dict(filters=FILTERS, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch, decay_epoch=1,
                save_every_steps=1, keep_checkpoints=3, deterministic=True, synthetic_subjects=6,
                synthetic_test_subjects=2, summary_images=1, log_every_steps=1)


def train_here(logdir: str) -> None:
    from training import loop
    from training.config import TrainConfig

    try:
        loop.train(TrainConfig.from_values(run_flags()), logdir)
    except loop.TrainingError as error:
        sys.exit(f"error: {error}")


def start(logdir: str) -> subprocess.Popen:
    args = [sys.executable, os.path.abspath(__file__), f"--train_logdir={logdir}", f"--epochs={FLAGS.epochs}",
            f"--steps_per_epoch={FLAGS.steps_per_epoch}"]
    # oneDNN's CPU kernels may sum in another order in another process (README, "Reproducibility"); over
    # tens of GAN steps that noise grows past any per-step tolerance, so the soak turns them off and
    # demands equality.
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    with open(logdir + ".log", "a") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def state(path: str):
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(path)
    return {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


def complete_checkpoints(logdir: str) -> tuple[list[str], list[str]]:
    """(checkpoints, problems): every checkpoint in the folder, and what is not whole or was set aside."""
    from rundir.checkpoints import checkpoint_dir, checkpoints_newest_first, damage, set_aside_files

    directory = checkpoint_dir(logdir)
    found = checkpoints_newest_first(directory)
    problems = [f"{path}: {damage(path)}" for path in found if damage(path)]
    problems += [f"set aside: {name}" for name in set_aside_files(directory)]
    return found, problems


def compare(reference_dir: str, soaked_dir: str, planned: int) -> list[str]:
    """What differs between the final checkpoints (empty: every tensor equal); prints each network's weight
    difference relative to its last step's change, the measure of tests/test_train_script.py."""
    import numpy as np

    from rundir.checkpoints import checkpoint_dir

    before = state(os.path.join(checkpoint_dir(reference_dir), f"ckpt-{planned - 1}"))
    after = state(os.path.join(checkpoint_dir(reference_dir), f"ckpt-{planned}"))
    soaked = state(os.path.join(checkpoint_dir(soaked_dir), f"ckpt-{planned}"))
    failures = []
    if sorted(after) != sorted(soaked):
        return [f"other variables: {sorted(set(after) ^ set(soaked))[:5]}"]
    floats = {name for name in after if np.issubdtype(after[name].dtype, np.floating)}
    failures += [f"{name} differs" for name in after if not np.array_equal(after[name], soaked[name])][:5]
    for network in ("generator_g", "generator_f", "discriminator_x", "discriminator_y"):
        names = [name for name in floats if name.startswith(f"optimizer_{network}/_trainable_variables/")]
        step_change = np.sqrt(sum(np.sum((after[n] - before[n]) ** 2) for n in names))
        difference = np.sqrt(sum(np.sum((after[n] - soaked[n]) ** 2) for n in names))
        print(f"{network}: difference {difference:.3g}, last step's change {step_change:.3g}, "
              f"ratio {difference / step_change:.3g}")
    return failures


def newest_step(logdir: str) -> int:
    from rundir.checkpoints import checkpoint_dir, checkpoint_step, checkpoints_newest_first

    found = checkpoints_newest_first(checkpoint_dir(logdir))
    return checkpoint_step(found[0]) if found else 0


def time_kill(process: subprocess.Popen, delay: float, sooner=lambda: False) -> float:
    """SIGKILLs `process` after `delay` seconds, or as soon as `sooner()`, unless it ended before; returns the
    seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < delay and not sooner() and process.poll() is None:
        time.sleep(0.01)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return time.monotonic() - began


def timed_reference(logdir: str, planned: int) -> tuple[float, float] | None:
    """Runs the reference; (seconds to its first checkpoint: start-up and tracing, seconds per later step)."""
    began = time.monotonic()
    process, first = start(logdir), None
    while process.poll() is None:
        if first is None and newest_step(logdir) > 0:
            first = time.monotonic() - began
        time.sleep(0.05)
    if process.returncode != 0 or first is None:
        return None
    return first, (time.monotonic() - began - first) / max(planned - 1, 1)


def soak() -> int:
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="soak_resume_")
    os.makedirs(workdir, exist_ok=True)
    reference, soaked = os.path.join(workdir, "reference"), os.path.join(workdir, "soaked")
    planned = FLAGS.epochs * FLAGS.steps_per_epoch
    began = time.monotonic()
    timing = timed_reference(reference, planned)
    if timing is None:
        print(f"the reference run failed: see {reference}.log")
        return 1
    startup, per_step = timing
    print(f"reference: first checkpoint after {startup:.0f} s, then {per_step:.2f} s per step; {planned} steps")
    moments = random.Random(FLAGS.seed)
    failures = []
    for kill in range(FLAGS.kills):
        process, resumed_at = start(soaked), newest_step(soaked)
        remaining = planned - resumed_at
        if moments.random() < STARTUP_KILLS or remaining < 6:
            waited = time_kill(process, moments.uniform(0, startup), lambda: newest_step(soaked) > resumed_at)
            when = f"in start-up after {waited:.1f} s"
        else:  # a few steps on, at a random point of a step: between steps or in the middle of writing a checkpoint
            target = min(resumed_at + moments.randint(1, 4), planned - 5)
            while newest_step(soaked) < target and process.poll() is None:
                time.sleep(0.01)
            when = f"{time_kill(process, moments.uniform(0, per_step)):.2f} s after step {target} was saved"
        if process.returncode != -signal.SIGKILL:
            failures.append(f"kill {kill + 1}: the run ended (exit {process.returncode}) before it was killed")
            break
        found, problems = complete_checkpoints(soaked)
        print(f"kill {kill + 1}: {when}, from step {resumed_at} to {newest_step(soaked)}, {len(found)} checkpoints "
              f"in the folder{', PROBLEMS: ' + '; '.join(problems) if problems else ''}")
        failures += problems
    if start(soaked).wait() != 0:
        failures.append(f"the finishing run failed: see {soaked}.log")
    else:
        found, problems = complete_checkpoints(soaked)
        failures += problems
        step = newest_step(soaked)
        print(f"finished at step {step} of {planned}; {len(found)} complete checkpoints, {len(problems)} problems")
        failures += [] if step == planned else [f"ended at step {step}, planned {planned}"]
        failures += compare(reference, soaked, planned) if step == planned else []
    print(f"{'PASSED' if not failures else 'FAILED: ' + '; '.join(failures)} ({time.monotonic() - began:.0f} s, "
          f"runs in {workdir})")
    return 0 if not failures else 1


def main(argv):
    del argv
    if FLAGS.train_logdir:
        train_here(FLAGS.train_logdir)
        return 0
    return soak()


if __name__ == "__main__":
    app.run(main)
