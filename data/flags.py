"""Data flags, defined from the data configs (DataSpec, AugmentOptions) so every tool reads data one way.

Importing this module defines the reading flags every tool needs; train.py and
evaluate.py add the dataset flags, and train.py the augmentation flags.
"""

from data.augment import AugmentOptions
from data.datasets import DataSpec
from rundir import config

READING_FLAGS = ("on_bad_file", "min_foreground")
DATASET_FLAGS = config.flag_names(DataSpec)
AUGMENT_FLAGS = config.flag_names(AugmentOptions)

config.define_flags(DataSpec, only=READING_FLAGS)


def define_dataset_flags() -> None:
    """Where the training and test data come from (default: the built-in synthetic phantoms)."""
    config.define_flags(DataSpec, only=tuple(name for name in DATASET_FLAGS if name not in READING_FLAGS))


def define_augment_flags() -> None:
    """Training-time augmentation, each part behind its own flag."""
    config.define_flags(AugmentOptions)
