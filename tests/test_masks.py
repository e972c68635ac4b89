"""Air masks (translate/evaluate/export outputs), head masks (`--mask=auto`) and mask files (`--mask=PATH`).

The reference air mask here is written independently of data/masks.py (scikit-image's labelling,
NumPy's median), and the in-graph version of models/serving.py must equal it bit for bit.
"""

import numpy as np
import pytest
import skimage.measure
import skimage.morphology
import tensorflow as tf
from scipy import ndimage

from data import datasets, masks, phantom, preprocess, readers
from data.readers import BadFileError
from models import serving

SIZE = 96
VENTRICLE = (slice(40, 56), slice(42, 54))  # inside the head, touching nothing but brain


def reference_border_connected(candidate: np.ndarray) -> np.ndarray:
    labels = skimage.measure.label(candidate, connectivity=1, background=0)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def reference_air(unit: np.ndarray) -> np.ndarray:
    """The documented air rule, independently: border median + 6 MADs, between 0.03 and 0.1, or 0 when the border
    is zero fill whose inner ring (just inside the border-connected zeros) has a median above 0.025; the pixels at
    or below the level that are border-connected (4-neighbour)."""
    unit = np.asarray(unit, np.float32)
    border = np.concatenate([unit[0], unit[-1], unit[1:-1, 0], unit[1:-1, -1]])
    median = np.float32(np.median(border))
    if median > np.float32(0.05):
        return np.zeros(unit.shape, bool)
    level = min(median + np.float32(6) * np.float32(np.median(np.abs(border - median))), np.float32(0.1))
    if level == 0:
        fill = reference_border_connected(unit <= 0)
        ring = unit[skimage.morphology.dilation(fill, skimage.morphology.diamond(1)) & ~fill]
        if not ring.size or np.median(ring) > np.float32(0.025):
            return fill
    return reference_border_connected(unit <= max(level, np.float32(0.03)))


def head_phantom(noise: float, seed: int = 0, scalp: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """A [0, 1] slice: an elliptic head (scalp ring, grey brain) with a ventricle darker than the air
    (exact 0), and Rician-like noise of `noise` outside. Returns (slice, true head)."""
    y, x = np.mgrid[:SIZE, :SIZE]
    radius = ((y - 48) / 38) ** 2 + ((x - 48) / 32) ** 2
    head = radius < 1
    image = np.where(radius < 0.8, 0.5, np.where(head, scalp, 0.0))
    image[VENTRICLE] = 0.0
    rng = np.random.default_rng(seed)
    air = np.hypot(rng.normal(0, noise, image.shape), rng.normal(0, noise, image.shape))
    return np.where(head, image, air).astype(np.float32), head


def zero_filled(unit: np.ndarray, width: int = 4) -> np.ndarray:
    """The slice with a frame of exact zeros at its border, as a raw scan resampled or padded onto a larger grid."""
    framed = np.zeros_like(unit)
    framed[width:-width, width:-width] = unit[width:-width, width:-width]
    return framed


def with_halo(unit: np.ndarray, head: np.ndarray, level: float = 0.025) -> np.ndarray:
    """A band of `level` in the air around the head (3 pixels wide), as ghosting and partial volume leave next to
    a raw scan's head, above its far noise floor."""
    band = ndimage.binary_dilation(head, iterations=3) & ~head
    return np.where(band, np.maximum(unit, np.float32(level)), unit)


@pytest.mark.parametrize("noise", [0.0, 0.03], ids=["skull_stripped", "noisy"])
def test_air_is_border_connected_background_and_keeps_a_dark_ventricle(noise):
    unit, head = head_phantom(noise)
    air = masks.air_mask(unit)
    assert not air[head].any()  # nothing inside the head, the ventricle (0, below any air level) included
    assert not air[VENTRICLE].any()
    if noise == 0:
        np.testing.assert_array_equal(air, ~head)  # every exact zero outside the head
    else:
        assert air[~head].mean() > 0.995  # the noise floor; a few noise peaks above the level stay
    np.testing.assert_array_equal(air, reference_air(unit))


@pytest.mark.parametrize("zero_fill", [False, True], ids=["noise_border", "zero_filled"])
def test_the_halo_next_to_a_raw_scans_head_is_air(zero_fill):
    """A raw scan's air next to the head sits above its far noise floor (here 0.025 in a 3-pixel band, against
    noise of 0.005): it is air too, with the border noisy or padded with zeros (IXI, BrainWeb)."""
    noisy, head = head_phantom(0.005)
    unit = with_halo(zero_filled(noisy) if zero_fill else noisy, head)
    air = masks.air_mask(unit)
    assert air[~head].mean() > 0.99  # the halo is 11 % of the air, the exact zeros (when filled) 27 %
    assert not air[head].any() and not air[VENTRICLE].any()
    np.testing.assert_array_equal(air, reference_air(unit))


@pytest.mark.parametrize("scalp", [0.06, 0.9])
def test_zero_fill_that_meets_tissue_keeps_only_the_zeros(scalp):
    """Skull-stripped data: the tissue next to the fill (as dark as 0.06, like the dimmest BraTS T2 edge; every
    other pixel of its outer rim partial-volumed to 0.01) is not noise, so the level stays 0 and the air is
    exactly the border-connected zeros: the dim rim is kept."""
    unit, head = head_phantom(0.0, scalp=scalp)
    rim = head & ~ndimage.binary_erosion(head)
    unit[rim & (np.indices(unit.shape).sum(axis=0) % 2 == 0)] = 0.01
    np.testing.assert_array_equal(masks.air_mask(unit), ~head)


def test_no_air_when_the_head_fills_the_border():
    """A slice cropped inside the head: dark CSF touching the border is tissue, not air."""
    unit = np.full((40, 40), 0.6, np.float32)
    unit[10:20, 0:20] = 0.0
    assert not masks.air_mask(unit).any()


@pytest.mark.parametrize("seed", range(4))
def test_in_graph_air_mask_equals_numpys_bit_for_bit(seed):
    t1, t2 = phantom.paired_test(2, seed)
    in_graph = tf.function(serving.air_mask)
    noisy, head = head_phantom(0.03, seed)
    quiet = with_halo(head_phantom(0.005, seed)[0], head)
    skull_stripped = head_phantom(0.0, seed, scalp=0.06)[0]
    for image in (*t1, *t2, noisy, zero_filled(noisy), quiet, zero_filled(quiet), skull_stripped):
        unit = preprocess.normalize(image)
        for shape in (unit, np.pad(unit, ((3, 20), (0, 9))), unit[:70, 30:]):
            np.testing.assert_array_equal(in_graph(tf.constant(shape)).numpy(), masks.air_mask(shape))


def test_in_graph_air_mask_compiles_with_xla():
    """Training on a GPU compiles the step, --train_air_mask's air mask included, with XLA (static shapes)."""
    noisy, head = head_phantom(0.005)
    unit = preprocess.normalize(zero_filled(with_halo(noisy, head)))
    compiled = tf.function(serving.air_mask, jit_compile=True)
    np.testing.assert_array_equal(compiled(tf.constant(unit)).numpy(), masks.air_mask(unit))


def test_auto_head_mask_covers_the_head_and_not_the_air():
    unit, head = head_phantom(0.03)
    unit[2:6, 2:6] = 0.8  # a bright marker in the air, apart from the head: not the largest component
    found = masks.head_mask(unit)
    assert not found[2:6, 2:6].any()
    assert found[head].mean() > 0.99  # the ventricle is a hole that is filled
    assert found[~head].mean() < 0.01
    assert masks.foreground("nonzero", unit, None)[~head].mean() > 0.99  # the old rule: the air noise counts


# ---------------------------------------------------------------- mask files


def two_subjects(root, write_nifti) -> dict[str, np.ndarray]:
    """sub-01 and sub-02, T1 and T2 folders, and a masks/ folder with a different mask per subject."""
    brains = {}
    for k in (1, 2):
        volume = np.zeros((32, 32, 4), np.float32)
        volume[6:26, 6:26] = 100.0 * k
        volume[10:22, 10:22] += 50
        write_nifti(root / "t1" / f"sub-0{k}_T1w.nii.gz", volume)
        write_nifti(root / "t2" / f"sub-0{k}_T2w.nii.gz", 2 * volume)
        brain = np.zeros(volume.shape, np.uint8)
        brain[8 + k : 24, 8:24 - k] = 1
        write_nifti(root / "masks" / f"sub-0{k}_brainmask.nii.gz", brain)
        brains[f"sub-0{k}"] = brain
    return brains


def test_mask_files_are_matched_to_their_volumes(tmp_path, write_nifti):
    brains = two_subjects(tmp_path, write_nifti)
    spec = datasets.DataSpec(test_a=str(tmp_path / "t1"), test_b=str(tmp_path / "t2"))
    pairs = datasets.test_pairs(spec, mask_path=str(tmp_path / "masks"))
    assert {a.subject for a, _ in pairs} == {"sub-01", "sub-02"}
    for a, b in pairs:
        expected = brains[a.subject][::-1, ::-1, a.index].T  # readers' axial layout of an RAS volume
        np.testing.assert_array_equal(a.mask, expected)
        np.testing.assert_array_equal(b.mask, expected)


def test_missing_mask_file_and_mismatched_mask_are_one_line_errors(tmp_path, write_nifti):
    two_subjects(tmp_path, write_nifti)
    spec = datasets.DataSpec(test_a=str(tmp_path / "t1"), test_b=str(tmp_path / "t2"))
    with pytest.raises(BadFileError, match="no usable images") as missing:
        datasets.test_pairs(spec, mask_path=str(tmp_path / "nowhere"))
    (tmp_path / "masks" / "sub-02_brainmask.nii.gz").unlink()
    with pytest.raises(BadFileError, match="no mask file for subject sub-02") as unmatched:
        datasets.test_pairs(spec, mask_path=str(tmp_path / "masks"))
    write_nifti(tmp_path / "png_like" / "sub-01_mask.nii.gz", np.ones((20, 20, 4), np.uint8))  # its own grid
    spec_one = datasets.DataSpec(test_a=str(tmp_path / "t1" / "sub-01_T1w.nii.gz"),
                                 test_b=str(tmp_path / "t2" / "sub-01_T2w.nii.gz"))
    from PIL import Image
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.ones((20, 20), np.uint8)).save(tmp_path / "flat" / "sub-01_mask.png")
    with pytest.raises(BadFileError, match="does not match") as mismatched:
        datasets.test_pairs(spec_one, mask_path=str(tmp_path / "flat"))
    for error in (missing, unmatched, mismatched):
        assert "\n" not in str(error.value)


def test_real_scans_noise_band_is_air_and_skull_stripped_air_is_the_zeros(shared_data):
    """IXI002's T1 and a BrainWeb T1 slice are raw scans padded with zeros: their noise band is air too. The BraTS
    case is skull-stripped: its air stays exactly the border-connected zeros on every slice."""
    raw = [shared_data / "ixi002-slice90" / "IXI002-Guys-0828-T1_slice90.nii.gz",
           sorted((shared_data / "mri-t1t2-slices" / "Tr1" / "TrainT1").glob("*.png"))[0]]
    for path in raw:
        (volume,) = readers.read_file(str(path))
        unit = preprocess.normalize(volume.data)[0]  # (slices, height, width), one slice
        air, head = masks.air_mask(unit), masks.head_mask(unit)
        zeros = reference_border_connected(unit <= 0)
        assert air[~head].mean() > zeros[~head].mean() + 0.05, path.name  # more than the zero fill
    brats = shared_data / "brats" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t2w.nii.gz"
    (volume,) = readers.read_file(str(brats))
    units = preprocess.normalize(volume.data)
    for index, unit in enumerate(units):
        if unit.any():
            np.testing.assert_array_equal(masks.air_mask(unit), reference_border_connected(unit <= 0), f"slice {index}")
