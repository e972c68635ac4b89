"""Which pixels are air, which are head, and which mask files belong to which test volume.

Air (the rule translate.py, evaluate.py and the exported translate_raw apply to their outputs):
the pixels of a normalised [0, 1] slice at or below the background level that are connected
(4-neighbour) to the slice's border. When the border's median is above AIR_MAX_MEDIAN the slice
has no air (the head fills the field of view). Otherwise:
* skull-stripped data: the border is exact zeros and the zero fill meets tissue, so the level is 0
  and the air is exactly the border-connected zeros;
* raw data: the level is the border's median plus AIR_MAD_FACTOR median absolute deviations (the
  noise floor), at least AIR_MIN_LEVEL (the air next to the head carries ghosting and partial-volume
  signal above the far noise) and at most AIR_MAX_LEVEL.
A raw scan resampled or padded with zeros (IXI's and BrainWeb's slices) also has an exact-zero
border; the ring of pixels just inside the border-connected zero fill tells it apart: when the
ring's median is at most AIR_RING_MAX_MEDIAN it is scanner noise, not tissue, and the slice is raw.
Because only border-connected pixels count, dark tissue enclosed by the head (ventricles, CSF) is
never air. models/serving.py computes the same rule in the graph, bit for bit.

Head (the `auto` mask of the `_fg` metrics): the pixels above HEAD_THRESHOLD of the normalised
target slice, the largest connected component, holes filled.
"""

import numpy as np
from scipy import ndimage

from data import readers, resample

AIR_MAD_FACTOR = np.float32(6.0)
AIR_MAX_LEVEL = np.float32(0.1)
# Measured on the shared scans: IXI002's noise floor is at 0.005-0.009, but the band next to its head at
# 0.007-0.05; the synthetic phantoms' levels are 0.035-0.098 and the BrainWeb slices' 0.021-0.034.
AIR_MIN_LEVEL = np.float32(0.03)
AIR_MAX_MEDIAN = np.float32(0.05)
# The ring inside zero fill: medians measured 0.0017 (IXI002 T1) and 0.0042 (BrainWeb T1) where it is noise,
# at least 0.058 on every BraTS slice where it is tissue.
AIR_RING_MAX_MEDIAN = np.float32(0.025)
HEAD_THRESHOLD = 0.1
MASK_RULES = ("auto", "nonzero", "none")  # or a path to mask files


def border_pixels(unit: np.ndarray) -> np.ndarray:
    """First and last row, then first and last column without the corners (serving.py takes the same set)."""
    return np.concatenate([unit[0], unit[-1], unit[1:-1, 0], unit[1:-1, -1]])


def border_connected(candidate: np.ndarray) -> np.ndarray:
    """The pixels of a boolean image that are 4-connected to its border."""
    labels, _ = ndimage.label(candidate)  # 4-neighbour connectivity
    touching = np.unique(border_pixels(labels))
    return np.isin(labels, touching[touching > 0])


def air_level(unit: np.ndarray) -> np.float32 | None:
    """The background level of a [0, 1] slice (see the module docstring); None when the slice has no air."""
    unit = np.asarray(unit, np.float32)
    border = border_pixels(unit)
    median = np.percentile(border, 50)
    if median > AIR_MAX_MEDIAN:
        return None
    deviation = np.percentile(np.abs(border - median), 50)
    level = np.minimum(median + AIR_MAD_FACTOR * deviation, AIR_MAX_LEVEL)
    if level == 0:  # exact zero fill: skull-stripped unless the ring just inside it is noise
        fill = border_connected(unit <= 0)
        ring = unit[ndimage.binary_dilation(fill) & ~fill]  # 4-neighbours of the fill, outside it
        if ring.size == 0 or np.percentile(ring, 50) > AIR_RING_MAX_MEDIAN:
            return level
    return np.maximum(level, AIR_MIN_LEVEL)


def air_mask(unit: np.ndarray) -> np.ndarray:
    """True where a [0, 1] slice is air: at the background level and connected to the border."""
    unit = np.asarray(unit, np.float32)
    level = air_level(unit)
    if level is None:
        return np.zeros(unit.shape, bool)
    return border_connected(unit <= level)


def head_mask(unit: np.ndarray, threshold: float = HEAD_THRESHOLD) -> np.ndarray:
    """The head of a [0, 1] slice: above `threshold`, the largest connected component, holes filled."""
    labels, count = ndimage.label(np.asarray(unit) > threshold)
    if count == 0:
        return np.zeros(np.shape(unit), bool)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return ndimage.binary_fill_holes(labels == largest)


def describe_rule(rule: str) -> dict:
    """What metrics.json records about the mask of the _fg metrics."""
    if rule == "auto":
        return {"mask": "auto", "threshold": HEAD_THRESHOLD,
                "rule": "head mask of the normalised target slice: above the threshold, largest connected "
                        "component, holes filled"}
    if rule == "nonzero":
        return {"mask": "nonzero", "threshold": 0.0, "rule": "target > 0"}
    if rule == "none":
        return {"mask": "none", "threshold": None, "rule": "every pixel (_fg equals the full-image metric)"}
    return {"mask": rule, "threshold": None, "rule": "mask files matched to the test volumes, inside where > 0"}


def foreground(rule: str, target: np.ndarray, given: np.ndarray | None) -> np.ndarray:
    """The pixels a _fg metric averages over, for a normalised target slice and the mask file's slice (if any)."""
    if rule == "auto":
        return head_mask(target)
    if rule == "nonzero":
        return np.asarray(target) > 0
    if rule == "none":
        return np.ones(np.shape(target), bool)
    if given is None:
        raise ValueError(f"--mask={rule}: the test slices carry no mask")
    return given


def match_mask(masks: list[readers.Volume], volumes: tuple[readers.Volume, ...], pairs: int) -> readers.Volume:
    """The mask file of a test pair: the one whose subject id (or stem, up to a separator) is the pair's subject;
    a single mask file serves a single pair. Raises BadFileError naming the files when there is none."""
    subjects = {v.subject for v in volumes}
    found = [m for m in masks if m.subject in subjects or any(
        readers.file_stem(m.path).startswith(s) and readers.file_stem(m.path)[len(s):][:1] in ("-", "_", ".")
        for s in subjects)]
    if len(found) == 1 or (not found and len(masks) == 1 and pairs == 1):
        return (found or masks)[0]
    what = "several mask files" if found else "no mask file"
    raise readers.BadFileError(
        f"{volumes[0].path}: {what} for subject {'/'.join(sorted(subjects))} among "
        f"{', '.join(m.path for m in (found or masks))}; name each mask file with its subject id (e.g. "
        f"{sorted(subjects)[0]}_mask.nii.gz)")


def mask_on_grid(mask: readers.Volume, fixed: readers.Volume) -> np.ndarray:
    """The mask (inside where > 0) on `fixed`'s axial grid: as is on the same grid, else resampled by scanner
    coordinates. Raises BadFileError when the grids differ and a file has no geometry."""
    if resample.same_grid(fixed, mask):
        return mask.data > 0
    if resample.axial_affine(mask) is None or resample.axial_affine(fixed) is None:
        raise readers.BadFileError(f"{mask.path}: mask of shape {mask.data.shape} does not match {fixed.path} "
                                   f"(shape {fixed.data.shape}) and there is no scanner geometry to resample it")
    inside = readers.Volume(mask.path, mask.kind, (mask.data > 0).astype(np.float32), mask.subject, mask.meta)
    return resample.resample_like(inside, fixed) >= 0.5
