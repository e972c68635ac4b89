"""Non-learned predictions a translation must beat: histogram matching, and the best pixel-wise intensity map.

* baseline_histogram: the head of the source slice (every pixel that is not air, data/masks.air_mask)
  histogram-matched to the pooled head intensities of the target domain's training slices (on their
  original grids); air stays 0, as in the model's outputs. Unpaired like the CycleGAN, and the classic
  non-learned translation: a model below it has learnt nothing spatial. Air is left out on both sides
  because its share differs between scans (a skull-stripped reference is mostly zeros): matched with
  it, a raw scan's darker half of the head would be mapped to the reference's air. The algorithm is
  scikit-image's `exposure.match_histograms` (each distinct source value's cumulative frequency
  looked up, linearly interpolated, in the reference's), with the reference's distinct values and
  their cumulative frequencies computed once for all slices.
* baseline_reversed_histogram: the same with the head's intensity order reversed first (unit x -> 1 - x,
  then matched): T1 and T2 order the brain's tissues in reverse (CSF dark in T1, bright in T2), so this is
  what that prior alone gives, and what --inversion_prior starts the generators from. A model trained with
  the prior must beat it to have learnt anything beyond it.
* oracle_intensity_map: for each test slice pair, the mapping from source intensity to target
  intensity that minimises the squared error on that very pair: the mean target value per source
  intensity bin (ORACLE_BINS equal bins of [0, 1]). It sees the answer, so it is a ceiling, not a
  method: the best any translation that maps intensities without looking at neighbours can do.
  A model above it uses anatomy, not just contrast. Given the source's air (as the evaluation does
  when the model's outputs are air-masked), it is fitted on the other pixels and is 0 in the air: then
  it is the best of all predictions that keep air at 0 and map the head's intensities, histogram
  matching included.
"""

import dataclasses

import numpy as np

from data import masks

ORACLE_BINS = 256


@dataclasses.dataclass(frozen=True)
class HistogramReference:
    """A pooled intensity distribution: its distinct values and their cumulative frequencies."""

    values: np.ndarray
    quantiles: np.ndarray


def histogram_reference(images: list[np.ndarray]) -> HistogramReference:
    """The pooled intensities of the heads (the pixels that are not air) of [0, 1] `images`."""
    pooled = np.concatenate([np.asarray(image)[~masks.air_mask(image)] for image in images])
    values, counts = np.unique(pooled, return_counts=True)
    return HistogramReference(values, np.cumsum(counts) / pooled.size)


def match_histogram(source: np.ndarray, reference: HistogramReference, reverse: bool = False) -> np.ndarray:
    """The head of the [0, 1] slice `source` with its intensity distribution mapped onto the reference's, 0 in
    its air (float32, source's shape); with `reverse`, the head's intensity order is reversed first (1 - x)."""
    source = np.asarray(source)
    head = ~masks.air_mask(source)
    out = np.zeros(source.shape, np.float32)
    if head.any():
        values, lookup, counts = np.unique(source[head], return_inverse=True, return_counts=True)
        # A value's cumulative frequency; reversed, the share of the head at or above it.
        cumulative = np.cumsum(counts[::-1])[::-1] if reverse else np.cumsum(counts)
        matched = np.interp(cumulative / counts.sum(), reference.quantiles, reference.values)
        out[head] = matched[lookup]
    return out


def oracle_intensity_map(source: np.ndarray, target: np.ndarray, air: np.ndarray | None = None,
                         bins: int = ORACLE_BINS) -> np.ndarray:
    """The target's mean in each source-intensity bin, painted at every source pixel of the bin (float32);
    with the source's `air`, fitted outside it and 0 inside it."""
    fitted = np.ones(np.shape(source), bool) if air is None else ~np.asarray(air)
    index = np.minimum((np.asarray(source, np.float64) * bins).astype(int), bins - 1)
    totals = np.bincount(index[fitted], weights=np.asarray(target, np.float64)[fitted], minlength=bins)
    counts = np.bincount(index[fitted], minlength=bins)
    means = totals / np.maximum(counts, 1)
    return np.where(fitted, means[index], 0.0).astype(np.float32)
