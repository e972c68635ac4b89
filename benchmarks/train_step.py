"""Times the CycleGAN train step: XLA on/off and each precision, warm-up excluded.

  python benchmarks/train_step.py --xla=false,true --precision=float32,mixed_bfloat16 --steps=10 --repeats=3
"""

import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_list("xla", ["false", "true"], "XLA settings to time.")
flags.DEFINE_list("precision", ["float32", "mixed_bfloat16"], "Precisions to time.")
flags.DEFINE_integer("steps", 10, "Timed steps per repetition.")
flags.DEFINE_integer("repeats", 3, "Repetitions (the median is reported).")
flags.DEFINE_integer("batch_size", 1, "Batch size.")
flags.DEFINE_bool("child", False, "Internal: time one configuration in this process.")
FLAGS = flags.FLAGS


def time_one(xla: bool, precision: str) -> None:
    import tensorflow as tf

    from training.config import ModelConfig
    from training.cyclegan import CycleGAN

    tf.keras.mixed_precision.set_global_policy(precision)
    model = CycleGAN(ModelConfig(precision=precision), total_steps=10**6, decay_start=10**6)
    step = model.compiled_step(xla)
    a = tf.random.uniform((FLAGS.batch_size, 256, 256, 1), -1, 1)
    b = tf.random.uniform((FLAGS.batch_size, 256, 256, 1), -1, 1)
    start = time.perf_counter()
    float(step(a, b)["generators/total"])
    compile_seconds = time.perf_counter() - start
    float(step(a, b)["generators/total"])  # second warm-up step
    per_step = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            out = step(a, b)
        float(out["generators/total"])
        per_step.append((time.perf_counter() - start) / FLAGS.steps)
    print(f"xla={xla} precision={precision} batch={FLAGS.batch_size}: first step (trace+compile) {compile_seconds:.1f} s; "
          f"{statistics.median(per_step):.3f} s/step median, {min(per_step):.3f} min over {FLAGS.repeats}x{FLAGS.steps} steps",
          flush=True)


def main(argv):
    if FLAGS.child:
        time_one(FLAGS.xla[0] == "true", FLAGS.precision[0])
        return
    for precision in FLAGS.precision:
        for xla in FLAGS.xla:  # one process per configuration: the global precision policy is process-wide
            subprocess.run([sys.executable, __file__, "--child", f"--xla={xla}", f"--precision={precision}",
                            f"--steps={FLAGS.steps}", f"--repeats={FLAGS.repeats}", f"--batch_size={FLAGS.batch_size}"],
                           check=True, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    app.run(main)
