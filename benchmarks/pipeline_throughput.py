"""Augmented 256x256 slices per second delivered by the training input pipeline (data/pipeline.py).

Counts both domains' slices. Warm-up (tracing, autotuning, buffers filling) is
excluded; the median and minimum of --repeats timed runs are printed.

    python benchmarks/pipeline_throughput.py --batch_size=1,8
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402

flags.DEFINE_list("batch_size", ["1", "8"], "Batch sizes to time (1 is the training default).")
flags.DEFINE_integer("slices", 2048, "Slices (both domains) per timed run.", lower_bound=2)
flags.DEFINE_integer("warmup", 512, "Slices drawn before timing.", lower_bound=0)
flags.DEFINE_integer("repeats", 5, "Timed runs.", lower_bound=1)
FLAGS = flags.FLAGS

CONFIGURATIONS = {
    "no augmentation": dict(jitter=False, flip=False),
    "default (jitter, flip)": dict(),
    "all (jitter, flip, rotate 10, scale 0.1, gamma 0.3, bias 0.2)": dict(
        rotate_degrees=10.0, scale=0.1, gamma=0.3, bias_field=0.2
    ),
}


def main(argv):
    del argv
    import tensorflow as tf

    import numpy as np

    from data import phantom, pipeline, preprocess
    from data.augment import AugmentOptions

    t1, t2 = phantom.unpaired_train(32, seed=0)
    slices_a = np.stack([preprocess.normalize(image) for image in t1])
    slices_b = np.stack([preprocess.normalize(image) for image in t2])
    print(f"{timing.describe_cpu()}; TensorFlow {tf.__version__}")
    for batch_size in map(int, FLAGS.batch_size):
        for name, overrides in CONFIGURATIONS.items():
            dataset = pipeline.unpaired_dataset(slices_a, slices_b, batch_size, seed=0,
                                                options=AugmentOptions(**overrides))
            iterator = iter(dataset)
            per_run = FLAGS.slices // (2 * batch_size)
            for _ in range(FLAGS.warmup // (2 * batch_size)):
                next(iterator)

            def run(iterator=iterator, per_run=per_run):
                for _ in range(per_run):
                    next(iterator)

            rates = timing.summarize([per_run * 2 * batch_size / seconds
                                      for seconds in timing.repeat(run, FLAGS.repeats)])
            print(f"batch {batch_size}, {name:62s} median {rates.median:6.0f} slices/s, "
                  f"min {rates.minimum:6.0f}", flush=True)


if __name__ == "__main__":
    app.run(main)
