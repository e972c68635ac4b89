"""Times one 256x256 slice through each export of export.py, and translate.py's per-volume path.

  python export.py --logdir=runs/ --output_dir=exported/ --direction=t1_to_t2
  python benchmarks/inference_speed.py --output_dir=exported/ --direction=t1_to_t2 --repeats=20

Warm-up calls are excluded; the median and the minimum over --repeats single-slice calls are reported
for the SavedModel and TFLite float32/float16. Then translate.py's own path (models/translation.py:
normalise, canvas, network, restore) runs on a phantom volume of --volume_slices slices through the
SavedModel at each --batch_sizes, reported as milliseconds per slice (median over --volume_repeats).
"""

import contextlib
import functools
import io
import os
import sys
import time
import warnings

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402

flags.DEFINE_string("output_dir", "exported/", "export.py's --output_dir.")
flags.DEFINE_enum("direction", "t1_to_t2", ["t1_to_t2", "t2_to_t1"], "Which export to time.")
flags.DEFINE_integer("repeats", 20, "Timed calls per artifact.", lower_bound=1)
flags.DEFINE_integer("warmup", 3, "Untimed calls first (tracing, allocation, caches).", lower_bound=1)
flags.DEFINE_integer("threads", os.cpu_count(), "TFLite interpreter threads (TensorFlow uses all cores).",
                     lower_bound=1)
flags.DEFINE_list("batch_sizes", ["1", "8"], "translate.py --batch_size values to time on a volume.")
flags.DEFINE_integer("volume_slices", 16, "Slices of the phantom volume timed through translate.py's path.",
                     lower_bound=1)
flags.DEFINE_integer("volume_repeats", 3, "Timed translations of the volume per batch size (after one warm-up).",
                     lower_bound=1)
FLAGS = flags.FLAGS


def seconds_per_call(call) -> tuple[float, list[float]]:
    """The first call's time (tracing, allocation, delegate set-up) and the timed calls after the warm-up."""
    first = timing.seconds(call)
    return first, timing.repeat(call, FLAGS.repeats, warmup=FLAGS.warmup - 1)


def report(name: str, load_seconds: float, timings: tuple[float, list[float]]) -> None:
    first, times = timings
    summary = timing.summarize(times)
    print(f"{name}: {summary.format('ms/slice', scale=1e3, digits=0)} over {summary.count} calls "
          f"(load {load_seconds:.1f} s, first call {first:.2f} s)", flush=True)


def main(argv):
    del argv
    import tensorflow as tf

    from data import phantom, preprocess

    print(timing.describe_cpu(), flush=True)
    t1, t2 = phantom.paired_test(1)
    source = t1[0] if FLAGS.direction == "t1_to_t2" else t2[0]
    image = preprocess.to_network(preprocess.normalize(source))[np.newaxis, ..., np.newaxis]
    raw = source.astype(np.float32) * np.float32(1000.0)

    start = time.perf_counter()
    signatures = tf.saved_model.load(os.path.join(FLAGS.output_dir, FLAGS.direction)).signatures
    load_seconds = time.perf_counter() - start
    serve, translate_raw = signatures["serving_default"], signatures["translate_raw"]
    images = tf.constant(image)
    report("SavedModel serving_default", load_seconds,
           seconds_per_call(lambda: serve(images=images)["translated"].numpy()))
    raw_tensor = tf.constant(raw)
    report("SavedModel translate_raw (raw slice, preprocessing in the graph)", load_seconds,
           seconds_per_call(lambda: translate_raw(image=raw_tensor)["translated"].numpy()))

    warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
    for suffix in ("", "_float16"):
        path = os.path.join(FLAGS.output_dir, f"{FLAGS.direction}{suffix}.tflite")
        start = time.perf_counter()
        runner = tf.lite.Interpreter(model_path=path, num_threads=FLAGS.threads).get_signature_runner("serving_default")
        load_seconds = time.perf_counter() - start
        report(f"TFLite {os.path.basename(path)} ({FLAGS.threads} threads)", load_seconds,
               seconds_per_call(functools.partial(runner, images=image)))

    from data import readers
    from models import inference, translation

    t1, t2 = phantom.paired_test(FLAGS.volume_slices)
    volume = readers.Volume("phantom", "nifti", (t1 if FLAGS.direction == "t1_to_t2" else t2) * np.float32(1000.0),
                            "phantom", {})
    generator = inference.from_saved_model(os.path.join(FLAGS.output_dir, FLAGS.direction))
    for batch_size in map(int, FLAGS.batch_sizes):
        translate = functools.partial(translation.translate_volume, generator, volume, 0.0, batch_size)
        with contextlib.redirect_stdout(io.StringIO()):  # translate_volume's progress bar
            summary = timing.summarize(timing.repeat(translate, FLAGS.volume_repeats, warmup=1))
        print(f"translate.py path, --batch_size={batch_size}: {summary.median / len(t1) * 1e3:.0f} ms/slice "
              f"median over {summary.count} translations of a {len(t1)}-slice volume", flush=True)


if __name__ == "__main__":
    app.run(main)
