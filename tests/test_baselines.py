"""The non-learned rows: histogram matching of the head against scikit-image, and the oracle intensity map as a
ceiling."""

import numpy as np
import pytest
import skimage.exposure

from data import datasets, masks, phantom, preprocess
from evaluation import baselines

BRATS = "brats/BraTS-GLI-00001-000/BraTS-GLI-00001-000-{}.nii.gz"


@pytest.mark.parametrize("reverse", [False, True], ids=["histogram", "reversed_histogram"])
def test_histogram_matching_of_the_head_equals_scikit_image_and_keeps_air_at_zero(reverse):
    t1, _ = phantom.paired_test(2, 1)
    _, t2_train = phantom.unpaired_train(3, 2)
    reference_slices = [preprocess.normalize(image) for image in t2_train]
    reference = baselines.histogram_reference(reference_slices)
    pooled = np.concatenate([s[~masks.air_mask(s)] for s in reference_slices])
    assert 0.2 * sum(s.size for s in reference_slices) < pooled.size < 0.9 * sum(s.size for s in reference_slices)
    for image in t1:
        source = preprocess.normalize(image)
        air = masks.air_mask(source)
        head = source[~air].astype(np.float64)  # the head's pixels, 1-D; reversed in float64, where no two values merge
        head = 1.0 - head if reverse else head
        expected = skimage.exposure.match_histograms(head, pooled)
        matched = baselines.match_histogram(source, reference, reverse)
        # Same algorithm, same float64 interpolation, both rounded to float32 at the end.
        np.testing.assert_array_equal(matched[~air], expected.astype(np.float32))
        assert np.all(matched[air] == 0) and air.mean() > 0.2
        assert np.abs(expected - source[~air]).max() > 0.1  # the check is not trivially met


def mse(a, b) -> float:
    return float(np.mean((np.asarray(a, np.float64) - b) ** 2))


# The oracle's bins cost at most the spread of the source within a bin: (1 / bins)^2 / 12 of MSE against
# a mapping that varies inside a bin (identity, histogram matching).
BIN_ALLOWANCE = (1 / baselines.ORACLE_BINS) ** 2 / 12


def slice_pairs(shared_data):
    """Phantom pairs and, where present, every 10th slice pair of the shared BraTS case."""
    t1, t2 = phantom.paired_test(4, 5)
    pairs = [(preprocess.normalize(a), preprocess.normalize(b)) for a, b in zip(t1, t2)]
    if shared_data is not None:
        spec = datasets.DataSpec(test_a=str(shared_data / BRATS.format("t1n")),
                                 test_b=str(shared_data / BRATS.format("t2w")))
        pairs += [(a.original, b.original) for a, b in datasets.test_pairs(spec)[::10]]
    return pairs


@pytest.fixture
def maybe_shared_data(request):
    try:
        return request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        return None


def test_oracle_is_at_least_as_good_as_identity_and_both_histogram_matchings(maybe_shared_data):
    _, t2_train = phantom.unpaired_train(3, 2)
    reference = baselines.histogram_reference([preprocess.normalize(image) for image in t2_train])
    pairs = slice_pairs(maybe_shared_data)
    for source, target in pairs:
        oracle = mse(baselines.oracle_intensity_map(source, target), target)
        assert oracle <= mse(source, target) + BIN_ALLOWANCE
        assert oracle < 0.5 * mse(source, target)  # T1 -> T2 is far from identity, the map is not
        # Keeping air at 0, as the evaluation does with the air mask on: the best of such maps.
        air = masks.air_mask(source)
        air_kept_map = baselines.oracle_intensity_map(source, target, air)
        assert np.all(air_kept_map[air] == 0)
        air_kept = mse(air_kept_map, target)
        for reverse in (False, True):
            assert air_kept <= mse(baselines.match_histogram(source, reference, reverse), target) + BIN_ALLOWANCE
        assert air_kept <= mse(np.where(air, 0, source), target) + BIN_ALLOWANCE


def test_oracle_is_the_per_bin_mean():
    source = np.array([[0.0, 0.001, 0.002], [0.5, 0.5, 0.999], [1.0, 0.5, 0.5]])
    target = np.array([[1.0, 0.0, 0.0], [0.2, 0.4, 0.3], [0.5, 0.1, 0.1]])  # bin 0: mean 1/3, median 0
    np.testing.assert_allclose(baselines.oracle_intensity_map(source, target),
                               [[1 / 3] * 3, [0.2, 0.2, 0.4], [0.4, 0.2, 0.2]], rtol=1e-6)
