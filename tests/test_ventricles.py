"""The ventricle measure of the README's second real-data table (evaluation/ventricles.py)."""

import nibabel as nib
import numpy as np
import pytest

from data import preprocess
from evaluation.ventricles import (csf_to_white_matter, dark_tissue_masks, dark_to_csf, rank_correlation_with_source,
                                  tissue_masks)

# A 64 x 64 phantom: (T1, T2) per tissue, as the two contrasts order them.
CSF, WHITE_MATTER, GREY_MATTER = (0.2, 0.95), (0.8, 0.25), (0.5, 0.5)


def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1, T2 and the true CSF and white-matter masks inside the central half (rows and columns 16-47). Outside it, a
    strip of CSF over the 'cortex' that the measure must leave out."""
    t1, t2 = np.full((64, 64), GREY_MATTER[0]), np.full((64, 64), GREY_MATTER[1])
    csf, white_matter = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    csf[28:36, 28:36] = True  # a ventricle
    white_matter[20:44, 20:44] = True
    white_matter[28:36, 28:36] = False
    cortex_csf = np.zeros((64, 64), bool)
    cortex_csf[2:6, :] = True
    for mask, (v1, v2) in ((csf | cortex_csf, CSF), (white_matter, WHITE_MATTER)):
        t1[mask], t2[mask] = v1, v2
    return t1, t2, csf, white_matter


def test_masks_are_the_ventricle_and_white_matter_of_the_central_half():
    t1, t2, csf, white_matter = phantom()
    found_csf, found_white_matter = tissue_masks(t1, t2)
    assert np.array_equal(found_csf, csf) and np.array_equal(found_white_matter, white_matter)


def test_real_contrasts_are_far_on_either_side_of_1_and_a_synthetic_image_is_scored_by_its_own_values():
    t1, t2, csf, white_matter = phantom()
    assert csf_to_white_matter(t2, csf, white_matter) == pytest.approx(CSF[1] / WHITE_MATTER[1])  # 3.8
    assert csf_to_white_matter(t1, csf, white_matter) == pytest.approx(CSF[0] / WHITE_MATTER[0])  # 0.25
    synthetic = np.random.default_rng(0).uniform(0, 1, (64, 64))
    assert csf_to_white_matter(synthetic, csf, white_matter) == pytest.approx(
        np.sum(synthetic * csf) / csf.sum() / (np.sum(synthetic * white_matter) / white_matter.sum()))


def test_slices_are_pooled_pixel_by_pixel_not_averaged_per_slice():
    t1, t2, csf, white_matter = phantom()
    small_csf = np.zeros_like(csf)
    small_csf[30:32, 30:32] = True  # 4 pixels against the first slice's 64
    image = np.stack([np.where(csf, 1.0, 0.5), np.where(small_csf, 3.0, 0.5)])
    pooled = csf_to_white_matter(image, np.stack([csf, small_csf]), np.stack([white_matter, white_matter]))
    assert pooled == pytest.approx((64 * 1.0 + 4 * 3.0) / 68 / 0.5)  # per-slice means would give (2 + 6) / 2 = 4


def test_no_csf_is_an_error_not_a_nan():
    t1, t2, _, white_matter = phantom()
    with pytest.raises(ValueError, match=r"no CSF \(0 pixels\)"):
        csf_to_white_matter(t2, np.zeros_like(white_matter), white_matter)


def test_bone_is_told_from_csf_by_the_real_pair_and_a_bone_brightening_translation_scores_near_1():
    """A skull ring (dark in both contrasts) round the phantom's brain, air outside it: the dark mask is the ring
    only (not the air, not the ventricle), and a translation that makes the ring as bright as the CSF is at 1."""
    t1, t2, csf, _ = phantom()
    ring = np.zeros((64, 64), bool)
    ring[8:56, 8:56], ring[10:54, 10:54] = True, False
    air = np.zeros((64, 64), bool)
    air[:, :4] = True
    for mask, value in ((ring, 0.1), (air, 0.0)):
        t1[mask], t2[mask] = value, value
    cortex_csf = np.zeros((64, 64), bool)
    cortex_csf[2:6, 4:] = True  # the phantom's CSF strip, where the air does not cover it
    dark, found_csf = dark_tissue_masks(t1, t2, ~air)
    assert np.array_equal(dark, ring) and np.array_equal(found_csf, csf | cortex_csf)
    assert dark_to_csf(t2, dark, found_csf) == pytest.approx(0.1 / CSF[1])  # a real T2: far below 1
    bone_as_csf = np.where(ring, CSF[1], t2)
    assert dark_to_csf(bone_as_csf, dark, found_csf) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"no dark tissue \(0 pixels\)"):
        dark_to_csf(t2, np.zeros_like(dark), found_csf)


def test_on_the_shared_brats_case_real_t2_is_above_3_and_real_t1_below_half(shared_data):
    case = shared_data / "brats" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000"
    t1, t2 = (preprocess.normalize(np.asarray(nib.load(f"{case}-{suffix}.nii.gz").dataobj)) for suffix in ("t1n", "t2w"))
    t1, t2 = (np.moveaxis(volume[:, :, 60:101:5], -1, 0) for volume in (t1, t2))  # [slices, H, W], axial
    csf, white_matter = tissue_masks(t1, t2)
    assert csf.sum() > 500 and white_matter.sum() > 5000
    assert csf_to_white_matter(t2, csf, white_matter) > 3.0
    assert csf_to_white_matter(t1, csf, white_matter) < 0.5


def ranks_correlation_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's correlation for values without ties: Pearson's of the ranks (NumPy only)."""
    rank_x, rank_y = (np.argsort(np.argsort(v)).astype(float) for v in (x, y))
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def test_rank_correlation_is_taken_in_the_central_head_only():
    rng = np.random.default_rng(1)
    source = rng.uniform(0.2, 1.0, (2, 64, 64))
    source[:, :, :24] = 0.0  # air, partly inside the central half (columns 16-47)
    inside = np.zeros(source.shape, bool)
    inside[:, 16:48, 24:48] = True
    hump = np.where(inside, np.sin(3 * source), 1.0 - source)  # outside: reversed, which must not count
    assert rank_correlation_with_source(source, source) == pytest.approx(1.0)
    assert rank_correlation_with_source(source, np.where(inside, 1.0 - source, source)) == pytest.approx(-1.0)
    assert rank_correlation_with_source(source, hump) == pytest.approx(
        ranks_correlation_reference(source[inside], hump[inside]))


def test_the_real_brats_pair_is_far_from_keeping_the_order_of_its_source(shared_data):
    case = shared_data / "brats" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000"
    t1, t2 = (preprocess.normalize(np.asarray(nib.load(f"{case}-{suffix}.nii.gz").dataobj)) for suffix in ("t1n", "t2w"))
    t1, t2 = (np.moveaxis(volume[:, :, 60:101:5], -1, 0) for volume in (t1, t2))
    assert rank_correlation_with_source(t1, t2) < 0.2  # a histogram-matched T1 would be 1
