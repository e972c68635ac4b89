"""Non-learned predictions a translation must beat: histogram matching, and the best pixel-wise intensity map.

* baseline_histogram: the source slice histogram-matched to the pooled intensities of the target
  domain's training slices (on their original grids). Unpaired like the CycleGAN, and the classic
  non-learned translation: a model below it has learnt nothing spatial. The algorithm is
  scikit-image's `exposure.match_histograms` (each distinct source value's cumulative frequency
  looked up, linearly interpolated, in the reference's), with the reference's distinct values and
  their cumulative frequencies computed once for all slices.
* oracle_intensity_map: for each test slice pair, the mapping from source intensity to target
  intensity that minimises the squared error on that very pair: the mean target value per source
  intensity bin (ORACLE_BINS equal bins of [0, 1]). It sees the answer, so it is a ceiling, not a
  method: the best any translation that maps intensities without looking at neighbours can do.
  A model above it uses anatomy, not just contrast.
"""

import dataclasses

import numpy as np

ORACLE_BINS = 256


@dataclasses.dataclass(frozen=True)
class HistogramReference:
    """A pooled intensity distribution: its distinct values and their cumulative frequencies."""

    values: np.ndarray
    quantiles: np.ndarray


def histogram_reference(images: list[np.ndarray]) -> HistogramReference:
    pooled = np.concatenate([np.ravel(image) for image in images])
    values, counts = np.unique(pooled, return_counts=True)
    return HistogramReference(values, np.cumsum(counts) / pooled.size)


def match_histogram(source: np.ndarray, reference: HistogramReference) -> np.ndarray:
    """`source` with its intensity distribution mapped onto the reference's (float32, source's shape)."""
    values, lookup, counts = np.unique(np.ravel(source), return_inverse=True, return_counts=True)
    matched = np.interp(np.cumsum(counts) / np.size(source), reference.quantiles, reference.values)
    return matched[lookup].reshape(np.shape(source)).astype(np.float32)


def oracle_intensity_map(source: np.ndarray, target: np.ndarray, bins: int = ORACLE_BINS) -> np.ndarray:
    """The target's mean in each source-intensity bin, painted at every source pixel of the bin (float32)."""
    index = np.minimum((np.asarray(source, np.float64) * bins).astype(int), bins - 1).ravel()
    totals = np.bincount(index, weights=np.asarray(target, np.float64).ravel(), minlength=bins)
    counts = np.bincount(index, minlength=bins)
    means = totals / np.maximum(counts, 1)
    return means[index].reshape(np.shape(source)).astype(np.float32)
