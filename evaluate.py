r"""Evaluates a trained run on paired test slices, beside the identity baseline.

  python evaluate.py --metrics ssim,psnr --logdir=runs/      # the run's own test split
  python evaluate.py --test_a=t1/ --test_b=t2/ --save_predictions

Targets are the normalised test slices on their original grid; predictions are the
generator's outputs mapped back to that grid. Results go to the terminal,
<output_dir>/metrics.json and metrics.csv, an example grid, and TensorBoard
scalars in <logdir>/eval at the checkpoint's step. The work is done by
evaluation.run.evaluate_run; see docs/evaluate.md.
"""

import os
import sys

from absl import app, flags

import data.flags
from evaluation import metrics, report
from data import resample
from evaluation.run import InputError, OutputDirError, evaluate_run
from models.directions import DIRECTIONS

FLAGS = flags.FLAGS
data.flags.define_dataset_flags()

flags.DEFINE_string("logdir", "runs/", "Run directory: its newest checkpoint and saved flags are used.")
flags.DEFINE_string("metrics", "ssim,psnr", f"Comma-separated metrics ({', '.join(metrics.METRICS)}); each is "
                    "reported with its foreground (_fg) variant.")
flags.DEFINE_enum("direction", "both", ["both", *DIRECTIONS], "Translation direction(s) to evaluate.")
flags.DEFINE_string("checkpoint", None, "A checkpoint to evaluate instead of the newest in --logdir, e.g. "
                    "runs/x/checkpoints/ckpt-1200 or a weights-only snapshot runs/x/weights/ckpt-1200.")
flags.DEFINE_string("output_dir", None, "Where metrics.json, metrics.csv and examples.png go (default: <logdir>/eval).")
flags.DEFINE_bool("save_predictions", False, "Also save every prediction as a 16-bit PNG on the original grid.")
flags.DEFINE_integer("batch_size", 8, "Slices per generator call.", lower_bound=1)
flags.DEFINE_integer("examples", 4, "Test pairs shown in examples.png (0: no picture).", lower_bound=0)
flags.DEFINE_enum("register", "world", list(resample.REGISTER), "Test pairs on different voxel grids: world "
                  "resamples the reference onto the source's grid by scanner coordinates; rigid adds a rigid "
                  "registration (needs the 'registration' extra); none skips them.")
flags.DEFINE_bool("air_mask", True, "Zero the model's outputs where the source is air (border-connected background); "
                  "false: the raw network output.")
flags.DEFINE_string("mask", "auto", "Pixels of the _fg metrics: auto (head mask of the target), nonzero (target > 0), "
                    "none (every pixel) or mask files (a file, folder or glob) matched to the test volumes by subject.")


def main(argv):
    del argv
    try:
        names = metrics.parse_metrics(FLAGS.metrics)
    except ValueError as e:
        sys.exit(f"error: --metrics: {e}")
    directions = tuple(DIRECTIONS) if FLAGS.direction == "both" else (FLAGS.direction,)
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.logdir, report.EVAL_DIR)
    given_data_flags = {name: FLAGS[name].value for name in data.flags.DATASET_FLAGS if FLAGS[name].present}
    try:
        evaluation = evaluate_run(FLAGS.logdir, output_dir, names, directions, given_data_flags, FLAGS.batch_size,
                                  FLAGS.examples, FLAGS.save_predictions, register=FLAGS.register,
                                  air_mask=FLAGS.air_mask, mask=FLAGS.mask, checkpoint_path=FLAGS.checkpoint)
    except OutputDirError as e:
        sys.exit(f"error: --output_dir={e}")
    except InputError as e:
        sys.exit(f"error: {e}")
    print(report.terminal_summary(evaluation))
    print(f"wrote {output_dir}")


if __name__ == "__main__":
    app.run(main)
