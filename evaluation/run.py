"""A run's newest (or a chosen) checkpoint evaluated end to end, as evaluate.py does it, with the user's mistakes as exceptions.

The order matters for the user: the checkpoint and the output folder are checked, and the generators
restored, before the test data is read and the generators run, so a typo or a damaged checkpoint fails
in seconds, not after inference.
"""

import os

from absl import logging

from data import datasets, masks, readers
from evaluation import baselines, protocol, report
from models.directions import DIRECTIONS
from models.inference import as_checkpoint_prefix, from_checkpoint
from rundir.checkpoints import latest_checkpoint


class InputError(Exception):
    """Input the user can fix (no checkpoint, no or unreadable test data, a bad checkpoint): one line."""


class OutputDirError(Exception):
    """The output folder is a file or cannot be created; the message starts with its path."""


def prepare_output_dir(output_dir: str) -> None:
    """Creates the output folder, or raises OutputDirError when it cannot be one (e.g. it is a file)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputDirError(f"{output_dir} is a file, not a folder")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"{output_dir}: cannot create the folder ({e.strerror or e})") from e


def test_pairs_per_direction(spec: datasets.DataSpec, directions: tuple[str, ...], register: str,
                             mask_path: str | None) -> dict[str, list]:
    """Each direction's slice pairs, on the grid of its source contrast (read once for both)."""
    grids = datasets.test_pairs_on_grids(spec, register, {DIRECTIONS[d].source_index for d in directions},
                                         mask_path)
    return {d: grids[DIRECTIONS[d].source_index] for d in directions}


def histogram_references(spec: datasets.DataSpec, directions: tuple[str, ...]) -> dict:
    """Per direction, the target domain's pooled training intensities; empty (warned) when they cannot be read."""
    try:
        training = datasets.training_slices(spec, keep_original=True)
    except (ValueError, readers.BadFileError) as e:
        logging.warning("%s left out: cannot read the run's training slices (%s)", protocol.HISTOGRAM, e)
        return {}
    return {d: baselines.histogram_reference([s.original for s in training[DIRECTIONS[d].target_index]])
            for d in directions}


def evaluate_run(logdir: str, output_dir: str, names: list[str], directions: tuple[str, ...], given_data_flags: dict,
                 batch_size: int, examples: int, predictions: bool, register: str = "world", air_mask: bool = True,
                 mask: str = "auto", checkpoint_path: str | None = None) -> protocol.Evaluation:
    """Evaluates the newest (or the given) checkpoint of `logdir` on its test data and writes every report
    (report.write_all).

    `given_data_flags` are the data flags given on the command line (protocol.data_spec); `register`
    (data/resample.py), `air_mask` and `mask` (data/masks.py: a rule or mask files) as evaluate.py's flags.
    Raises InputError or OutputDirError; anything else is a bug.
    """
    try:
        checkpoint = as_checkpoint_prefix(checkpoint_path) if checkpoint_path else latest_checkpoint(logdir)
    except FileNotFoundError as e:
        raise InputError(str(e)) from e
    prepare_output_dir(output_dir)
    try:
        generators, step = from_checkpoint(logdir, checkpoint_path)
    except ValueError as e:
        raise InputError(str(e)) from e
    spec = protocol.data_spec(logdir, given_data_flags)
    mask_path = None if mask in masks.MASK_RULES else mask
    try:
        pairs = test_pairs_per_direction(spec, directions, register, mask_path)
    except (ValueError, ImportError, readers.BadFileError) as e:
        raise InputError(" ".join(str(e).split())) from e
    counts = {d: len(p) for d, p in pairs.items()}  # differ only when the directions' grids differ
    sizes = set(counts.values())
    data = {"test": protocol.describe(spec), "pairs": sizes.pop() if len(sizes) == 1 else counts,
            "subjects": len({a.subject for p in pairs.values() for a, _ in p}), "register": register}
    logging.info("test data: %s", data)
    references = histogram_references(spec, directions)
    evaluation = protocol.evaluate(generators, pairs, names, batch_size, checkpoint, step, data, air_mask, mask,
                                   references)
    report.write_all(evaluation, output_dir, logdir, examples, predictions)
    return evaluation
