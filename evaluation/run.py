"""A run's newest checkpoint evaluated end to end, as evaluate.py does it, with the user's mistakes as exceptions.

The order matters for the user: the checkpoint and the output folder are checked before the
test data is read and the generators run, so a typo fails in seconds, not after inference.
"""

import os

from absl import logging

from data import datasets, readers
from evaluation import protocol, report
from models.inference import from_checkpoint
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


def evaluate_run(logdir: str, output_dir: str, names: list[str], directions: tuple[str, ...], given_data_flags: dict,
                 batch_size: int, examples: int, predictions: bool) -> protocol.Evaluation:
    """Evaluates the newest checkpoint of `logdir` on its test data and writes every report (report.write_all).

    `given_data_flags` are the data flags given on the command line (protocol.data_spec).
    Raises InputError or OutputDirError; anything else is a bug.
    """
    try:
        checkpoint = latest_checkpoint(logdir)
    except FileNotFoundError as e:
        raise InputError(str(e)) from e
    prepare_output_dir(output_dir)
    spec = protocol.data_spec(logdir, given_data_flags)
    try:
        pairs = datasets.test_pairs(spec)
    except (ValueError, readers.BadFileError) as e:
        raise InputError(str(e)) from e
    data = {"test": protocol.describe(spec), "pairs": len(pairs), "subjects": len({a.subject for a, _ in pairs})}
    logging.info("test data: %s", data)
    try:
        generators, step = from_checkpoint(logdir, checkpoint)
    except ValueError as e:
        raise InputError(str(e)) from e
    evaluation = protocol.evaluate(generators, pairs, directions, names, batch_size, checkpoint, step, data)
    report.write_all(evaluation, output_dir, logdir, examples, predictions)
    return evaluation
