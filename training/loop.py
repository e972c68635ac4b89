"""The training loop behind train.py, in the order it runs: setup, input, model, checkpoint, summaries,
update step, loop. Each part is a small function that tests call in-process on a narrow model.

Running `train(config, logdir)` again on the same logdir resumes from the newest checkpoint: the
learning rate, data order, augmentation, dropout and pool draws all follow from the step, so a
resumed run continues the uninterrupted one.
"""

import atexit
import dataclasses
import math
import os
import shutil
import signal
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import logging

from data import cache, datasets, pipeline, preprocess, readers
from models.directions import DIRECTIONS
from models.networks import DESIGN_FILTERS, DESIGN_LAYERS, TOTAL_PARAMS
from rundir import flagfile
from training import distribute, summaries
from training.checkpoints import CheckpointError, Checkpointer
from training.config import RESUMABLE_FLAGS, STRUCTURAL_FLAGS, TrainConfig
from training.cyclegan import NETWORKS, CycleGAN, network_air



class TrainingError(Exception):
    """A reason to stop that the user can act on; its message is one line."""


class Stopped(Exception):
    """Ctrl-C or SIGTERM stopped the run after a checkpoint; exits 128 + the signal's number, as shells do."""

    def __init__(self, signal_name: str, step: int, path: str):
        super().__init__(f"{signal_name} at step {step}; saved {path}; run the same command to resume")
        self.exit_code = 128 + signal.Signals[signal_name].value


@dataclasses.dataclass(frozen=True)
class Plan:
    """The run's length in steps, and where the learning-rate decay starts."""

    steps_per_epoch: int
    epochs: int
    decay_start: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class StopRequest:
    """While active, Ctrl-C and SIGTERM only set a flag; the loop saves and stops between steps."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._request)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _request(self, signum, frame):
        self.signal = signal.Signals(signum).name


# ---------------------------------------------------------------- setup

def flag_changes(logdir: str, config: TrainConfig) -> dict[str, tuple[str, str]]:
    """The flags that differ from the run saved in `logdir` (name -> (saved, now)).

    Raises TrainingError when a flag that is fixed for the life of a run changed: structural ones
    shape the checkpoint, the others decide what the run learns from and how.
    """
    saved = flagfile.load(logdir)
    if not saved:
        return {}
    def as_texts(flags: dict) -> dict[str, str]:
        return {name: flagfile.as_text(value) for name, value in flags.items() if value is not None}

    # A flag the run's file lacks (added to the code since) had its default.
    saved = {**as_texts(TrainConfig().as_flags()), **saved}
    now = as_texts(config.as_flags())
    changes = {name: (saved.get(name, "(unset)"), now.get(name, "(unset)"))
               for name in now.keys() | saved.keys() if saved.get(name) != now.get(name)}
    fixed = {name: change for name, change in changes.items() if name not in RESUMABLE_FLAGS}
    if fixed:
        listed = ", ".join(f"--{name}={was} (now {new})" for name, (was, new) in sorted(fixed.items()))
        kind = "checkpoints cannot" if fixed.keys() & set(STRUCTURAL_FLAGS) else "run cannot"
        raise TrainingError(f"{logdir} holds a run with {listed}; its {kind} resume with other values: use another "
                            "--logdir or the same flags")
    return changes


def configure_tensorflow(config: TrainConfig) -> tuple[tf.distribute.Strategy, bool]:
    """The distribution strategy, seeds, determinism and precision; returns the strategy and whether the step
    is compiled with XLA."""
    try:
        strategy = distribute.make_strategy(config.run.strategy, config.run.cpu_replicas)
    except ValueError as error:
        raise TrainingError(str(error)) from error
    replicas = strategy.num_replicas_in_sync
    if config.run.batch_size % replicas:
        raise TrainingError(f"--batch_size={config.run.batch_size} does not divide evenly over {replicas} replicas")
    logging.info("strategy %s, per-replica batch %d", distribute.describe(strategy), config.run.batch_size // replicas)
    tf.keras.utils.set_random_seed(config.run.seed)
    if config.run.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.mixed_precision.set_global_policy(config.model.precision)
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    return strategy, {"true": True, "false": False, "auto": on_gpu}[config.model.xla]


# ---------------------------------------------------------------- input

@dataclasses.dataclass
class TrainingData:
    slices_a: np.ndarray | cache.CachedSlices  # [N, 256, 256] T1 in [0, 1], in memory or read from --cache_dir
    slices_b: np.ndarray | cache.CachedSlices  # [M, 256, 256] T2 in [0, 1]
    samples: list  # (T1, T2) slices shown in TensorBoard each epoch


def spread(count: int, length: int) -> list[int]:
    """Up to `count` indices spread evenly through `length` slices: a volume's middle shows its anatomy (the
    ventricles), its first slices only the cerebellum or the skull cap."""
    return sorted({int(i) for i in np.rint(np.linspace(0, length - 1, count + 2)[1:-1])}) if count and length else []


def spread_out(items: list, count: int) -> list:
    return [items[i] for i in spread(count, len(items))]


def load_data(config: TrainConfig) -> TrainingData:
    """The training slices of both domains, and the fixed summary samples (test pairs when there are any)."""
    spec, count = config.data, config.run.summary_images
    try:
        if spec.cache_dir:
            slices_a, slices_b, _ = cache.build_or_open(spec, spec.cache_dir)
            fallback_samples = lambda: [(slices_a.slice(i), slices_b.slice(i))  # noqa: E731
                                        for i in spread(count, min(len(slices_a), len(slices_b)))]
        else:
            refusal = cache.memory_refusal(spec)
            if refusal:
                raise TrainingError(refusal)
            train_a, train_b = datasets.training_slices(spec)
            slices_a, slices_b = datasets.stack(train_a), datasets.stack(train_b)
            fallback_samples = lambda: spread_out(list(zip(train_a, train_b)), count)  # noqa: E731
        try:
            samples = spread_out(datasets.test_pairs(spec), count)
        except (ValueError, readers.BadFileError):
            samples = fallback_samples()
    except (ValueError, readers.BadFileError, cache.CacheError, OSError) as error:
        raise TrainingError(" ".join(str(error).split())) from error
    logging.info("data: %d T1 and %d T2 training slices (%s%s)", len(slices_a), len(slices_b),
                 "synthetic phantoms" if spec.synthetic else "files", f", cached in {spec.cache_dir}"
                 if spec.cache_dir else "")
    return TrainingData(slices_a, slices_b, samples)


def profile_range(config: TrainConfig) -> tuple[int, int] | None:
    """--profile_steps=A,B as (A, B); a one-line error for anything else."""
    text = config.run.profile_steps
    if not text:
        return None
    try:
        first, last = (int(part) for part in text.split(","))
    except ValueError:
        raise TrainingError(f"--profile_steps={text}: give two step numbers, A,B") from None
    if not 1 <= first <= last:
        raise TrainingError(f"--profile_steps={text}: need 1 <= A <= B")
    return first, last


def make_plan(config: TrainConfig, data: TrainingData) -> Plan:
    run = config.run
    steps_per_epoch = run.steps_per_epoch or max(len(data.slices_a), len(data.slices_b)) // run.batch_size
    if steps_per_epoch < 1:
        raise TrainingError(f"fewer slices than --batch_size={run.batch_size}")
    decay_epoch = run.epochs // 2 if run.decay_epoch is None else min(run.decay_epoch, run.epochs)
    return Plan(steps_per_epoch, run.epochs, decay_epoch * steps_per_epoch)


def epoch_batches(config: TrainConfig, data: TrainingData, epoch: int, skip: int,
                  strategy: tf.distribute.Strategy | None = None):
    """The epoch's batches from global step `skip` on, split over the replicas: the same for a resumed run as
    for an uninterrupted one, and the same images whatever the replica count."""

    def dataset_for(batch_size: int, skip_batches: int):
        return pipeline.unpaired_dataset(data.slices_a, data.slices_b, batch_size, config.run.seed, config.augment,
                                         epoch, skip_batches)

    return distribute.replica_batches(dataset_for, config.run.batch_size, strategy or tf.distribute.get_strategy(),
                                      skip)


# ---------------------------------------------------------------- model

def build_model(config: TrainConfig, plan: Plan) -> tuple[CycleGAN, dict[str, int]]:
    """The CycleGAN and its parameter count per network; the design's width and depth must give TOTAL_PARAMS."""
    model = CycleGAN(config.model, plan.total_steps, plan.decay_start, config.run.seed)
    counts = {name: model.network(name).count_params() for name in NETWORKS}
    counts["total"] = sum(counts.values())
    design = config.model.filters == DESIGN_FILTERS and config.model.discriminator_layers == DESIGN_LAYERS
    if design and counts["total"] != TOTAL_PARAMS:
        raise TrainingError(f"the networks have {counts['total']:,} parameters, the design {TOTAL_PARAMS:,}: "
                            f"models/networks.py changed ({counts})")
    return model, counts


# ---------------------------------------------------------------- checkpoint

def worker_folder() -> str:
    """Where a non-chief worker writes its part of every save (TensorFlow requires all workers to save); removed
    when the process ends."""
    folder = tempfile.mkdtemp(prefix="cyclegan-worker-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def background_saves(config: TrainConfig, strategy: tf.distribute.Strategy) -> bool:
    """--background_checkpoints on a single device; distributed runs wait for each write: their resumed runs
    were not reproduced exactly with a write overlapping the next steps (a mirrored resume test)."""
    if not config.run.background_checkpoints:
        return False
    if isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
        logging.info("checkpoints are written before training goes on (--background_checkpoints applies to "
                     "single-device runs)")
        return False
    return True


def restore_or_start(checkpointer: Checkpointer) -> bool:
    """Restores the newest intact checkpoint if there is one (setting damaged ones aside); returns whether it did."""
    try:
        return checkpointer.restore_latest() is not None
    except CheckpointError as error:
        raise TrainingError(str(error)) from error


def save_checkpoint(checkpointer: Checkpointer, logdir: str) -> str:
    """Saves the state at the current step (once per step); the previous checkpoint stays intact on failure."""
    step = checkpointer.model.current_step
    if checkpointer.last_saved_step == step:
        return checkpointer.last_saved_path
    return _checked_write(checkpointer.save, step, logdir)


def finish_checkpoint(checkpointer: Checkpointer, logdir: str) -> None:
    """Waits for a background save to be on disk and verified."""
    _checked_write(checkpointer.finish, checkpointer.last_saved_step, logdir)


def save_weights_snapshot(checkpointer: Checkpointer, logdir: str) -> str:
    """A weights-only snapshot at the current step (--keep_weights_every_epochs)."""
    return _checked_write(checkpointer.save_weights, checkpointer.model.current_step, logdir)


def _checked_write(write, step: int, logdir: str) -> str:
    """`write()`, with what can go wrong (no room, a bad write, non-finite weights) as a one-line TrainingError."""
    try:
        return write()
    except CheckpointError as error:
        raise TrainingError(str(error)) from error
    except (OSError, tf.errors.OpError) as error:  # a full disk, say
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TrainingError(f"cannot write a checkpoint at step {step} in {logdir}: {reason}") from error


# ---------------------------------------------------------------- summaries

def write_run_description(writer, config: TrainConfig, param_counts: dict[str, int]) -> None:
    with writer.as_default(step=0):
        tf.summary.text("flags", summaries.markdown_table(config.as_flags()))
        tf.summary.text("parameters", summaries.markdown_table({k: f"{v:,}" for k, v in param_counts.items()}))


def write_images(writer, model: CycleGAN, samples: list, step: int) -> None:
    """Input | translated | reconstructed grids of the fixed samples, both directions (air-masked as trained)."""
    if not samples:
        return
    for name, direction in DIRECTIONS.items():
        sources = datasets.stack([pair[direction.source_index] for pair in samples])
        images = preprocess.to_network(sources)[..., None]
        forward = model.network(direction.generator)
        back = model.network(DIRECTIONS[direction.reverse].generator)
        air = network_air(images) if model.config.train_air_mask else None
        with writer.as_default(step=step):
            tf.summary.image(name, summaries.translation_grid(forward, back, images, air))


def write_scalars(writer, step: int, step_losses: dict[str, float], lr: float, steps_per_second: float) -> None:
    with writer.as_default(step=step):
        for name, value in step_losses.items():
            tf.summary.scalar(f"loss/{name}", value)
        tf.summary.scalar("learning_rate", lr)
        tf.summary.scalar("steps_per_second", steps_per_second)


# ---------------------------------------------------------------- update step

def check_finite(step: int, step_losses: dict[str, float]) -> None:
    """Stops loudly at the first non-finite loss, naming the step and the terms; nothing is saved for it."""
    bad = [name for name, value in step_losses.items() if not math.isfinite(value)]
    if bad:
        logging.error("non-finite loss at step %d: %s", step, ", ".join(f"{n}={step_losses[n]}" for n in bad))
        raise TrainingError(f"training diverged at step {step} ({', '.join(bad)} not finite); "
                            "no checkpoint written for it")


# ---------------------------------------------------------------- loop

@dataclasses.dataclass
class Run:
    """What the loop works on; built once by `train`."""

    config: TrainConfig
    logdir: str
    plan: Plan
    data: TrainingData
    model: CycleGAN
    checkpointer: Checkpointer
    writer: object
    train_step: object
    strategy: tf.distribute.Strategy
    chief: bool  # writes the run's summaries, flags and progress (every process but non-chief workers)
    profile: tuple[int, int] | None  # steps traced by the profiler


def stop_signal(run: Run, stop: StopRequest):
    """A function giving the signal that stops the run before the next step, or None.

    Under multi_worker every worker asks every step, so a SIGTERM (a preemption) on any worker stops all of
    them at the same step; the others report it as SIGTERM too. The decision is the agreed answer alone: a
    signal that lands while the workers agree (its handler runs as soon as the collective returns) counts at
    the next step, on every worker, instead of stopping only the signalled one.
    """
    if not distribute.is_multi_worker(run.strategy):
        return lambda: stop.signal
    any_worker = distribute.any_worker(run.strategy)

    def agreed():
        mine = stop.signal
        anyone = any_worker(mine is not None)  # every worker takes part, signalled or not
        return (mine or "SIGTERM") if anyone else None

    return agreed


def all_saved(run: Run) -> None:
    """Under multi_worker, waits until every worker has saved before this one exits.

    A collective completes on one side before the other has fetched its part, so a worker that exited
    straight after the stop agreement could fail a slower peer's save; after this second collective every
    worker has saved, and a peer that is already gone is expected.
    """
    if distribute.is_multi_worker(run.strategy):
        try:
            distribute.any_worker(run.strategy)(True)
        except tf.errors.UnavailableError:
            pass


def run_epoch(run: Run, epoch: int, stop: StopRequest) -> dict[str, float]:
    """Trains from the current step to the end of `epoch`; returns the last step's losses."""
    config, plan, model = run.config, run.plan, run.model
    step = model.current_step
    # A live bar on a terminal; one line per epoch in a log file; none on non-chief workers.
    progress = tf.keras.utils.Progbar(plan.steps_per_epoch, stateful_metrics=["lr"],
                                      verbose=0 if not run.chief else 1 if sys.stdout.isatty() else 2)
    stop_requested = stop_signal(run, stop)
    done_in_epoch = step - epoch * plan.steps_per_epoch
    progress.update(done_in_epoch)
    batches = epoch_batches(config, run.data, epoch, done_in_epoch, run.strategy)
    tick, tick_step = time.perf_counter(), step
    step_losses = {}
    while step < (epoch + 1) * plan.steps_per_epoch:
        signal_name = stop_requested()
        if signal_name:
            path = save_checkpoint(run.checkpointer, run.logdir)
            run.writer.flush()
            finish_checkpoint(run.checkpointer, run.logdir)
            all_saved(run)
            raise Stopped(signal_name, step, path)
        lr = float(model.learning_rate())
        real_a, real_b = next(batches)
        if run.profile and step + 1 == run.profile[0]:
            tf.profiler.experimental.start(run.logdir)
        step_losses = {name: float(value) for name, value in run.train_step(real_a, real_b).items()}
        step += 1
        if run.profile and step == run.profile[1]:
            tf.profiler.experimental.stop()
            logging.info("profiler trace of steps %d to %d written to %s/plugins/profile", *run.profile, run.logdir)
        check_finite(step, step_losses)
        if step % config.run.log_every_steps == 0 or step == plan.total_steps:
            now = time.perf_counter()
            write_scalars(run.writer, step, step_losses, lr, (step - tick_step) / max(now - tick, 1e-9))
            tick, tick_step = now, step
        progress.update(step - epoch * plan.steps_per_epoch, [("lr", lr)] + list(step_losses.items()))
        if config.run.save_every_steps and step % config.run.save_every_steps == 0:
            save_checkpoint(run.checkpointer, run.logdir)
    return step_losses


def train(config: TrainConfig, logdir: str) -> int:
    """Trains (or resumes) the run in `logdir` to the planned step; returns the final step.

    Raises TrainingError (one line) for what the user can fix, and Stopped after Ctrl-C/SIGTERM.
    """
    # ------------------------------------------------------------ setup
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as error:
        raise TrainingError(f"--logdir={logdir}: {error.strerror or error}") from error
    changes = flag_changes(logdir, config)
    profile = profile_range(config)
    strategy, xla = configure_tensorflow(config)
    chief = distribute.is_chief(strategy)

    # ------------------------------------------------------------ input
    data = load_data(config)
    plan = make_plan(config, data)
    logging.info("%d steps per epoch, %d in all", plan.steps_per_epoch, plan.total_steps)

    # ------------------------------------------------------------ model
    with strategy.scope():  # networks, optimizers, pools and step live on every replica
        model, param_counts = build_model(config, plan)

    # ------------------------------------------------------------ checkpoint
    checkpointer = Checkpointer(model, logdir if chief else worker_folder(), max_to_keep=config.run.keep_checkpoints,
                                restore_logdir=logdir, background=background_saves(config, strategy))
    resumed = restore_or_start(checkpointer)
    start = model.current_step
    if start >= plan.total_steps:
        logging.info("nothing to do: step %d already reaches the planned %d steps", start, plan.total_steps)
        return start
    if changes:
        logging.warning("resuming with %s", ", ".join(f"--{n}={new} (was {was})" for n, (was, new) in
                                                      sorted(changes.items())))
    if chief:
        if changes:
            flagfile.record_changes(logdir, start, changes)
        flagfile.save(logdir, config.as_flags())

    # ------------------------------------------------------------ summaries
    writer = tf.summary.create_file_writer(logdir) if chief else tf.summary.create_noop_writer()
    if not resumed:
        write_run_description(writer, config, param_counts)

    # ------------------------------------------------------------ update step
    train_step = model.compiled_step(xla, strategy)
    logging.info("step %s XLA, precision %s, %s parameters", "with" if xla else "without", config.model.precision,
                 f"{param_counts['total']:,}")
    run = Run(config, logdir, plan, data, model, checkpointer, writer, train_step, strategy, chief,
              profile if chief else None)

    # ------------------------------------------------------------ loop
    with StopRequest() as stop:
        try:
            for epoch in range(start // plan.steps_per_epoch, plan.epochs):
                logging.info("epoch %d/%d (learning rate %.3g)", epoch + 1, plan.epochs,
                             float(model.learning_rate()))
                step_losses = run_epoch(run, epoch, stop)
                every = config.run.keep_weights_every_epochs
                if every and (epoch + 1) % every == 0:  # before the checkpoint: a resume after it would skip this
                    save_weights_snapshot(checkpointer, logdir)
                path = save_checkpoint(checkpointer, logdir)
                if chief:
                    write_images(writer, model, data.samples, model.current_step)
                writer.flush()
                logging.info("epoch %d done at step %d; %s | %s", epoch + 1, model.current_step, path,
                             " ".join(f"{name}={value:.4f}" for name, value in step_losses.items()))
        except tf.errors.UnavailableError as error:  # multi_worker: a peer died (kill -9, a lost host)
            reason = str(error).strip().splitlines()[0]
            raise TrainingError(f"a worker stopped responding after step {model.current_step} ({reason}); rerun "
                                "every worker's command to resume from the newest checkpoint") from error
    writer.close()
    finish_checkpoint(checkpointer, logdir)
    logging.info("finished: %d steps in %s", model.current_step, logdir)
    return model.current_step
