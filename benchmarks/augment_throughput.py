"""Augmented 256x256 slices per second through a tf.data pipeline shaped like the training one.

Pinned to --cores CPUs (before TensorFlow starts, so its thread pools are sized
to match). Each configuration is warmed up (tracing, autotuning, buffers
filling), then timed over --repeats runs of --slices slices; the median and
minimum rate are printed. Slices are batched before Python sees them so the
per-element iterator overhead is not what gets measured.

    python benchmarks/augment_throughput.py --cores 2
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGURATIONS = {
    "none (pipeline only)": dict(jitter=False, flip=False),
    "default (jitter + flip)": dict(),
    "all (jitter, flip, rotate 10, scale 0.1, gamma 0.3, bias 0.2)": dict(
        rotate_degrees=10.0, scale=0.1, gamma=0.3, bias_field=0.2
    ),
}


def head_slices(count: int, rng):
    """Textured discs on a zero background: augmentation cost does not depend on anatomy, only on shape."""
    import numpy as np

    axis = np.arange(256) - 127.5
    radius = np.hypot(axis[:, None], axis[None, :] * 1.2)
    inside = radius < 100
    return np.stack([(inside * rng.uniform(0.2, 1.0, (256, 256)))[..., None] for _ in range(count)]).astype(
        np.float32
    )


def throughput(dataset, batch_size: int, slices: int, warmup: int, repeats: int) -> list[float]:
    iterator = iter(dataset)
    for _ in range(warmup // batch_size):
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(slices // batch_size):
            next(iterator)
        rates.append(slices // batch_size * batch_size / (time.perf_counter() - start))
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--slices", type=int, default=2048, help="slices per timed run")
    parser.add_argument("--warmup", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from data.augment import AugmentOptions, augment

    images = head_slices(32, np.random.default_rng(0))
    print(f"CPUs: {sorted(os.sched_getaffinity(0))}, TensorFlow {tf.__version__}")
    for name, overrides in CONFIGURATIONS.items():
        options = AugmentOptions(**overrides)
        slices = tf.data.Dataset.from_tensor_slices(images).cache().repeat()
        seeds = tf.data.Dataset.random(seed=0).batch(2)
        dataset = (
            tf.data.Dataset.zip(slices, seeds)
            .map(lambda image, seed: augment(image, options, seed), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(args.batch)
            .prefetch(tf.data.AUTOTUNE)
        )
        rates = throughput(dataset, args.batch, args.slices, args.warmup, args.repeats)
        print(f"{name:65s} median {statistics.median(rates):7.0f} slices/s   min {min(rates):7.0f} slices/s")


if __name__ == "__main__":
    main()
