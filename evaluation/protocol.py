"""What an evaluation compares: which test data, which predictions against which targets, and the rows.

Targets are the normalised test slices on their original grid; predictions are the generator's
outputs mapped back to that grid (docs/evaluate.md, "Protocol"). Each evaluation has a name:
a direction (`t1_to_t2`), its identity baseline (`baseline_identity/t1_to_t2`) or its cycle
(`t1_cycle`: T1 -> T2 -> T1 against the T1 source).
"""

import dataclasses

import numpy as np
from absl import logging

from data import datasets, preprocess
from evaluation import metrics
from models.directions import DIRECTIONS, Direction
from models.inference import Generator, translate_canvases
from rundir import flagfile

BASELINE = "baseline_identity"
# Where the test data comes from; one given on the command line replaces all the run's saved ones.
TEST_SOURCE_FLAGS = ("test_a", "test_b", "data_dir")


def data_spec(logdir: str, given: dict) -> datasets.DataSpec:
    """The run's saved data flags, overridden by `given` (the data flags given on the command line)."""
    saved = flagfile.load(logdir)
    if not saved:
        logging.warning("no %s in %s: the data flags given here (or their defaults) are used", flagfile.FLAGFILE,
                        logdir)
    if given.keys() & set(TEST_SOURCE_FLAGS):
        # Otherwise a saved --data_dir or --test_a would silently win over, or mix with, the new test data.
        saved = {name: value for name, value in saved.items() if name not in TEST_SOURCE_FLAGS}
    return datasets.DataSpec.from_mapping({**saved, **given})


def describe(spec: datasets.DataSpec) -> str:
    """Which test data was read, in words, for the terminal and metrics.json."""
    if spec.test_a or spec.test_b:
        return f"test_a={spec.test_a} test_b={spec.test_b}"
    if spec.synthetic:
        return f"synthetic phantoms: {spec.synthetic_test_subjects} test subjects, seed {spec.synthetic_seed}"
    return f"data_dir={spec.data_dir} (layout {spec.layout or 'detected'}), its test split"


def cycle_name(direction: Direction) -> str:
    """t1_to_t2 -> t1_cycle: the round trip starting from the direction's source contrast."""
    return direction.name.partition("_to_")[0] + "_cycle"


def translate_both_ways(generators: dict[str, Generator], pairs: list, direction: Direction,
                        batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The canvases of every source translated, and translated back (the cycle reconstruction)."""
    sources = datasets.stack([pair[direction.source_index] for pair in pairs])
    translated = translate_canvases(generators[direction.name], sources, batch_size)
    return translated, translate_canvases(generators[direction.reverse], translated, batch_size)


def comparisons(pairs: list, direction: Direction, translated: np.ndarray, reconstructed: np.ndarray) -> dict:
    """Name -> (source, target, prediction on the original grid) per slice: model, identity baseline, cycle."""
    sources = [pair[direction.source_index] for pair in pairs]
    targets = [pair[direction.target_index] for pair in pairs]
    return {
        direction.name: [(s, t, preprocess.from_canvas(p, s.geometry)) for s, t, p in zip(sources, targets, translated)],
        f"{BASELINE}/{direction.name}": [(s, t, s.original) for s, t in zip(sources, targets)],
        cycle_name(direction): [(s, s, preprocess.from_canvas(p, s.geometry)) for s, p in zip(sources, reconstructed)],
    }


def metric_rows(name: str, triples: list, names: list[str]) -> list[dict]:
    """One row per slice: where it came from and its metrics against the normalised target."""
    return [
        {"direction": name, "subject": target.subject, "source": source.source, "target": target.source,
         "slice": target.index, **metrics.slice_metrics(target.original, prediction, names)}
        for source, target, prediction in triples
    ]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Everything one evaluation computed, in the order the reports show it."""

    checkpoint: str
    step: int
    data: dict  # test: describe(spec), pairs, subjects
    pairs: list  # (T1, T2) test slices
    columns: list[str]  # metric columns, each followed by its _fg variant
    translated: dict[str, np.ndarray]  # direction -> translated canvases
    compared: dict[str, list]  # evaluation name -> (source, target, prediction) per slice
    rows: dict[str, list[dict]]  # evaluation name -> metric_rows
    summaries: dict[str, dict]  # evaluation name -> metrics.summarize of its rows


def evaluate(generators: dict[str, Generator], pairs: list, directions: tuple[str, ...], names: list[str],
             batch_size: int, checkpoint: str, step: int, data: dict) -> Evaluation:
    """Each direction, its identity baseline and its cycle, per slice and summarised."""
    translated, compared = {}, {}
    for name in directions:
        direction = DIRECTIONS[name]
        translated[name], reconstructed = translate_both_ways(generators, pairs, direction, batch_size)
        compared.update(comparisons(pairs, direction, translated[name], reconstructed))
    rows = {name: metric_rows(name, triples, names) for name, triples in compared.items()}
    summaries = {name: metrics.summarize(name_rows, names) for name, name_rows in rows.items()}
    return Evaluation(checkpoint, step, data, pairs, metrics.metric_columns(names), translated, compared, rows,
                      summaries)
