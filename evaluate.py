r"""Evaluates a trained run on paired test slices, beside the identity baseline.

  python evaluate.py --metrics ssim,psnr --logdir=runs/      # the run's own test split
  python evaluate.py --test_a=t1/ --test_b=t2/ --save_predictions

Targets are the normalised test slices on their original grid; predictions are the
generator's outputs mapped back to that grid. Results go to the terminal,
<output_dir>/metrics.json and metrics.csv, an example grid, and TensorBoard
scalars in <logdir>/eval at the checkpoint's step. See docs/evaluate.md.
"""

import collections
import csv
import json
import math
import os
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from PIL import Image

import data.flags
from data import datasets, preprocess, readers, writers
from evaluation import metrics
from models.directions import DIRECTIONS
from models.inference import from_checkpoint, translate_canvases
from rundir import flagfile as run_flags
from rundir.checkpoints import latest_checkpoint

FLAGS = flags.FLAGS
data.flags.define_dataset_flags()

flags.DEFINE_string("logdir", "runs/", "Run directory: its newest checkpoint and saved flags are used.")
flags.DEFINE_string("metrics", "ssim,psnr", f"Comma-separated metrics ({', '.join(metrics.METRICS)}); each is "
                    "reported with its foreground (_fg) variant.")
flags.DEFINE_enum("direction", "both", ["both", "t1_to_t2", "t2_to_t1"], "Translation direction(s) to evaluate.")
flags.DEFINE_string("output_dir", None, "Where metrics.json, metrics.csv and examples.png go (default: <logdir>/eval).")
flags.DEFINE_bool("save_predictions", False, "Also save every prediction as a 16-bit PNG on the original grid.")
flags.DEFINE_integer("batch_size", 8, "Slices per generator call.", lower_bound=1)
flags.DEFINE_integer("examples", 4, "Test pairs shown in examples.png (0: no picture).", lower_bound=0)

REVERSE = {"t1_to_t2": "t2_to_t1", "t2_to_t1": "t1_to_t2"}
CYCLE = {"t1_to_t2": "t1_cycle", "t2_to_t1": "t2_cycle"}  # T1 -> T2 -> T1 against the T1 source, and T2's
BASELINE = "baseline_identity"
# Where the test data comes from; one given on the command line replaces all the run's saved ones.
TEST_SOURCE_FLAGS = ("test_a", "test_b", "data_dir")
EVAL_DIR = "eval"
CSV_KEYS = ("direction", "subject", "source", "target", "slice")


def data_spec(logdir: str) -> datasets.DataSpec:
    """The run's saved data flags, overridden by the data flags given on this command line."""
    values = run_flags.load(logdir)
    if not values:
        logging.warning("no %s in %s: the data flags given here (or their defaults) are used", run_flags.FLAGFILE,
                        logdir)
    given = {name: FLAGS[name].value for name in data.flags.DATASET_FLAGS if FLAGS[name].present}
    if given.keys() & set(TEST_SOURCE_FLAGS):
        # Otherwise a saved --data_dir or --test_a would silently win over, or mix with, the new test data.
        values = {name: value for name, value in values.items() if name not in TEST_SOURCE_FLAGS}
    return datasets.DataSpec.from_mapping({**values, **given})


def describe(spec: datasets.DataSpec) -> str:
    """Which test data was read, in words, for the terminal and metrics.json."""
    if spec.test_a or spec.test_b:
        return f"test_a={spec.test_a} test_b={spec.test_b}"
    if spec.synthetic:
        return f"synthetic phantoms: {spec.synthetic_test_subjects} test subjects, seed {spec.synthetic_seed}"
    return f"data_dir={spec.data_dir} (layout {spec.layout or 'detected'}), its test split"


def translate_both_ways(generators: dict, pairs: list, direction: str, batch_size: int):
    """The canvases of every source translated, and translated back (the cycle reconstruction)."""
    sources = datasets.stack([pair[DIRECTIONS[direction].source_index] for pair in pairs])
    translated = translate_canvases(generators[direction], sources, batch_size)
    return translated, translate_canvases(generators[REVERSE[direction]], translated, batch_size)


def comparisons(pairs: list, direction: str, translated: np.ndarray, reconstructed: np.ndarray) -> dict:
    """Name -> (source, target, prediction on the original grid) per slice: model, identity baseline, cycle."""
    sources = [pair[DIRECTIONS[direction].source_index] for pair in pairs]
    targets = [pair[1 - DIRECTIONS[direction].source_index] for pair in pairs]
    return {
        direction: [(s, t, preprocess.from_canvas(p, s.geometry)) for s, t, p in zip(sources, targets, translated)],
        f"{BASELINE}/{direction}": [(s, t, s.original) for s, t in zip(sources, targets)],
        CYCLE[direction]: [(s, s, preprocess.from_canvas(p, s.geometry)) for s, p in zip(sources, reconstructed)],
    }


def metric_rows(name: str, triples: list, names: list[str]) -> list[dict]:
    """One row per slice: where it came from and its metrics against the normalised target."""
    return [
        {"direction": name, "subject": target.subject, "source": source.source, "target": target.source,
         "slice": target.index, **metrics.slice_metrics(target.original, prediction, names)}
        for source, target, prediction in triples
    ]


def prediction_file_names(sources: list) -> list[str]:
    """<source stem>.png, or <stem>_slice<index>.png when the source gives other slices than its slice 0 alone."""
    counts = collections.Counter(s.source for s in sources)
    return [
        readers.file_stem(s.source) + (f"_slice{s.index}" if counts[s.source] > 1 or s.index else "") + ".png"
        for s in sources
    ]


def save_predictions(output_dir: str, compared: dict) -> None:
    """Each model output as a 16-bit PNG on its original grid; the baseline's "prediction" is the source itself."""
    for name, triples in compared.items():
        if name.startswith(BASELINE):
            continue
        folder = os.path.join(output_dir, "predictions", name)
        for file_name, (_, _, prediction) in zip(prediction_file_names([s for s, _, _ in triples]), triples):
            writers.write_png16(prediction, os.path.join(folder, file_name))


def example_grid(pairs: list, translated: dict, count: int) -> np.ndarray:
    """Rows of source | translated | target canvases for `count` pairs spread over the test set, per direction."""
    picks = sorted(set(np.linspace(0, len(pairs) - 1, min(count, len(pairs))).round().astype(int)))
    rows = [
        np.concatenate([pairs[i][DIRECTIONS[d].source_index].image, fakes[i], pairs[i][1 - DIRECTIONS[d].source_index].image], axis=1)
        for i in picks for d, fakes in translated.items()
    ]
    return np.concatenate(rows, axis=0)


def finite_or_none(summary: dict) -> dict:
    """NaN (e.g. no foreground anywhere) becomes null, so metrics.json stays strict JSON."""
    return {column: {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in stats.items()}
            for column, stats in summary.items()}


def nested(summaries: dict) -> dict:
    """'baseline_identity/t1_to_t2' -> {'baseline_identity': {'t1_to_t2': ...}}."""
    out = {}
    for name, summary in summaries.items():
        head, _, tail = name.partition("/")
        if tail:
            out.setdefault(head, {})[tail] = summary
        else:
            out[name] = summary
    return out


def format_value(column: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if column.startswith("psnr"):
        return f"{value:.2f}"
    return f"{value:.2e}" if column.startswith("mse") else f"{value:.4f}"


def format_table(summaries: dict, columns: list[str]) -> str:
    """Rows of evaluations, columns of metric mean ± std over slices, aligned."""
    table = [["", *columns]] + [
        [name, *(f"{format_value(c, s[c]['mean'])} ± {format_value(c, s[c]['std'])}" for c in columns)]
        for name, s in summaries.items()
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*CSV_KEYS, *columns])
        writer.writeheader()
        writer.writerows(rows)


def write_tensorboard(logdir: str, step: int, summaries: dict, columns: list[str], grid: np.ndarray | None) -> None:
    """Scalars eval/<name>/<metric> (slice means) at the checkpoint's step, beside the run's training curves."""
    writer = tf.summary.create_file_writer(os.path.join(logdir, EVAL_DIR))
    with writer.as_default(step=step):
        for name, summary in summaries.items():
            for column in columns:
                if summary[column]["mean"] is not None:
                    tf.summary.scalar(f"{EVAL_DIR}/{name}/{column}", summary[column]["mean"])
        if grid is not None:
            tf.summary.image(f"{EVAL_DIR}/examples", grid[np.newaxis, ..., np.newaxis])
    writer.close()


def prepare_output_dir(output_dir: str) -> None:
    """Creates the output folder, or exits with one line when it cannot be one (e.g. it is a file)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        sys.exit(f"error: --output_dir={output_dir} is a file, not a folder")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        sys.exit(f"error: --output_dir={output_dir}: cannot create the folder ({e.strerror or e})")


def load_test_pairs(spec: datasets.DataSpec) -> list:
    try:
        return datasets.test_pairs(spec)
    except (ValueError, readers.BadFileError) as e:
        sys.exit(f"error: {e}")


def main(argv):
    del argv
    try:
        names = metrics.parse_metrics(FLAGS.metrics)
    except ValueError as e:
        sys.exit(f"error: --metrics: {e}")
    columns = metrics.metric_columns(names)
    directions = tuple(DIRECTIONS) if FLAGS.direction == "both" else (FLAGS.direction,)
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.logdir, EVAL_DIR)
    try:
        checkpoint = latest_checkpoint(FLAGS.logdir)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    prepare_output_dir(output_dir)  # before the slow part: a bad folder fails now, not after inference
    spec = data_spec(FLAGS.logdir)
    pairs = load_test_pairs(spec)
    data_description = {"test": describe(spec), "pairs": len(pairs), "subjects": len({a.subject for a, _ in pairs})}
    logging.info("test data: %s", data_description)
    try:
        generators, step = from_checkpoint(FLAGS.logdir, checkpoint)
    except ValueError as e:
        sys.exit(f"error: {e}")

    translated, compared = {}, {}
    for direction in directions:
        translated[direction], reconstructed = translate_both_ways(generators, pairs, direction, FLAGS.batch_size)
        compared.update(comparisons(pairs, direction, translated[direction], reconstructed))
    rows_by_name = {name: metric_rows(name, triples, names) for name, triples in compared.items()}
    summaries = {name: finite_or_none(metrics.summarize(rows, names)) for name, rows in rows_by_name.items()}

    report = {**nested(summaries), "checkpoint": checkpoint, "checkpoint_step": step, "data": data_description}
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
    write_csv(os.path.join(output_dir, "metrics.csv"), [r for rows in rows_by_name.values() for r in rows], columns)
    grid = example_grid(pairs, translated, FLAGS.examples) if FLAGS.examples > 0 else None
    if grid is not None:
        Image.fromarray(np.round(grid * 255).astype(np.uint8)).save(os.path.join(output_dir, "examples.png"))
    if FLAGS.save_predictions:
        save_predictions(output_dir, compared)
    write_tensorboard(FLAGS.logdir, step, summaries, columns, grid)

    print(f"checkpoint {checkpoint} (step {step}); {data_description['test']}: "
          f"{data_description['pairs']} slice pairs from {data_description['subjects']} subjects")
    print(format_table(summaries, columns))
    print(f"mean ± std over slices. {BASELINE}: the source slice itself as the prediction; "
          "t1_cycle / t2_cycle: T1->T2->T1 / T2->T1->T2 against the source.")
    print(f"wrote {output_dir}")


if __name__ == "__main__":
    app.run(main)
