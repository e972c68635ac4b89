"""From data flags to preprocessed slices: the built-in synthetic phantoms or the user's files.

Every consumer (training, evaluation, translation) goes through here, so one
preprocessing path holds everywhere: per-volume intensity normalisation, then
each axial slice placed on the 256x256 canvas, near-empty slices dropped.
"""

import dataclasses

import numpy as np
from absl import logging

from data import layouts, masks, phantom, preprocess, readers, resample
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
    intensity: str = option("percentile", "Per-volume intensity scale: percentile (the 99.5th percentile of the "
                            "positive voxels maps to 1) or head_median (the head's median maps to 0.35: one tissue "
                            "scale for skull-on and skull-stripped scans of a cohort; data/preprocess.py). Saved "
                            "with the run: evaluate.py, translate.py and export.py read the same way.",
                            choices=preprocess.INTENSITY)
    spacing: float | None = option(None, "Resample each slice in-plane to this pixel spacing (mm) before the "
                                   "256x256 canvas, from the scanner geometry, so anatomy has one size across "
                                   "scanners; slices still larger than the canvas are scaled down. Default: the "
                                   "files' own pixels. Images (no geometry) keep theirs. Saved with the run.",
                                   lower=0.1)
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
    mask: np.ndarray | None = None  # test slices with mask files: the given mask on the original grid


def _synthetic_slices(images: np.ndarray, contrast: str, first_subject: int, keep_original=False) -> list[Slice]:
    geometry = preprocess.Geometry(*images.shape[1:], *images.shape[1:], 0, 0)
    out = []
    for i, image in enumerate(images):
        subject = f"synthetic-{first_subject + i:07d}"
        unit = preprocess.normalize(image)
        out.append(Slice(unit, geometry, subject, f"{subject}-{contrast}", 0, unit if keep_original else None))
    return out


def volume_slices(volume, min_foreground: float, keep_original: bool = False, scale: float | None = None,
                  intensity: str = "percentile", spacing: float | None = None) -> list[Slice]:
    """A volume's axial slices, normalised per volume (`intensity`, or by `scale`), on the canvas at `spacing` mm
    per pixel (None: the file's pixels; images, which have no spacing, always), near-empty ones dropped."""
    scale = preprocess.intensity_scale(volume.data, intensity) if scale is None else scale
    zoom = canvas_zoom(volume, spacing)
    out = []
    for index, raw in enumerate(volume.data):
        unit = preprocess.normalize(raw, scale)
        if preprocess.foreground_fraction(unit) < min_foreground:  # of the slice itself, not the padded canvas
            continue
        canvas, geometry = preprocess.to_canvas(unit, zoom=zoom)
        out.append(Slice(canvas, geometry, volume.subject, volume.path, index, unit if keep_original else None))
    return out


def canvas_zoom(volume, spacing: float | None) -> tuple[float, float]:
    """The (row, column) resize that puts the volume's slices at `spacing` mm per pixel; (1, 1) for None or images."""
    native = resample.pixel_spacing(volume) if spacing else None
    if native is None:
        return 1.0, 1.0
    return native[0] / spacing, native[1] / spacing


def _file_slices(specs: list[str], spec: DataSpec, what: str, keep_original: bool = False) -> list[Slice]:
    volumes = [v for path in specs for v in readers.read_path(path, spec.on_bad_file)]
    slices = [s for v in volumes for s in volume_slices(v, spec.min_foreground, keep_original,
                                                        intensity=spec.intensity, spacing=spec.spacing)]
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


def training_slices(spec: DataSpec, keep_original: bool = False) -> tuple[list[Slice], list[Slice]]:
    """Unpaired training slices of domain A (T1) and domain B (T2); `keep_original` also keeps each on its grid."""
    if spec.synthetic:
        t1, t2 = phantom.unpaired_train(spec.synthetic_subjects, spec.synthetic_seed)
        return (_synthetic_slices(t1, "t1", 0, keep_original),
                _synthetic_slices(t2, "t2", spec.synthetic_subjects, keep_original))
    if spec.data_dir:
        files = _layout(spec)
        return (_file_slices(files.train_a, spec, "train_a", keep_original),
                _file_slices(files.train_b, spec, "train_b", keep_original))
    if not (spec.train_a and spec.train_b):
        raise ValueError("give both --train_a and --train_b (or --data_dir)")
    return (_file_slices([spec.train_a], spec, "train_a", keep_original),
            _file_slices([spec.train_b], spec, "train_b", keep_original))


def test_pairs(spec: DataSpec, register: str = "world", grid: int = 0, mask_path: str | None = None
               ) -> list[tuple[Slice, Slice]]:
    """Paired (T1, T2) test slices on the grid of contrast `grid` (0: T1, 1: T2); see `test_pairs_on_grids`."""
    return test_pairs_on_grids(spec, register, (grid,), mask_path)[grid]


def test_pairs_on_grids(spec: DataSpec, register: str = "world", grids=(0, 1), mask_path: str | None = None
                        ) -> dict[int, list[tuple[Slice, Slice]]]:
    """Paired (T1, T2) test slices, the same subject and position in both contrasts, per grid.

    On grid g the contrast at index g of the pair keeps its own voxels and the other is resampled
    onto its grid (`register`: resample.REGISTER; "none" pairs volumes of one shape voxel by voxel
    and skips the others). Evaluation puts each direction on its source's grid, so the network
    sees the scan as acquired and only the reference is interpolated. `mask_path` names mask files
    (data/masks.py), carried on the slices as `Slice.mask`.
    """
    if register not in resample.REGISTER:
        raise ValueError(f"register must be one of {', '.join(resample.REGISTER)}, not {register!r}")
    if spec.synthetic and not (spec.test_a or spec.test_b):
        if mask_path:
            raise ValueError("--mask with mask files needs test files (--test_a/--test_b or --data_dir), not the "
                             "built-in phantoms")
        t1, t2 = phantom.paired_test(spec.synthetic_test_subjects, spec.synthetic_seed)
        first = 1_000_000
        pairs = list(zip(_synthetic_slices(t1, "t1", first, True), _synthetic_slices(t2, "t2", first, True)))
        return {grid: pairs for grid in grids}
    volume_pairs = test_volume_pairs(spec)
    mask_volumes = readers.read_path(mask_path, spec.on_bad_file) if mask_path else []
    out = {grid: [] for grid in grids}
    for volumes in volume_pairs:
        on_grids = _on_grids(volumes, register, grids)
        mask = masks.match_mask(mask_volumes, volumes, len(volume_pairs)) if mask_path else None
        scales = [preprocess.intensity_scale(v.data, spec.intensity) for v in volumes]  # each contrast as acquired
        for grid, data in on_grids.items():
            given = masks.mask_on_grid(mask, volumes[grid]) if mask else None
            slices = []
            for volume, contrast_data, scale in zip(volumes, data, scales):
                # The grid's geometry, so that a resampled reference goes on the canvas at the source's spacing.
                on_grid = dataclasses.replace(volume, data=contrast_data, meta=volumes[grid].meta)
                slices.append({s.index: s if given is None else dataclasses.replace(s, mask=given[s.index])
                               for s in volume_slices(on_grid, spec.min_foreground, True, scale,
                                                      spacing=spec.spacing)})
            # Keep the slices present in both after the foreground filter.
            out[grid].extend((slices[0][i], slices[1][i]) for i in sorted(slices[0].keys() & slices[1].keys()))
    for grid, pairs in out.items():
        if not pairs:
            raise readers.BadFileError("no paired test slices in " + ", ".join(v.path for p in volume_pairs for v in p))
    return out


def _test_specs(spec: DataSpec) -> tuple[list[str], list[str]]:
    if spec.test_a or spec.test_b:
        if not (spec.test_a and spec.test_b):
            raise ValueError("give both --test_a and --test_b")
        return [spec.test_a], [spec.test_b]
    if spec.data_dir:
        files = _layout(spec)
        if not (files.test_a and files.test_b):
            raise ValueError(f"{spec.data_dir} has no paired test split (give --test_a and --test_b)")
        return files.test_a, files.test_b
    raise ValueError("no paired test data: give --test_a and --test_b, or a --data_dir with a test split")


def test_volume_pairs(spec: DataSpec) -> list[tuple[readers.Volume, readers.Volume]]:
    """The (T1, T2) test volumes paired by subject id; one volume on each side is a pair whatever its name."""
    specs_a, specs_b = _test_specs(spec)
    vols_a = [v for path in specs_a for v in readers.read_path(path, spec.on_bad_file)]
    vols_b = [v for path in specs_b for v in readers.read_path(path, spec.on_bad_file)]
    if len(vols_a) == 1 and len(vols_b) == 1:
        if vols_a[0].subject != vols_b[0].subject:
            logging.info("one test volume per contrast: pairing %s with %s", vols_a[0].path, vols_b[0].path)
        return [(vols_a[0], vols_b[0])]
    pairs = layouts.pair_volumes(vols_a, vols_b)
    if not pairs:
        ids = [", ".join(sorted({v.subject for v in vols})[:10]) for vols in (vols_a, vols_b)]
        raise readers.BadFileError(
            f"no T1/T2 test volumes with the same subject id in {', '.join(specs_a + specs_b)}: T1 ids {ids[0]}; "
            f"T2 ids {ids[1]}; name a subject's two files alike (sub-01_T1w/sub-01_T2w, case7_t1/case7_t2, "
            "IXI002-...-T1/IXI002-...-T2, <case>-t1n/<case>-t2w) or give one file per contrast")
    return pairs


def _on_grids(volumes: tuple, register: str, grids) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(T1 data, T2 data) on each grid asked for; empty when the pair cannot be compared (warned)."""
    without_geometry = any(resample.axial_affine(v) is None for v in volumes)  # images: only the shape can match
    if register == "none" or without_geometry or (register == "world" and resample.same_grid(*volumes)):
        if volumes[0].data.shape != volumes[1].data.shape:
            logging.warning("skipping pair %s / %s: shapes %s and %s differ (resampling needs --register=world or rigid and scanner geometry)",
                            volumes[0].path, volumes[1].path, volumes[0].data.shape, volumes[1].data.shape)
            return {}
        return {grid: (volumes[0].data, volumes[1].data) for grid in grids}
    logging.info("%s and %s: resampling the reference onto the source's grid (%s, trilinear)", volumes[0].path,
                 volumes[1].path, "scanner coordinates" if register == "world" else "rigid registration")
    out = {}
    for grid in grids:
        moved = resample.resample_like(volumes[1 - grid], volumes[grid], register)
        out[grid] = (volumes[0].data, moved) if grid == 0 else (moved, volumes[1].data)
    return out
