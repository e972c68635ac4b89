"""Where an evaluation's results go: the terminal table, metrics.json, metrics.csv, examples.png,
16-bit prediction PNGs and TensorBoard scalars (formats in docs/evaluate.md, "Outputs")."""

import collections
import csv
import json
import math
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from data import readers, writers
from evaluation.protocol import BASELINE, HISTOGRAM, NON_LEARNED, ORACLE, REVERSED_HISTOGRAM, Evaluation
from models.directions import DIRECTIONS

EVAL_DIR = "eval"  # TensorBoard folder in the logdir, and the default output folder
CSV_KEYS = ("direction", "subject", "source", "target", "slice")


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


def json_report(evaluation: Evaluation) -> dict:
    """The content of metrics.json: summaries per evaluation, the checkpoint and the test data."""
    summaries = {name: finite_or_none(summary) for name, summary in evaluation.summaries.items()}
    return {**nested(summaries), "checkpoint": evaluation.checkpoint, "checkpoint_step": evaluation.step,
            "data": evaluation.data, "air_mask": evaluation.air_mask, "foreground_mask": evaluation.mask}


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


def terminal_summary(evaluation: Evaluation) -> str:
    """What evaluate.py prints: the checkpoint and data, the table, and how to read it."""
    data = evaluation.data
    return "\n".join([
        f"checkpoint {evaluation.checkpoint} (step {evaluation.step}); {data['test']}: "
        f"{data['pairs']} slice pairs from {data['subjects']} subjects",
        format_table(evaluation.summaries, evaluation.columns),
        f"mean ± std over slices; _fg inside the {evaluation.mask['mask']} mask; model outputs "
        f"{'zeroed in the source air' if evaluation.air_mask else 'raw (--air_mask=false)'}. {BASELINE}: the "
        f"source slice itself; {HISTOGRAM}: the source's head histogram-matched to the target domain's training "
        f"heads, air 0; {REVERSED_HISTOGRAM}: the same with the head's intensity order reversed first; {ORACLE}: "
        "the best per-pair intensity map (a ceiling for intensity-only methods); "
        "t1_cycle / t2_cycle: T1->T2->T1 / T2->T1->T2 against the source.",
    ])


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*CSV_KEYS, *columns])
        writer.writeheader()
        writer.writerows(rows)


def example_grid(pairs: dict, translated: dict, count: int) -> np.ndarray:
    """Rows of source | translated | target canvases for `count` pairs spread over the test set, per direction.

    `pairs` holds each direction's slice pairs (on its source's grid; the same number unless the grids differ).
    """
    length = min(len(direction_pairs) for direction_pairs in pairs.values())
    picks = sorted(set(np.linspace(0, length - 1, min(count, length)).round().astype(int)))
    rows = [
        np.concatenate([pairs[name][i][DIRECTIONS[name].source_index].image, fakes[i],
                        pairs[name][i][DIRECTIONS[name].target_index].image], axis=1)
        for i in picks for name, fakes in translated.items()
    ]
    return np.concatenate(rows, axis=0)


def prediction_file_names(sources: list) -> list[str]:
    """<source stem>.png, or <stem>_slice<index>.png when the source gives other slices than its slice 0 alone."""
    counts = collections.Counter(s.source for s in sources)
    return [
        readers.file_stem(s.source) + (f"_slice{s.index}" if counts[s.source] > 1 or s.index else "") + ".png"
        for s in sources
    ]


def save_predictions(output_dir: str, compared: dict) -> None:
    """Each model output as a 16-bit PNG on its original grid (the non-learned rows are not saved)."""
    for name, triples in compared.items():
        if name.partition("/")[0] in NON_LEARNED:
            continue
        folder = os.path.join(output_dir, "predictions", name)
        for file_name, (_, _, prediction) in zip(prediction_file_names([s for s, _, _ in triples]), triples):
            writers.write_png16(prediction, os.path.join(folder, file_name))


def write_tensorboard(logdir: str, step: int, summaries: dict, columns: list[str], grid: np.ndarray | None) -> None:
    """Scalars eval/<name>/<metric> (slice means) at the checkpoint's step, beside the run's training curves."""
    writer = tf.summary.create_file_writer(os.path.join(logdir, EVAL_DIR))
    with writer.as_default(step=step):
        for name, summary in summaries.items():
            for column in columns:
                if math.isfinite(summary[column]["mean"]):
                    tf.summary.scalar(f"{EVAL_DIR}/{name}/{column}", summary[column]["mean"])
        if grid is not None:
            tf.summary.image(f"{EVAL_DIR}/examples", grid[np.newaxis, ..., np.newaxis])
    writer.close()


def write_all(evaluation: Evaluation, output_dir: str, logdir: str, examples: int, predictions: bool) -> None:
    """metrics.json, metrics.csv, examples.png (`examples` > 0), the predictions (if asked) and TensorBoard."""
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(json_report(evaluation), f, indent=2, allow_nan=False)
    all_rows = [row for rows in evaluation.rows.values() for row in rows]
    write_csv(os.path.join(output_dir, "metrics.csv"), all_rows, evaluation.columns)
    grid = example_grid(evaluation.pairs, evaluation.translated, examples) if examples > 0 else None
    if grid is not None:
        Image.fromarray(np.round(grid * 255).astype(np.uint8)).save(os.path.join(output_dir, "examples.png"))
    if predictions:
        save_predictions(output_dir, evaluation.compared)
    write_tensorboard(logdir, evaluation.step, evaluation.summaries, evaluation.columns, grid)
