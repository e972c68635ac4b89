"""The ventricles' brightness, which a bare intensity change gets wrong: T1 -> T2 must make CSF brighter than white
matter, T2 -> T1 the reverse.

The masks come from the real pair: CSF is bright in the real T2 and dark in the real T1, white matter the reverse,
both taken in the central half of each slice so that the CSF over the cortex and the scalp do not count. The ratio
of an image's mean in the CSF to its mean in white matter is far above 1 for a real T2 and far below 1 for a real
T1 (benchmarks/real_scans.py: 3.65 and 0.44 on the shared BraTS case's slices 60-100, 3.90 and 0.30 on IXI002).

A second number says why a translation gets them wrong: the rank correlation of its output with its source in the
central half of the head. T1 and T2 order the brain's tissues in reverse (white matter > grey matter > CSF against
CSF > grey matter > white matter), so a real pair's correlation is near 0 or below; a translation that only
re-maps intensities and keeps their order (as histogram matching does) is near +1.

A third says whether a translation tells CSF from the other tissues that are dark in T1: bone, air spaces and
vessels are dark in T2 as well, so a real T2's mean there over its mean in the CSF is far below 1; a T1 -> T2
translation that takes every dark T1 pixel for CSF makes that ratio near 1 (the bright skull base and skull ring
of docs/cohort.md).
"""

import numpy as np
from scipy import stats

BRIGHT = 0.6  # on the [0, 1] scale of data/preprocess.normalize
DARK = 0.35
HEAD = 0.1


def tissue_masks(t1: np.ndarray, t2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(CSF, white matter) boolean masks of [..., H, W] real T1 and T2 slices in [0, 1] on one grid."""
    centre = central_half(t1.shape)
    return centre & (t2 > BRIGHT) & (t1 < DARK), centre & (t1 > BRIGHT) & (t2 < DARK)


def dark_tissue_masks(t1: np.ndarray, t2: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dark in both contrasts, CSF) boolean masks of real T1 and T2 slices in [0, 1] on one grid, inside `head`
    (the whole head: the skull and the skull base are at its edge)."""
    dark_in_t1 = head & (t1 < DARK)
    return dark_in_t1 & (t2 < DARK), dark_in_t1 & (t2 > BRIGHT)


def csf_to_white_matter(image: np.ndarray, csf: np.ndarray, white_matter: np.ndarray) -> float:
    """The image's mean in the CSF over its mean in white matter, pooled over every slice given."""
    return _mean_ratio(image, (csf, "CSF"), (white_matter, "white matter"))


def dark_to_csf(image: np.ndarray, dark: np.ndarray, csf: np.ndarray) -> float:
    """The image's mean where both real contrasts are dark over its mean in the CSF, pooled over every slice."""
    return _mean_ratio(image, (dark, "dark tissue"), (csf, "CSF"))


def _mean_ratio(image: np.ndarray, numerator: tuple[np.ndarray, str], denominator: tuple[np.ndarray, str]) -> float:
    (top, top_name), (bottom, bottom_name) = numerator, denominator
    if not top.any() or not bottom.any():
        raise ValueError(f"no {top_name} ({top.sum()} pixels) or no {bottom_name} ({bottom.sum()} pixels) to compare")
    return float(image[top].mean() / image[bottom].mean())


def central_half(shape: tuple[int, ...]) -> np.ndarray:
    """The central half (in height and width) of each [..., H, W] slice."""
    height, width = shape[-2:]
    centre = np.zeros(shape, bool)
    centre[..., height // 4:3 * height // 4, width // 4:3 * width // 4] = True
    return centre


def central_head(source: np.ndarray) -> np.ndarray:
    """The pixels of the central half where the source is above HEAD (not air)."""
    return central_half(source.shape) & (source > HEAD)


def rank_correlation_with_source(source: np.ndarray, image: np.ndarray) -> float:
    """Spearman's rank correlation between a source and an image of it over `central_head(source)`."""
    region = central_head(source)
    return float(stats.spearmanr(source[region], image[region])[0])
