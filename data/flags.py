"""Data flags, defined once so train.py, evaluate.py and translate.py read data one way.

Importing this module defines the reading flags every tool needs; train.py and
evaluate.py add the dataset flags, and train.py the augmentation flags.
"""

from absl import flags

flags.DEFINE_enum("on_bad_file", "skip", ["skip", "error"], "skip: warn and skip unreadable files; error: stop at the first.")
flags.DEFINE_float("min_foreground", 0.05, "Slices whose fraction of pixels above 5% of the intensity scale is below this "
                   "are skipped (translate.py writes them as 0).", lower_bound=0.0, upper_bound=1.0)

READING_FLAGS = ("on_bad_file", "min_foreground")
DATASET_FLAGS = READING_FLAGS + (
    "train_a", "train_b", "test_a", "test_b", "data_dir", "layout",
    "synthetic_subjects", "synthetic_test_subjects", "synthetic_seed",
)
AUGMENT_FLAGS = (
    "augment_jitter", "augment_flip", "augment_rotate", "augment_scale", "augment_gamma", "augment_bias_field",
)


def define_dataset_flags() -> None:
    """Where the training and test data come from (default: the built-in synthetic phantoms)."""
    flags.DEFINE_string("train_a", None, "Domain A (T1) training images: a file, folder or glob. "
                        "Default: the built-in synthetic phantoms.")
    flags.DEFINE_string("train_b", None, "Domain B (T2) training images: a file, folder or glob.")
    flags.DEFINE_string("test_a", None, "Domain A (T1) test images, paired with --test_b by file stem or subject id.")
    flags.DEFINE_string("test_b", None, "Domain B (T2) test images.")
    flags.DEFINE_string("data_dir", None, "A dataset folder in a recognised layout (see --layout).")
    flags.DEFINE_enum("layout", None, ["cyclegan", "ixi", "brats", "bids"], "Layout of --data_dir (default: detected).")
    flags.DEFINE_integer("synthetic_subjects", 128, "Built-in data: synthetic training subjects per domain.", lower_bound=1)
    flags.DEFINE_integer("synthetic_test_subjects", 16, "Built-in data: synthetic paired test subjects.", lower_bound=1)
    flags.DEFINE_integer("synthetic_seed", 0, "Built-in data: seed of the synthetic phantoms.", lower_bound=0)


def define_augment_flags() -> None:
    """Training-time augmentation, each part behind its own flag."""
    flags.DEFINE_bool("augment_jitter", True, "Augmentation: the CycleGAN jitter (resize to 286, random crop to 256).")
    flags.DEFINE_bool("augment_flip", True, "Augmentation: random left-right flip.")
    flags.DEFINE_float("augment_rotate", 0.0, "Augmentation: random rotation within +-this many degrees (0: off).",
                       lower_bound=0.0)
    flags.DEFINE_float("augment_scale", 0.0, "Augmentation: random zoom within 1 +- this fraction (0: off).",
                       lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_float("augment_gamma", 0.0, "Augmentation: random gamma exp(U(-g, g)) on intensities (0: off).",
                       lower_bound=0.0)
    flags.DEFINE_float("augment_bias_field", 0.0, "Augmentation: smooth multiplicative bias field of up to this "
                       "amplitude (0: off).", lower_bound=0.0, upper_bound=0.99)
