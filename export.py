r"""Exports a run's generators for serving: SavedModel, TFLite (float32, float16) and a JSON card each.

  python export.py --logdir=runs/ --output_dir=exported/
  python export.py --logdir=runs/ --output_dir=exported/ --direction=t1_to_t2 --notflite

Per direction (t1_to_t2 is generator G, t2_to_t1 is F) it writes <output_dir>/<direction>/ (a SavedModel
with the signatures serving_default and translate_raw), <direction>.tflite, <direction>_float16.tflite and
<direction>.json, after checking every artifact against the checkpoint's generator on real slices; if a
check fails it writes nothing and exits non-zero. The work is in models/exporting.py; see docs/export.md.
Synthetic images are for research and education, never diagnosis.
"""

import os
import sys
import time
import warnings

from absl import app, flags, logging

from models import exporting
from models.directions import DIRECTIONS
from models.inference import checkpoint_networks
from rundir import flagfile as run_flags

FLAGS = flags.FLAGS

flags.DEFINE_string("logdir", "runs/", "Run directory: its newest checkpoint and saved flags are exported.")
flags.DEFINE_string("checkpoint", None, "A checkpoint to export instead of the newest in --logdir, e.g. "
                    "runs/x/checkpoints/ckpt-1200 or a weights-only snapshot runs/x/weights/ckpt-1200.")
flags.DEFINE_string("output_dir", "exported/", "Where the SavedModels, .tflite files and JSON cards go (created).")
flags.DEFINE_enum("direction", "both", ["both", *DIRECTIONS], "Direction(s) to export.")
flags.DEFINE_bool("tflite", True, "Also write the float32 and float16 TFLite models.")
flags.DEFINE_bool("air_mask", True, "translate_raw sets its output to 0 where the input slice is air (the card says "
                  "which); false: the raw network output.")


def report(result: exporting.DirectionExport) -> None:
    for name, relative in result.artifacts.items():
        print(f"{result.direction} {name}: {os.path.join(FLAGS.output_dir, relative)} "
              f"({result.sizes[name] / 1e6:.1f} MB, written in {result.seconds[name]:.1f} s)")
    for name, diff in result.diffs.items():
        tolerance = exporting.TOLERANCES[name]
        print(f"{result.direction} check {name}: max |diff| {diff:.2e} (tolerance {tolerance:.0e}) "
              f"{'FAILED' if name in result.failed else 'ok'}")
    print(f"{result.direction} checked on {result.slices} slices of {result.origin}")


def main(argv):
    del argv
    # tf.lite.Interpreter works in TF 2.21 but warns that LiteRT (ai_edge_litert, not a dependency) replaces it.
    warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
    start = time.perf_counter()
    if os.path.exists(FLAGS.output_dir) and not os.path.isdir(FLAGS.output_dir):  # checked before the slow load
        sys.exit(f"error: --output_dir={FLAGS.output_dir} is a file, not a folder")
    training_flags = run_flags.load(FLAGS.logdir)
    if not training_flags:
        logging.warning("no %s in %s: the checks use the default data flags", run_flags.FLAGFILE, FLAGS.logdir)
    refusal = exporting.preprocessing_refusal(training_flags, FLAGS.logdir)
    if refusal:
        sys.exit(f"error: {refusal}")
    try:
        generators, checkpoint, step = checkpoint_networks(FLAGS.logdir, FLAGS.checkpoint)
    except (FileNotFoundError, ValueError) as error:  # no checkpoint; a damaged one (naming the newest intact)
        sys.exit(f"error: {error}")
    try:
        os.makedirs(FLAGS.output_dir, exist_ok=True)
    except OSError as error:
        sys.exit(f"error: --output_dir={FLAGS.output_dir}: cannot create the folder ({error.strerror or error})")
    directions = tuple(DIRECTIONS) if FLAGS.direction == "both" else (FLAGS.direction,)
    results = exporting.export(generators, directions, FLAGS.output_dir, FLAGS.tflite, step, checkpoint,
                               training_flags, air_mask=FLAGS.air_mask)
    for result in results:
        report(result)
    failed = [f"{result.direction} {name}" for result in results for name in result.failed]
    if failed:
        sys.exit(f"error: check failed for {', '.join(failed)}: outputs differ from the checkpoint beyond the "
                 f"tolerance (see the lines above); nothing was written to {FLAGS.output_dir}")
    print(f"exported step {step} of {checkpoint} to {FLAGS.output_dir} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
