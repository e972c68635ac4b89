"""Times the CycleGAN train step: XLA on/off, each precision and each tf.distribute strategy, warm-up excluded.

  python benchmarks/train_step.py --xla=false,true --precision=float32,mixed_bfloat16 --steps=10 --repeats=3
  python benchmarks/train_step.py --strategy=one_device,mirrored --cpu_replicas=2 --batch_size=2 --xla=false \
      --precision=float32

`--batch_size` is the global batch, as in train.py. `mirrored` splits the CPU into --cpu_replicas logical
devices (train.py --strategy=mirrored --cpu_replicas=N): on a CPU this measures the distributed step's
overhead, not a speed-up, since the replicas share the same cores. Steps/s and images/s are
printed for each configuration, each in its own process.
"""

import os
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402

flags.DEFINE_list("xla", ["false", "true"], "XLA settings to time.")
flags.DEFINE_list("precision", ["float32", "mixed_bfloat16"], "Precisions to time.")
flags.DEFINE_integer("steps", 10, "Timed steps per repetition.")
flags.DEFINE_integer("repeats", 3, "Repetitions (the median is reported).")
flags.DEFINE_integer("batch_size", 1, "Global batch size (divided over the replicas).")
flags.DEFINE_list("strategy", ["one_device"], "tf.distribute strategies to time: one_device, mirrored.")
flags.DEFINE_integer("cpu_replicas", 2, "Logical CPU devices for `mirrored`.")
flags.DEFINE_bool("child", False, "Internal: time one configuration in this process.")
FLAGS = flags.FLAGS


def time_one(xla: bool, precision: str, strategy_name: str) -> None:
    import tensorflow as tf

    from training import distribute
    from training.config import ModelConfig
    from training.cyclegan import CycleGAN

    strategy = distribute.make_strategy(strategy_name, FLAGS.cpu_replicas if strategy_name == "mirrored" else 1)
    replicas = strategy.num_replicas_in_sync
    if FLAGS.batch_size % replicas:
        raise app.UsageError(f"--batch_size={FLAGS.batch_size} does not divide over {replicas} replicas")
    tf.keras.mixed_precision.set_global_policy(precision)
    with strategy.scope():
        model = CycleGAN(ModelConfig(precision=precision), total_steps=10**6, decay_start=10**6)
    step = model.compiled_step(xla, strategy)
    images = tf.data.Dataset.from_tensors(tuple(tf.random.uniform((FLAGS.batch_size, 256, 256, 1), -1, 1, seed=s)
                                                for s in (1, 2))).repeat()
    a, b = next(iter(strategy.experimental_distribute_dataset(images)))  # each replica's part of the batch

    def one_step():
        float(step(a, b)["generators/total"])

    def steps():  # FLAGS.steps steps, read back once at the end
        for _ in range(FLAGS.steps):
            out = step(a, b)
        float(out["generators/total"])

    compile_seconds = timing.seconds(one_step)
    one_step()  # second warm-up step
    per_step = timing.summarize([seconds / FLAGS.steps for seconds in timing.repeat(steps, FLAGS.repeats)])
    median = per_step.median
    print(f"strategy={strategy_name} ({replicas} replica(s)) xla={xla} precision={precision} batch={FLAGS.batch_size}: "
          f"first step (trace+compile) {compile_seconds:.1f} s; {per_step.format('s/step')} "
          f"over {FLAGS.repeats}x{FLAGS.steps} steps; {1 / median:.3f} steps/s, {FLAGS.batch_size / median:.2f} images/s",
          flush=True)


def main(argv):
    if FLAGS.child:
        time_one(FLAGS.xla[0] == "true", FLAGS.precision[0], FLAGS.strategy[0])
        return
    print(timing.describe_cpu(), flush=True)
    for strategy in FLAGS.strategy:
        for precision in FLAGS.precision:
            for xla in FLAGS.xla:  # one process per configuration: precision policy and devices are process-wide
                subprocess.run([sys.executable, __file__, "--child", f"--xla={xla}", f"--precision={precision}",
                                f"--strategy={strategy}", f"--cpu_replicas={FLAGS.cpu_replicas}",
                                f"--steps={FLAGS.steps}", f"--repeats={FLAGS.repeats}",
                                f"--batch_size={FLAGS.batch_size}"], check=True, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    app.run(main)
