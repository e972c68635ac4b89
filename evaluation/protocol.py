"""What an evaluation compares: which test data, which predictions against which targets, and the rows.

Targets are the normalised test slices on their original grid; predictions are the generator's
outputs mapped back to that grid (docs/evaluate.md, "Protocol"). Each evaluation has a name:
a direction (`t1_to_t2`), its identity baseline (`baseline_identity/t1_to_t2`) or its cycle
(`t1_cycle`: T1 -> T2 -> T1 against the T1 source), and the non-learned rows beside it
(`baseline_histogram/t1_to_t2`, `oracle_intensity_map/t1_to_t2`; evaluation/baselines.py).
With the air mask on, the model's outputs (translations and cycles) are 0 where the source is air
(data/masks.py), as translate.py writes them, and so is the oracle map (fitted on the rest); histogram
matching always keeps air at 0.
"""

import dataclasses

import numpy as np
from absl import logging

from data import datasets, masks, preprocess
from evaluation import baselines, metrics
from models.directions import DIRECTIONS, Direction
from models.inference import Generator, translate_canvases
from rundir import flagfile

BASELINE = "baseline_identity"
HISTOGRAM = "baseline_histogram"
REVERSED_HISTOGRAM = "baseline_reversed_histogram"
ORACLE = "oracle_intensity_map"
NON_LEARNED = (BASELINE, HISTOGRAM, REVERSED_HISTOGRAM, ORACLE)
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


def canvas_air(air: np.ndarray, geometry: preprocess.Geometry) -> np.ndarray:
    """An original-grid air mask placed on the canvas like its slice (--spacing's zoom included); the padding is
    air too."""
    placed = preprocess.place_like(air.astype(np.float32), geometry)
    inside = preprocess.place_like(np.ones(air.shape, np.float32), geometry)
    return (placed >= 0.5) | (inside == 0)


def translate_both_ways(generators: dict[str, Generator], pairs: list, direction: Direction, batch_size: int,
                        air: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """The canvases of every source translated, and translated back (the cycle reconstruction).

    With `air` (the sources' air masks), both are 0 in the air, and the cycle starts from the masked
    translation, as a user translating translate.py's output back would.
    """
    sources = [pair[direction.source_index] for pair in pairs]
    keep = 1.0 if air is None else ~np.stack([canvas_air(a, s.geometry) for a, s in zip(air, sources)])
    translated = translate_canvases(generators[direction.name], datasets.stack(sources), batch_size) * keep
    return translated, translate_canvases(generators[direction.reverse], translated, batch_size) * keep


def comparisons(pairs: list, direction: Direction, translated: np.ndarray, reconstructed: np.ndarray,
                air: list[np.ndarray] | None, reference: baselines.HistogramReference | None) -> dict:
    """Name -> (source, target, prediction on the original grid) per slice: model, non-learned rows, cycle.

    `reference` is the target domain's pooled training intensities (None leaves both histogram rows out).
    """
    sources = [pair[direction.source_index] for pair in pairs]
    targets = [pair[direction.target_index] for pair in pairs]
    keeps = [1.0] * len(sources) if air is None else [~a for a in air]

    def model(canvases):
        return [preprocess.from_canvas(p, s.geometry) * keep for p, s, keep in zip(canvases, sources, keeps)]

    compared = {
        direction.name: list(zip(sources, targets, model(translated))),
        f"{BASELINE}/{direction.name}": [(s, t, s.original) for s, t in zip(sources, targets)],
    }
    if reference is not None:
        for name, reverse in ((HISTOGRAM, False), (REVERSED_HISTOGRAM, True)):
            compared[f"{name}/{direction.name}"] = [(s, t, baselines.match_histogram(s.original, reference, reverse))
                                                    for s, t in zip(sources, targets)]
    airs = [None] * len(sources) if air is None else air
    compared[f"{ORACLE}/{direction.name}"] = [(s, t, baselines.oracle_intensity_map(s.original, t.original, a))
                                              for s, t, a in zip(sources, targets, airs)]
    compared[cycle_name(direction)] = list(zip(sources, sources, model(reconstructed)))
    return compared


def metric_rows(name: str, triples: list, names: list[str], mask: str = "nonzero") -> list[dict]:
    """One row per slice: where it came from and its metrics against the normalised target, _fg inside `mask`."""
    return [
        {"direction": name, "subject": target.subject, "source": source.source, "target": target.source,
         "slice": target.index, **metrics.slice_metrics(target.original, prediction, names,
                                                        masks.foreground(mask, target.original, target.mask))}
        for source, target, prediction in triples
    ]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Everything one evaluation computed, in the order the reports show it."""

    checkpoint: str
    step: int
    data: dict  # test: describe(spec), pairs, subjects, register
    pairs: dict[str, list]  # direction -> (T1, T2) test slices on the grid of its source
    columns: list[str]  # metric columns, each followed by its _fg variant
    translated: dict[str, np.ndarray]  # direction -> translated canvases
    compared: dict[str, list]  # evaluation name -> (source, target, prediction) per slice
    rows: dict[str, list[dict]]  # evaluation name -> metric_rows
    summaries: dict[str, dict]  # evaluation name -> metrics.summarize of its rows
    air_mask: bool  # the model's outputs are 0 where the source is air
    mask: dict  # the _fg metrics' mask: masks.describe_rule


def evaluate(generators: dict[str, Generator], pairs: dict[str, list], names: list[str], batch_size: int,
             checkpoint: str, step: int, data: dict, air_mask: bool = True, mask: str = "auto",
             references: dict[str, baselines.HistogramReference] | None = None) -> Evaluation:
    """Each direction of `pairs` (direction -> its slice pairs), its non-learned rows and its cycle, per slice and
    summarised. `references`: per direction, the target domain's training intensities for baseline_histogram."""
    translated, compared = {}, {}
    for name, direction_pairs in pairs.items():
        direction = DIRECTIONS[name]
        sources = [pair[direction.source_index] for pair in direction_pairs]
        air = [masks.air_mask(s.original) for s in sources] if air_mask else None
        translated[name], reconstructed = translate_both_ways(generators, direction_pairs, direction, batch_size,
                                                              air)
        compared.update(comparisons(direction_pairs, direction, translated[name], reconstructed, air,
                                    (references or {}).get(name)))
    rows = {name: metric_rows(name, triples, names, mask) for name, triples in compared.items()}
    summaries = {name: metrics.summarize(name_rows, names) for name, name_rows in rows.items()}
    return Evaluation(checkpoint, step, data, pairs, metrics.metric_columns(names), translated, compared, rows,
                      summaries, air_mask, masks.describe_rule(mask))
