"""How long a checkpoint save holds up the training loop, written in the background and waited for.

  python benchmarks/checkpoint_stall.py --repeats=5

Builds the full-size CycleGAN as train.py does (114,344,708 parameters, float32), trains one step, then for each
repetition trains one more step and saves: the time until `Checkpointer.save` returns is the loop's stall. For
the background save, the time until the write is on disk and checked (`finish`) is printed too, and a train step
taken while the write runs, to show what the write costs the steps it overlaps. The first save of each kind
(which traces and allocates) is excluded. Checkpoints go to a temporary folder that is removed.
"""

import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402

flags.DEFINE_integer("repeats", 5, "Timed saves of each kind (the first, untimed one is extra).")
FLAGS = flags.FLAGS


def summary(name: str, seconds: list[float]) -> str:
    return f"{name} {timing.summarize(seconds).format()}"


def main(argv):
    import tensorflow as tf

    from training.checkpoints import Checkpointer
    from training.config import ModelConfig
    from training.cyclegan import CycleGAN

    print(timing.describe_cpu(), flush=True)
    model = CycleGAN(ModelConfig(), total_steps=1000, decay_start=500)
    images = tf.random.stateless_uniform((2, 1, 256, 256, 1), (0, 0), -1.0, 1.0)
    step = tf.function(model.train_step)
    float(step(images[0], images[1])["generators/total"])
    with tempfile.TemporaryDirectory() as folder:
        for background in (False, True):
            checkpointer = Checkpointer(model, os.path.join(folder, str(background)), max_to_keep=2,
                                        background=background)
            stalls, writes, overlapped = [], [], []
            for repeat in range(FLAGS.repeats + 1):
                float(step(images[0], images[1])["generators/total"])
                start = time.perf_counter()
                checkpointer.save()
                returned = time.perf_counter()
                if background:
                    float(step(images[0], images[1])["generators/total"])
                    stepped = time.perf_counter()
                    checkpointer.finish()
                    if repeat:
                        overlapped.append(stepped - returned)
                        writes.append(time.perf_counter() - start)
                if repeat:
                    stalls.append(returned - start)
            kind = "background" if background else "waited"
            print(summary(f"{kind} save: loop stalled", stalls), flush=True)
            if background:
                print(summary("  train step during the write", overlapped), flush=True)
                print(summary("  from save to written and checked (that step overlapping)", writes), flush=True)


if __name__ == "__main__":
    app.run(main)
