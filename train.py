r"""Trains the T1 <-> T2 CycleGAN with a hand-written GradientTape loop.

  python train.py --epochs=200 --logdir=runs/     # built-in synthetic data
  tensorboard --logdir runs

Running the same command again resumes from the newest checkpoint in --logdir.
"""

import math
import os
import signal
import sys
import time

from absl import app, flags, logging

import data.flags

FLAGS = flags.FLAGS
data.flags.define_dataset_flags()
data.flags.define_augment_flags()

flags.DEFINE_string("logdir", "runs/", "Run directory: checkpoints, TensorBoard events and the saved flags.")
flags.DEFINE_integer("epochs", 200, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("decay_epoch", None, "Epoch at which the linear learning-rate decay to 0 starts (default: epochs // 2).",
                     lower_bound=0)
flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: the larger domain's slice count // batch_size).",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 1, "Images per domain per step.", lower_bound=1)
flags.DEFINE_float("lr", 2e-4, "Adam learning rate of all four networks.", lower_bound=0.0)
flags.DEFINE_float("beta_1", 0.5, "Adam beta_1.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("lambda_cycle", 10.0, "Weight of the cycle-consistency L1 loss.", lower_bound=0.0)
flags.DEFINE_float("lambda_identity", 0.5, "Identity L1 weight, as a fraction of lambda_cycle (0 disables).", lower_bound=0.0)
flags.DEFINE_enum("gan_loss", "lsgan", ["lsgan", "bce"], "Adversarial loss: least squares or binary cross-entropy with logits.")
flags.DEFINE_integer("pool_size", 50, "Image-history pool size per domain (0 disables).", lower_bound=0)
flags.DEFINE_enum("xla", "auto", ["auto", "true", "false"], "Compile the step with XLA; auto: on GPU only (measured slower on CPU, see BUILD.md).")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"], "Compute precision (mixed_float16 uses loss scaling).")
flags.DEFINE_integer("seed", 0, "Seed for weights, data order, augmentation and pools.", lower_bound=0)
flags.DEFINE_bool("deterministic", False, "Reproducible runs: TensorFlow op determinism (see README for how exact).")
flags.DEFINE_integer("save_every_steps", None, "Also checkpoint every this many steps (always at each epoch's end and on "
                     "Ctrl-C/SIGTERM).", lower_bound=1)
flags.DEFINE_integer("keep_checkpoints", 3, "Newest checkpoints kept (each holds the networks, optimizers and pools: "
                     "about 1.4 GB).", lower_bound=1)
flags.DEFINE_integer("log_every_steps", 10, "Write scalar summaries every this many steps.", lower_bound=1)
flags.DEFINE_integer("summary_images", 3, "Fixed samples shown as translation grids in TensorBoard each epoch (0: none).",
                     lower_bound=0)

# Flags that describe the run; saved to <logdir>/flags.txt and reused by evaluate.py and export.py.
RUN_FLAGS = (
    "epochs", "decay_epoch", "steps_per_epoch", "batch_size", "lr", "beta_1", "lambda_cycle", "lambda_identity",
    "gan_loss", "pool_size", "xla", "precision", "seed", "deterministic", "save_every_steps", "keep_checkpoints",
    "log_every_steps", "summary_images",
) + data.flags.DATASET_FLAGS + data.flags.AUGMENT_FLAGS
# Flags that shape the checkpoint's variables: a run cannot resume with other values.
STRUCTURAL_FLAGS = ("precision", "pool_size")


class StopRequest:
    """Ctrl-C and SIGTERM only set a flag; the loop stops after the current step, its losses checked."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._request)

    def _request(self, signum, frame):
        self.signal = signal.Signals(signum).name


def main(argv):
    del argv
    import tensorflow as tf

    from data import datasets, pipeline, preprocess, readers
    from models.networks import TOTAL_PARAMS
    from rundir import flagfile as run_flags
    from training import summaries
    from training.checkpoints import Checkpointer, NonFiniteWeightsError
    from training.cyclegan import NETWORKS, CycleGAN, Hyperparameters

    # ---------------------------------------------------------------- setup
    try:
        os.makedirs(FLAGS.logdir, exist_ok=True)
    except OSError as e:
        sys.exit(f"error: --logdir={FLAGS.logdir}: {e.strerror or e}")
    saved = run_flags.load(FLAGS.logdir)
    changed = [f"--{name}={saved[name]} (now {FLAGS[name].value})" for name in STRUCTURAL_FLAGS
               if name in saved and saved[name] != str(FLAGS[name].value)]
    if changed:
        sys.exit(f"error: {FLAGS.logdir} holds a run with {', '.join(changed)}; its checkpoints cannot resume with "
                 "other values: use another --logdir or the same flags")
    tf.keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.mixed_precision.set_global_policy(FLAGS.precision)
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    xla = {"true": True, "false": False, "auto": on_gpu}[FLAGS.xla]

    # ---------------------------------------------------------------- input
    spec = datasets.DataSpec.from_mapping(FLAGS)
    try:
        train_a, train_b = datasets.training_slices(spec)
        try:
            samples = datasets.test_pairs(spec)[: FLAGS.summary_images]
        except (ValueError, readers.BadFileError):
            samples = list(zip(train_a, train_b))[: FLAGS.summary_images]
    except (ValueError, readers.BadFileError) as e:
        logging.error("%s", e)
        sys.exit(f"error: {e}")
    steps_per_epoch = FLAGS.steps_per_epoch or max(len(train_a), len(train_b)) // FLAGS.batch_size
    if steps_per_epoch < 1:
        sys.exit(f"error: fewer slices than --batch_size={FLAGS.batch_size}")
    decay_epoch = FLAGS.epochs // 2 if FLAGS.decay_epoch is None else FLAGS.decay_epoch
    total_steps = FLAGS.epochs * steps_per_epoch
    stack_a, stack_b = datasets.stack(train_a), datasets.stack(train_b)
    augment = pipeline.augment_options(FLAGS)

    def batches(epoch: int, skip: int):
        """The epoch's batches from `skip` on: the same for a resumed run as for an uninterrupted one."""
        return iter(pipeline.unpaired_dataset(stack_a, stack_b, FLAGS.batch_size, FLAGS.seed, augment, epoch, skip))

    logging.info("data: %d T1 and %d T2 training slices (%s); %d steps per epoch",
                 len(train_a), len(train_b), "synthetic phantoms" if spec.synthetic else "files", steps_per_epoch)

    # ---------------------------------------------------------------- model
    hp = Hyperparameters(
        lr=FLAGS.lr, beta_1=FLAGS.beta_1, lambda_cycle=FLAGS.lambda_cycle, lambda_identity=FLAGS.lambda_identity,
        gan_loss=FLAGS.gan_loss, pool_size=FLAGS.pool_size, total_steps=total_steps,
        decay_start=min(decay_epoch, FLAGS.epochs) * steps_per_epoch, precision=FLAGS.precision, seed=FLAGS.seed,
    )
    model = CycleGAN(hp)
    param_counts = {name: model.network(name).count_params() for name in NETWORKS}
    param_counts["total"] = sum(param_counts.values())
    assert param_counts["total"] == TOTAL_PARAMS, param_counts

    # ---------------------------------------------------------------- checkpoint
    checkpointer = Checkpointer(model, FLAGS.logdir, max_to_keep=FLAGS.keep_checkpoints)
    try:
        resumed = checkpointer.restore_latest()
    except (tf.errors.OpError, ValueError, AssertionError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.exit(f"error: cannot resume from {checkpointer.manager.latest_checkpoint}: {reason}")
    start = int(model.step)
    if start >= total_steps:
        logging.info("nothing to do: step %d already reaches the planned %d steps", start, total_steps)
        return
    run_flags.save(FLAGS.logdir, {name: FLAGS[name].value for name in RUN_FLAGS})

    # ---------------------------------------------------------------- summaries
    writer = tf.summary.create_file_writer(FLAGS.logdir)
    if not resumed:
        with writer.as_default(step=0):
            tf.summary.text("flags", summaries.markdown_table({n: FLAGS[n].value for n in RUN_FLAGS}))
            tf.summary.text("parameters", summaries.markdown_table({k: f"{v:,}" for k, v in param_counts.items()}))

    def write_images(step):
        if not samples:
            return
        sample_a = preprocess.to_network(datasets.stack([a for a, _ in samples]))[..., None]
        sample_b = preprocess.to_network(datasets.stack([b for _, b in samples]))[..., None]
        with writer.as_default(step=step):
            tf.summary.image("t1_to_t2", summaries.translation_grid(model.generator_g, model.generator_f, sample_a))
            tf.summary.image("t2_to_t1", summaries.translation_grid(model.generator_f, model.generator_g, sample_b))

    def save():
        try:
            return checkpointer.save()
        except NonFiniteWeightsError as e:
            sys.exit(f"error: {e}")
        except (OSError, tf.errors.OpError) as e:  # a full disk, say; the previous checkpoint is intact
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            sys.exit(f"error: cannot write a checkpoint at step {int(model.step)} in {FLAGS.logdir}: {reason}")

    # ---------------------------------------------------------------- update step
    train_step = model.compiled_step(xla)
    logging.info("step %s XLA, precision %s, %s parameters", "with" if xla else "without", FLAGS.precision,
                 f"{param_counts['total']:,}")

    # ---------------------------------------------------------------- loop
    stop = StopRequest()
    step = start
    for epoch in range(start // steps_per_epoch, FLAGS.epochs):
        logging.info("epoch %d/%d (learning rate %.3g)", epoch + 1, FLAGS.epochs, float(model.learning_rate()))
        # A live bar on a terminal; one line per epoch in a log file.
        progress = tf.keras.utils.Progbar(steps_per_epoch, stateful_metrics=["lr"],
                                          verbose=1 if sys.stdout.isatty() else 2)
        done_in_epoch = step - epoch * steps_per_epoch
        progress.update(done_in_epoch)
        epoch_batches = batches(epoch, done_in_epoch)
        tick, tick_step = time.perf_counter(), step
        while step < (epoch + 1) * steps_per_epoch:
            if stop.signal:
                path = save()
                writer.flush()
                logging.warning("%s at step %d; saved %s; run the same command to resume", stop.signal, step, path)
                sys.exit(130)
            lr = float(model.learning_rate())
            real_a, real_b = next(epoch_batches)
            step_losses = {name: float(value) for name, value in train_step(real_a, real_b).items()}
            step += 1
            bad = [name for name, value in step_losses.items() if not math.isfinite(value)]
            if bad:
                logging.error("non-finite loss at step %d: %s", step,
                              ", ".join(f"{name}={step_losses[name]}" for name in bad))
                sys.exit(f"error: training diverged at step {step} ({', '.join(bad)} not finite); "
                         "no checkpoint written for it")
            if step % FLAGS.log_every_steps == 0 or step == total_steps:
                now = time.perf_counter()
                with writer.as_default(step=step):
                    for name, value in step_losses.items():
                        tf.summary.scalar(f"loss/{name}", value)
                    tf.summary.scalar("learning_rate", lr)
                    tf.summary.scalar("steps_per_second", (step - tick_step) / max(now - tick, 1e-9))
                tick, tick_step = now, step
            progress.update(step - epoch * steps_per_epoch, [("lr", lr)] + list(step_losses.items()))
            if FLAGS.save_every_steps and step % FLAGS.save_every_steps == 0:
                save()
        path = save()
        write_images(step)
        writer.flush()
        logging.info("epoch %d done at step %d; %s | %s", epoch + 1, step, path,
                     " ".join(f"{name}={value:.4f}" for name, value in step_losses.items()))
    logging.info("finished: %d steps in %s", step, FLAGS.logdir)


if __name__ == "__main__":
    app.run(main)
