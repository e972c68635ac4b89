"""data/readers.py: every format read exactly, every bad file turned into a one-line BadFileError."""

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from data.readers import BadFileError, read_file, read_path, subject_from_name, to_original_nifti
from tests.helpers import write_dicom, write_png

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAMP = np.arange(4, dtype=np.uint8).reshape(2, 2)  # not constant, so no "constant image" warning


# ---------------------------------------------------------------- images

def test_8bit_png_folder_exact(tmp_path):
    images = [np.arange(12, dtype=np.uint8).reshape(3, 4) * k for k in (1, 2)]
    for k, image in enumerate(images):
        write_png(tmp_path / f"slice{k}.png", image)
    volumes = read_path(str(tmp_path))
    assert [v.subject for v in volumes] == ["slice0", "slice1"]
    for volume, image in zip(volumes, images):
        assert volume.kind == "image" and volume.data.dtype == np.float32
        np.testing.assert_array_equal(volume.data, image[None].astype(np.float32))
        assert volume.meta == {"mode": "L"}


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_value_survives_exactly(tmp_path, suffix):
    image = np.array([[0, 40000], [65535, 1]], np.uint16)
    (volume,) = read_path(str(write_png(tmp_path / f"deep{suffix}", image)))
    assert volume.data[0, 0, 1] == 40000.0
    np.testing.assert_array_equal(volume.data[0], image.astype(np.float32))
    assert volume.meta["mode"].startswith("I;16")


def test_big_endian_16bit_and_float_tiff(tmp_path):
    values = np.array([[1, 40000], [300, 65535]], np.uint16)
    Image.frombytes("I;16B", (2, 2), values.astype(">u2").tobytes()).save(tmp_path / "big.tif")
    Image.fromarray(np.array([[0.5, -3.25], [1e6, 7]], np.float32)).save(tmp_path / "float.tif")
    big, floating = read_path(str(tmp_path))
    assert big.meta == {"mode": "I;16B"}
    np.testing.assert_array_equal(big.data[0], values.astype(np.float32))
    assert floating.meta["mode"] == "F"
    np.testing.assert_array_equal(floating.data[0], [[0.5, -3.25], [1e6, 7]])


def test_rgb_becomes_luma_with_one_warning(tmp_path, absl_warnings):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (10, 20, 30)
    path = write_png(tmp_path / "colour.png", rgb)
    (volume,) = read_path(str(path))
    expected = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(volume.data[0], expected, rtol=1e-6)
    assert [m for m in absl_warnings() if "colour.png" in m and "gray" in m] != []
    assert len(absl_warnings()) == 1


def test_multipage_tiff_is_a_stack(tmp_path):
    pages = [Image.fromarray(np.full((3, 4), v, np.uint16)) for v in (100, 50000)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    (volume,) = read_path(str(path))
    assert volume.data.shape == (2, 3, 4)
    assert volume.data[1, 0, 0] == 50000.0


def test_constant_image_is_read_and_reported(tmp_path, absl_warnings):
    (volume,) = read_path(str(write_png(tmp_path / "flat.png", np.full((4, 4), 7, np.uint8))))
    assert volume.data.shape == (1, 4, 4)
    assert any("flat.png" in m and "constant" in m for m in absl_warnings())


# ---------------------------------------------------------------- DICOM

def test_dicom_series_sorted_along_normal_with_rescale(tmp_path):
    """Shuffled InstanceNumbers and file names; sagittal orientation so z alone would be wrong."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4000, size=(5, 3, 4))
    row, col = np.array([0.0, 1, 0]), np.array([0.0, 0, -1])
    normal = np.cross(row, col)
    instances = random.Random(1).sample(range(1, 6), 5)
    uid = generate_uid()
    order = random.Random(2).sample(range(5), 5)
    for k in order:  # files written (and named) in shuffled order, without extension
        write_dicom(tmp_path / f"IM{order.index(k):04d}", stored[k], uid, instances[k],
                    position=10 + 2.5 * k * normal, orientation=(*row, *col), slope=2, intercept=-100)
    (volume,) = read_path(str(tmp_path))
    assert volume.kind == "dicom" and volume.path == str(tmp_path) and volume.subject == "P001"
    np.testing.assert_array_equal(volume.data, stored.astype(np.float32) * 2 - 100)
    positions = [np.dot(d.ImagePositionPatient, normal) for d in volume.meta["datasets"]]
    assert positions == sorted(positions)


def test_dicom_instance_number_fallback(tmp_path):
    stored = np.arange(3 * 2 * 2).reshape(3, 2, 2)
    uid = generate_uid()
    for k in (2, 0, 1):
        write_dicom(tmp_path / f"file{2 - k}.dcm", stored[k], uid, instance=k + 1)
    (volume,) = read_path(str(tmp_path))
    np.testing.assert_array_equal(volume.data, stored.astype(np.float32))


def test_two_series_in_one_folder(tmp_path):
    for name, uid in (("a", generate_uid()), ("b", generate_uid())):
        for k in range(3):
            write_dicom(tmp_path / f"{name}{k}", np.full((2, 2), k), uid, k + 1, position=(0, 0, k))
    volumes = read_path(str(tmp_path))
    assert len(volumes) == 2
    assert all(v.data.shape == (3, 2, 2) for v in volumes)


def test_series_with_mixed_shapes_is_bad(tmp_path):
    uid = generate_uid()
    write_dicom(tmp_path / "s1", np.zeros((2, 2)), uid, 1)
    write_dicom(tmp_path / "s2", np.zeros((3, 3)), uid, 2)
    with pytest.raises(BadFileError, match="mixes slice shapes"):
        read_path(str(tmp_path), on_bad_file="error")


def test_monochrome1_inverted(tmp_path):
    stored = np.array([[0, 10], [20, 30]])
    (volume,) = read_file(str(write_dicom(tmp_path / "m1.dcm", stored, generate_uid(), 1, photometric="MONOCHROME1")))
    np.testing.assert_array_equal(volume.data[0], 30 - stored)


def test_dicom_without_pixel_data_is_bad(tmp_path, absl_warnings):
    path = write_dicom(tmp_path / "nopixels", np.zeros((2, 2)), generate_uid(), 1, with_pixels=False)
    with pytest.raises(BadFileError, match="nopixels.*pixel data"):
        read_file(str(path))
    write_dicom(tmp_path / "good", RAMP, generate_uid(), 1)
    assert len(read_path(str(tmp_path))) == 1
    assert any("nopixels" in m for m in absl_warnings())


def test_pydicom_sample_file():
    path = pydicom.data.get_testdata_file("MR_small.dcm")
    if path is None:
        pytest.skip("pydicom test file MR_small.dcm absent")
    (volume,) = read_file(path)
    np.testing.assert_array_equal(volume.data[0], pydicom.dcmread(path).pixel_array.astype(np.float32))


def test_dicomdir_is_not_an_image(tmp_path, absl_warnings):
    write_dicom(tmp_path / "DICOMDIR", np.zeros((2, 2)), generate_uid(), 1, with_pixels=False)
    write_dicom(tmp_path / "img", RAMP, generate_uid(), 1)
    assert len(read_path(str(tmp_path), on_bad_file="error")) == 1
    assert absl_warnings() == []


# ---------------------------------------------------------------- NIfTI

def test_nifti_non_canonical_matches_nibabel_canonical(tmp_path, write_nifti):
    data = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    # voxel axes: i -> posterior, j -> inferior, k -> left (a permuted, flipped, scaled affine)
    affine = np.array([[0, 0, -2.0, 10], [-1.5, 0, 0, 20], [0, -3.0, 0, 30], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "odd.nii.gz", data, affine)
    (volume,) = read_path(str(path))
    canonical = nib.as_closest_canonical(nib.load(path)).get_fdata(dtype=np.float32)
    assert volume.data.shape == (canonical.shape[2], canonical.shape[1], canonical.shape[0])
    for s in range(canonical.shape[2]):  # documented layout: row 0 anterior, column 0 right
        np.testing.assert_array_equal(volume.data[s], np.rot90(canonical[:, :, s], 1)[:, ::-1])
    np.testing.assert_array_equal(to_original_nifti(volume.data, volume.meta), data)


def test_nifti_anatomical_corner(tmp_path, write_nifti):
    """The right-anterior-superior corner lands in the last slice, top-left pixel, for any affine."""
    data = np.zeros((3, 4, 5), np.float32)
    data[0, 0, 0] = 1
    # i -> left, j -> inferior, k -> posterior: voxel (0, 0, 0) is the most right, superior, anterior
    affine = np.array([[-1.0, 0, 0, 0], [0, 0, -1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    (volume,) = read_path(str(write_nifti(tmp_path / "corner.nii", data, affine)))
    assert volume.data.shape == (4, 5, 3)
    assert volume.data[-1, 0, 0] == 1 and volume.data.sum() == 1


@pytest.mark.parametrize("shape", [(5, 6), (5, 6, 1)])
def test_nifti_2d(tmp_path, write_nifti, shape):
    data = np.arange(30, dtype=np.float32).reshape(shape)
    path = write_nifti(tmp_path / "flat.nii.gz", data, LPS)
    (volume,) = read_path(str(path))
    np.testing.assert_array_equal(volume.data, data.reshape(5, 6).T[None])  # LPS: stored as DICOM lays it out
    np.testing.assert_array_equal(to_original_nifti(volume.data, volume.meta), data)


def test_nifti_4d_refused_single_volume_accepted(tmp_path, write_nifti):
    with pytest.raises(BadFileError, match=r"series\.nii\.gz: 4D NIfTI with 2 volumes"):
        read_file(str(write_nifti(tmp_path / "series.nii.gz", np.ones((3, 3, 2, 2), np.float32))))
    (volume,) = read_file(str(write_nifti(tmp_path / "one.nii.gz", np.ones((3, 3, 2, 1), np.float32))))
    assert volume.data.shape == (2, 3, 3)


def test_nan_replaced_with_warning(tmp_path, write_nifti, absl_warnings):
    data = np.ones((2, 2, 2), np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    (volume,) = read_path(str(write_nifti(tmp_path / "holes.nii.gz", data)))
    assert np.isfinite(volume.data).all() and volume.data.sum() == 6
    assert any("holes.nii.gz" in m and "NaN" in m for m in absl_warnings())


# ---------------------------------------------------------------- bad input and paths

def bad_files(folder: Path, write_nifti) -> list[Path]:
    """Zero-byte, truncated (.nii.gz and .nii), corrupt and truncated PNG, zero-byte .dcm files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.nii.gz").write_bytes(b"")
    for name in ("cut.nii.gz", "cut.nii"):
        whole = write_nifti(folder / name, np.ones((20, 20, 20), np.float32)).read_bytes()
        (folder / name).write_bytes(whole[: len(whole) // 2])
    (folder / "garbage.png").write_bytes(b"not a png at all")
    png = write_png(folder / "half.png", np.arange(4096, dtype=np.uint16).reshape(64, 64)).read_bytes()
    (folder / "half.png").write_bytes(png[: len(png) // 2])
    (folder / "empty.dcm").write_bytes(b"")
    return sorted(folder.iterdir())


def test_each_bad_file_is_a_one_line_error_naming_it(tmp_path, write_nifti):
    for path in bad_files(tmp_path, write_nifti):
        with pytest.raises(BadFileError) as caught:
            read_file(str(path))
        message = str(caught.value)
        assert str(path) in message and "\n" not in message


def test_skip_warns_and_error_raises(tmp_path, write_nifti, absl_warnings):
    bad = bad_files(tmp_path, write_nifti)
    write_png(tmp_path / "good.png", RAMP)
    (volume,) = read_path(str(tmp_path), on_bad_file="skip")
    assert volume.subject == "good"
    warnings = absl_warnings()
    assert all(any(str(path) in m for m in warnings) for path in bad)
    with pytest.raises(BadFileError, match=str(bad[0])):
        read_path(str(tmp_path), on_bad_file="error")


def test_nothing_usable_raises(tmp_path, write_nifti):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadFileError, match="no usable images in .*empty"):
        read_path(str(tmp_path / "empty"))
    with pytest.raises(BadFileError, match="no usable images"):
        read_path(str(tmp_path / "*.png"))
    bad_files(tmp_path / "bad", write_nifti)
    with pytest.raises(BadFileError, match="no usable images in .*bad"):
        read_path(str(tmp_path / "bad"))


def test_hidden_files_ignored_silently(tmp_path, absl_warnings):
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.png").write_bytes(b"junk")
    write_png(tmp_path / "a.png", RAMP)
    assert len(read_path(str(tmp_path), on_bad_file="error")) == 1
    assert absl_warnings() == []


def test_spaces_and_hash_in_paths(tmp_path):
    folder = tmp_path / "my scans #1"
    path = write_png(folder / "Image #100.png", RAMP)
    for spec in (str(folder), str(path), str(folder / "Image #*.png")):
        (volume,) = read_path(spec)
        assert volume.subject == "Image #100"


def test_on_bad_file_validated(tmp_path):
    with pytest.raises(ValueError, match="on_bad_file"):
        read_path(str(tmp_path), on_bad_file="ignore")


@pytest.mark.parametrize("path, subject", [
    ("/d/Image #100.png", "Image #100"),
    ("/d/IXI002-Guys-0828-T1.nii.gz", "IXI002"),
    ("/d/IXI002-Guys-0828-T2_slice90.nii.gz", "IXI002"),
    ("/d/sub-01_ses-2_acq-fast_T1w.nii.gz", "sub-01_ses-2"),
    ("/d/sub-01_T2w.nii", "sub-01"),
    ("/d/BraTS-GLI-00001-000-t2w.nii.gz", "BraTS-GLI-00001-000"),
    ("/d/BraTS20_Training_001_t1.nii.gz", "BraTS20_Training_001"),
    ("/d/BraTS20_Training_001_t1ce.nii.gz", "BraTS20_Training_001_t1ce"),
    ("/d/case7_T2.png", "case7"),
    ("/d/1.2.840.113619.2.55", "1.2.840.113619.2.55"),
    ("/d/series folder/", "series folder"),
])
def test_subject_from_name(path, subject):
    assert subject_from_name(path) == subject


# ---------------------------------------------------------------- real data (../shared/data)

def test_real_png_slices(shared_data):
    t1 = read_path(str(shared_data / "mri-t1t2-slices/Tr1/TrainT1"), on_bad_file="error")
    t2 = read_path(str(shared_data / "mri-t1t2-slices/Tr2/TrainT2"), on_bad_file="error")
    assert (len(t1), len(t2)) == (43, 46)
    assert all(v.data.shape == (1, 217, 181) for v in t1 + t2)
    assert "Image #100" in {v.subject for v in t1}
    # the parent folders hold .DS_Store files: ignored too
    assert len(read_path(str(shared_data / "mri-t1t2-slices/Tr1"), on_bad_file="error")) == 43


def test_real_ixi_2d_pair(shared_data):
    t1, t2 = read_path(str(shared_data / "ixi002-slice90"), on_bad_file="error")
    assert t1.data.shape == t2.data.shape == (1, 256, 150)
    assert t2.data.min() < 0  # resampling negatives survive reading; preprocessing clips them


def test_real_brats_volume(shared_data):
    path = shared_data / "brats/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz"
    (volume,) = read_path(str(path), on_bad_file="error")
    assert volume.data.shape == (155, 240, 240)
    canonical = nib.as_closest_canonical(nib.load(path)).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(volume.data[77], np.rot90(canonical[:, :, 77], 1)[:, ::-1])


def test_real_dicom_series_from_brats(shared_data, tmp_path):
    """The README suggests writing DICOM from the real volumes: a 10-slice LPS series reads back."""
    image = nib.load(shared_data / "brats/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2w.nii.gz")
    raw = np.asarray(image.dataobj)[:, :, 70:80]  # LPS on disk: [:, :, k].T is the DICOM layout
    uid = generate_uid()
    for k in range(raw.shape[2]):
        write_dicom(tmp_path / f"{9 - k:02d}", raw[:, :, k].T, uid, 10 - k, position=(0, 0, k))
    (volume,) = read_path(str(tmp_path))
    from_nifti = read_file(str(image.get_filename()))[0].data[70:80]
    np.testing.assert_array_equal(volume.data, from_nifti)
