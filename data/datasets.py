"""From data flags to preprocessed slices: the built-in synthetic phantoms or the user's files.

Every consumer (training, evaluation, translation) goes through here, so one
preprocessing path holds everywhere: per-volume intensity normalisation, then
each axial slice placed on the 256x256 canvas, near-empty slices dropped.
"""

import dataclasses

import numpy as np
from absl import logging

from data import layouts, phantom, preprocess, readers
from rundir import config
from rundir.config import option


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where a run's slices come from and how files are read; saved with the run so evaluation reads the same data.

    Its fields are the data flags (rundir/config.py): the reading ones (on_bad_file, min_foreground)
    serve every tool, the rest say which files train and test.
    """

    on_bad_file: str = option("skip", "skip: warn and skip unreadable files; error: stop at the first.",
                              choices=readers.ON_BAD_FILE)
    min_foreground: float = option(0.05, "Slices whose fraction of pixels above 5% of the intensity scale is below "
                                   "this are skipped (translate.py writes them as 0).", lower=0.0, upper=1.0)
    train_a: str | None = option(None, "Domain A (T1) training images: a file, folder or glob. Default: the built-in "
                                 "synthetic phantoms.")
    train_b: str | None = option(None, "Domain B (T2) training images: a file, folder or glob.")
    test_a: str | None = option(None, "Domain A (T1) test images, paired with --test_b by file stem or subject id.")
    test_b: str | None = option(None, "Domain B (T2) test images.")
    data_dir: str | None = option(None, "A dataset folder in a recognised layout (see --layout).")
    layout: str | None = option(None, "Layout of --data_dir (default: detected).", choices=layouts.LAYOUTS)
    synthetic_subjects: int = option(128, "Built-in data: synthetic training subjects per domain.", lower=1)
    synthetic_test_subjects: int = option(16, "Built-in data: synthetic paired test subjects.", lower=1)
    synthetic_seed: int = option(0, "Built-in data: seed of the synthetic phantoms.", lower=0)
    cache_dir: str | None = option(None, "Preprocess the training slices once into this folder and stream them from "
                                   "disk: data sets larger than memory (rebuilt when the data flags or files change).",
                                   resumable=True)

    @classmethod
    def from_mapping(cls, values) -> "DataSpec":
        """From absl FLAGS, a dict, or a run's saved flags (strings); names it does not know are ignored."""
        return config.from_values(cls, values)

    @property
    def synthetic(self) -> bool:
        return not (self.train_a or self.train_b or self.data_dir)


@dataclasses.dataclass(frozen=True)
class Slice:
    """One preprocessed slice and what is needed to put a result back where it came from."""

    image: np.ndarray  # [256, 256] float32 in [0, 1], on the canvas
    geometry: preprocess.Geometry
    subject: str
    source: str  # the file (or series folder) it came from
    index: int  # its position in the volume's axial slices
    original: np.ndarray | None = None  # test slices only: the normalised slice on its original grid


def _synthetic_slices(images: np.ndarray, contrast: str, first_subject: int, keep_original=False) -> list[Slice]:
    geometry = preprocess.Geometry(*images.shape[1:], *images.shape[1:], 0, 0)
    out = []
    for i, image in enumerate(images):
        subject = f"synthetic-{first_subject + i:07d}"
        unit = preprocess.normalize(image)
        out.append(Slice(unit, geometry, subject, f"{subject}-{contrast}", 0, unit if keep_original else None))
    return out


def volume_slices(volume, min_foreground: float, keep_original: bool = False) -> list[Slice]:
    """A volume's axial slices, normalised per volume, on the canvas, near-empty ones dropped."""
    scale = preprocess.intensity_scale(volume.data)
    out = []
    for index, raw in enumerate(volume.data):
        unit = preprocess.normalize(raw, scale)
        if preprocess.foreground_fraction(unit) < min_foreground:  # of the slice itself, not the padded canvas
            continue
        canvas, geometry = preprocess.to_canvas(unit)
        out.append(Slice(canvas, geometry, volume.subject, volume.path, index, unit if keep_original else None))
    return out


def _file_slices(specs: list[str], spec: DataSpec, what: str) -> list[Slice]:
    volumes = [v for path in specs for v in readers.read_path(path, spec.on_bad_file)]
    slices = [s for v in volumes for s in volume_slices(v, spec.min_foreground)]
    if not slices:
        raise readers.BadFileError(
            f"{what}: no slice with at least {spec.min_foreground:.0%} foreground in {', '.join(specs)}"
        )
    logging.info("%s: %d slices from %d volumes", what, len(slices), len(volumes))
    return slices


def _layout(spec: DataSpec) -> layouts.DomainFiles:
    return layouts.layout_files(spec.data_dir, spec.layout)


def stack(slices: list[Slice]) -> np.ndarray:
    return np.stack([s.image for s in slices]).astype(np.float32)


def training_slices(spec: DataSpec) -> tuple[list[Slice], list[Slice]]:
    """Unpaired training slices of domain A (T1) and domain B (T2)."""
    if spec.synthetic:
        t1, t2 = phantom.unpaired_train(spec.synthetic_subjects, spec.synthetic_seed)
        return _synthetic_slices(t1, "t1", 0), _synthetic_slices(t2, "t2", spec.synthetic_subjects)
    if spec.data_dir:
        files = _layout(spec)
        return _file_slices(files.train_a, spec, "train_a"), _file_slices(files.train_b, spec, "train_b")
    if not (spec.train_a and spec.train_b):
        raise ValueError("give both --train_a and --train_b (or --data_dir)")
    return _file_slices([spec.train_a], spec, "train_a"), _file_slices([spec.train_b], spec, "train_b")


def test_pairs(spec: DataSpec) -> list[tuple[Slice, Slice]]:
    """Paired (T1, T2) test slices: the same subject and slice in both contrasts."""
    if spec.synthetic and not (spec.test_a or spec.test_b):
        t1, t2 = phantom.paired_test(spec.synthetic_test_subjects, spec.synthetic_seed)
        first = 1_000_000
        return list(zip(_synthetic_slices(t1, "t1", first, True), _synthetic_slices(t2, "t2", first, True)))
    if spec.test_a or spec.test_b:
        if not (spec.test_a and spec.test_b):
            raise ValueError("give both --test_a and --test_b")
        specs_a, specs_b = [spec.test_a], [spec.test_b]
    elif spec.data_dir:
        files = _layout(spec)
        specs_a, specs_b = files.test_a, files.test_b
        if not (specs_a and specs_b):
            raise ValueError(f"{spec.data_dir} has no paired test split (give --test_a and --test_b)")
    else:
        raise ValueError("no paired test data: give --test_a and --test_b, or a --data_dir with a test split")
    vols_a = [v for path in specs_a for v in readers.read_path(path, spec.on_bad_file)]
    vols_b = [v for path in specs_b for v in readers.read_path(path, spec.on_bad_file)]
    pairs = []
    for vol_a, vol_b in layouts.pair_volumes(vols_a, vols_b):
        if vol_a.data.shape != vol_b.data.shape:
            logging.warning("skipping pair %s / %s: shapes %s and %s differ", vol_a.path, vol_b.path,
                            vol_a.data.shape, vol_b.data.shape)
            continue
        # Keep the slices present in both after the foreground filter.
        a = {s.index: s for s in volume_slices(vol_a, spec.min_foreground, keep_original=True)}
        b = {s.index: s for s in volume_slices(vol_b, spec.min_foreground, keep_original=True)}
        pairs.extend((a[i], b[i]) for i in sorted(a.keys() & b.keys()))
    if not pairs:
        raise readers.BadFileError(f"no paired test slices in {', '.join(specs_a + specs_b)}")
    return pairs
