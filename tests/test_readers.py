"""data/readers.py: every format read exactly, every bad file turned into a one-line BadFileError."""

import random
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pydicom.encaps
import pydicom.uid
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
    pages = [Image.fromarray((np.arange(12).reshape(3, 4) + v).astype(np.uint16)) for v in (100, 50000)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    (volume,) = read_path(str(path))
    np.testing.assert_array_equal(volume.data, np.stack([np.asarray(page, np.float32) for page in pages]))


def test_constant_image_is_read_and_reported(tmp_path, absl_warnings):
    (volume,) = read_path(str(write_png(tmp_path / "flat.png", np.full((4, 4), 7, np.uint8))))
    np.testing.assert_array_equal(volume.data, np.full((1, 4, 4), 7))
    assert any("flat.png" in m and "constant" in m for m in absl_warnings())


# ---------------------------------------------------------------- DICOM

LPS_TO_RAS = np.array([-1, -1, 1])  # DICOM patient coordinates are LPS, NIfTI world coordinates RAS
AXIAL, SAGITTAL, CORONAL = ((1, 0, 0), (0, 1, 0)), ((0, 1, 0), (0, 0, -1)), ((1, 0, 0), (0, 0, -1))


def documented_axial_slices(ras_volume):
    """The module docstring's layout: slice[r, c] = canonical[X-1-c, Y-1-r, s] (row 0 anterior, column 0 right)."""
    return np.stack([np.rot90(ras_volume[:, :, s], 1)[:, ::-1] for s in range(ras_volume.shape[2])])


def cut_into_dicom(folder, ras_volume, row, column, seed=0, **tags) -> list:
    """Write a volume whose voxel (x, y, z) sits at RAS (x, y, z) mm as a DICOM series with these LPS cosines.

    Pixel (r, c) of a slice at ImagePositionPatient P lies at P + c * row + r * column (DICOM PS3.3
    C.7.6.2.1.1), so its value is looked up there. File names and InstanceNumbers are shuffled,
    unrelated to the position. Returns the stored [slice, row, column] arrays in position order.
    """
    steps = [LPS_TO_RAS * np.asarray(v) for v in (np.cross(row, column), column, row)]  # voxel steps per axis
    shape = np.array(ras_volume.shape)
    origin = np.where(sum(steps) < 0, shape - 1, 0)
    extents = [shape[np.flatnonzero(step)[0]] for step in steps]
    k, r, c = np.indices(extents)
    index = origin + k[..., None] * steps[0] + r[..., None] * steps[1] + c[..., None] * steps[2]
    stored = ras_volume[index[..., 0], index[..., 1], index[..., 2]]
    uid, shuffled = generate_uid(), np.random.default_rng(seed).permutation(len(stored))
    folder.mkdir(parents=True, exist_ok=True)
    for k, position in enumerate(origin + np.arange(len(stored))[:, None] * steps[0]):
        write_dicom(folder / f"IM{shuffled[k]:04d}", stored[k], uid, int(shuffled[::-1][k]) + 1,
                    position=LPS_TO_RAS * position, orientation=(*row, *column), **tags)
    return stored


@pytest.mark.parametrize("row, column", [
    AXIAL, SAGITTAL, CORONAL,
    ((0, 1, 0), (1, 0, 0)),  # axial, transposed, slice normal pointing down
    ((0, -1, 0), (0, 0, -1)),  # sagittal seen from the left
], ids=["axial", "sagittal", "coronal", "axial-transposed", "sagittal-left"])
def test_dicom_series_in_any_plane_reads_like_the_nifti(tmp_path, write_nifti, row, column):
    """Exact for integer data: the same anatomy gives the same canonical slices from DICOM and NIfTI."""
    anatomy = np.random.default_rng(0).integers(0, 4000, size=(5, 6, 7))  # X, Y, Z all different
    cut_into_dicom(tmp_path / "dicom", anatomy, row, column, slope=2, intercept=-100)
    nifti = write_nifti(tmp_path / "same.nii.gz", (anatomy * 2 - 100).astype(np.float32), np.eye(4))
    (from_dicom,), (from_nifti,) = read_path(str(tmp_path / "dicom")), read_path(str(nifti))
    np.testing.assert_array_equal(from_nifti.data, documented_axial_slices(anatomy * 2.0 - 100))
    np.testing.assert_array_equal(from_dicom.data, from_nifti.data)
    normal = np.cross(row, column)
    positions = [np.dot(d.ImagePositionPatient, normal) for d in from_dicom.meta["datasets"]]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_dicom_sorted_by_position_not_instance_number_or_file_name(tmp_path):
    anatomy = np.random.default_rng(1).integers(0, 4000, size=(3, 4, 6))
    cut_into_dicom(tmp_path, anatomy, *AXIAL, seed=3)
    datasets = [pydicom.dcmread(path) for path in sorted(tmp_path.iterdir())]
    by_name = [d.ImagePositionPatient[2] for d in datasets]
    by_instance = [d.ImagePositionPatient[2] for d in sorted(datasets, key=lambda d: d.InstanceNumber)]
    assert by_name != sorted(by_name) and by_instance != sorted(by_instance)  # neither order would do
    (volume,) = read_path(str(tmp_path))
    np.testing.assert_array_equal(volume.data, documented_axial_slices(anatomy))


def test_oblique_dicom_takes_the_closest_orientation_like_nifti(tmp_path, write_nifti):
    """The documented limit: a 20-degree tilted series is laid out as the plane it is closest to, not resampled."""
    anatomy = np.random.default_rng(2).integers(0, 4000, size=(4, 5, 3))
    tilt = np.deg2rad(20)
    rotation = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    stored = cut_into_dicom(tmp_path / "axial", anatomy, *AXIAL)
    uid = generate_uid()
    (tmp_path / "oblique").mkdir()
    for k, image in enumerate(stored):
        write_dicom(tmp_path / "oblique" / f"{k}", image, uid, k + 1, position=rotation @ (0, 0, k),
                    orientation=(*(rotation @ AXIAL[0]), *(rotation @ AXIAL[1])))
    affine = np.eye(4)
    affine[:3, :3] = rotation
    nifti = write_nifti(tmp_path / "oblique.nii", anatomy.astype(np.float32), affine)
    axial, oblique, from_nifti = (read_path(str(p))[0].data for p in (tmp_path / "axial", tmp_path / "oblique", nifti))
    np.testing.assert_array_equal(oblique, axial)
    np.testing.assert_array_equal(from_nifti, axial)


def test_single_dicom_slice_must_be_axial(tmp_path):
    sagittal = write_dicom(tmp_path / "sagittal.dcm", RAMP, generate_uid(), 1, position=(0, 0, 0),
                           orientation=(*SAGITTAL[0], *SAGITTAL[1]))
    with pytest.raises(BadFileError, match=r"sagittal\.dcm: a single DICOM slice is not an axial slice"):
        read_file(str(sagittal))
    axial = write_dicom(tmp_path / "axial.dcm", RAMP, generate_uid(), 1, position=(0, 0, 0))
    np.testing.assert_array_equal(read_file(str(axial))[0].data, RAMP[None])


def test_series_mixing_orientations_is_bad(tmp_path):
    uid = generate_uid()
    write_dicom(tmp_path / "a", RAMP, uid, 1, position=(0, 0, 0), orientation=(*AXIAL[0], *AXIAL[1]))
    write_dicom(tmp_path / "b", RAMP, uid, 2, position=(0, 0, 1), orientation=(*CORONAL[0], *CORONAL[1]))
    with pytest.raises(BadFileError, match=f"{tmp_path}: series mixes slice orientations"):
        read_path(str(tmp_path), on_bad_file="error")


def test_multiframe_dicom_kept_as_stored_with_a_warning(tmp_path, absl_warnings):
    frames = np.arange(2 * 2 * 3, dtype=np.uint16).reshape(2, 2, 3)
    path = write_dicom(tmp_path / "multi.dcm", frames[0], generate_uid(), 1, position=(0, 0, 0),
                       orientation=(*SAGITTAL[0], *SAGITTAL[1]))
    dataset = pydicom.dcmread(path)
    dataset.set_pixel_data(frames, "MONOCHROME2", 16)
    dataset.save_as(path, enforce_file_format=True)
    (volume,) = read_file(str(path))
    np.testing.assert_array_equal(volume.data, frames)
    assert any("multi.dcm: multi-frame DICOM" in m and "not reoriented" in m for m in absl_warnings())


def test_dicom_instance_number_fallback(tmp_path):
    stored = np.arange(3 * 2 * 2).reshape(3, 2, 2)
    uid = generate_uid()
    for k in (2, 0, 1):
        write_dicom(tmp_path / f"file{2 - k}.dcm", stored[k], uid, instance=k + 1)
    (volume,) = read_path(str(tmp_path))
    np.testing.assert_array_equal(volume.data, stored.astype(np.float32))


def test_two_series_in_one_folder(tmp_path):
    """Files of two series interleaved in one folder, written in reverse position order: each series apart, sorted."""
    series = {uid: np.random.default_rng(k).integers(0, 4000, (3, 2, 2)) for k, uid in enumerate(
        (generate_uid(), generate_uid()))}
    for k in (2, 1, 0):
        for name, (uid, stored) in zip("ab", series.items()):
            write_dicom(tmp_path / f"{k}{name}", stored[k], uid, 3 - k, position=(0, 0, k))
    volumes = read_path(str(tmp_path))
    assert len(volumes) == 2
    by_uid = {v.meta["datasets"][0].SeriesInstanceUID: v for v in volumes}
    for uid, stored in series.items():
        np.testing.assert_array_equal(by_uid[uid].data, stored)
        assert {d.SeriesInstanceUID for d in by_uid[uid].meta["datasets"]} == {uid}


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
    single = np.arange(18, dtype=np.float32).reshape(3, 3, 2, 1)
    (volume,) = read_file(str(write_nifti(tmp_path / "one.nii.gz", single)))
    np.testing.assert_array_equal(volume.data, documented_axial_slices(single[..., 0]))


def test_nan_replaced_with_warning(tmp_path, write_nifti, absl_warnings):
    data = np.ones((2, 2, 2), np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    (volume,) = read_path(str(write_nifti(tmp_path / "holes.nii.gz", data)))
    expected = np.ones((2, 2, 2), np.float32)
    expected[0, 0, 0] = expected[1, 1, 1] = 0
    np.testing.assert_array_equal(volume.data, documented_axial_slices(expected))
    assert any("holes.nii.gz" in m and "NaN" in m for m in absl_warnings())


# ---------------------------------------------------------------- bad input and paths

def raw(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def truncated(path: Path) -> Path:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


def with_garbage_after(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep] + bytes(np.random.default_rng(0).integers(0, 256, 300, np.uint8)))
    return path


def with_text_geometry(path: Path) -> Path:
    """The row cosine's x of ImageOrientationPatient ('1.0\\0.0\\0.0\\0.0\\1.0\\0.0') made a letter."""
    whole = path.read_bytes()
    assert whole.count(b"\\1.0\\") == 1
    return raw(path, whole.replace(b"\\1.0\\", b"\\I.0\\"))


def edited_dicom(path: Path, edit) -> Path:
    """A valid DICOM file changed by `edit(dataset)` and saved again."""
    dataset = pydicom.dcmread(path)
    edit(dataset)
    dataset.save_as(path)
    return path


def patched(path: Path, old: bytes, new: bytes, occurrence: int = 0) -> Path:
    """Bytes `old` (located in the file) replaced by `new` of the same length, at its `occurrence`-th place."""
    whole = path.read_bytes()
    at = [i for i in range(len(whole)) if whole.startswith(old, i)][occurrence]
    return raw(path, whole[:at] + new + whole[at + len(new):])


def jpeg_series_with_undecodable_frame(dataset) -> None:
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a JPEG frame"])
    dataset["PixelData"].VR = "OB"


def second_tiff_page_without_width(path: Path) -> Path:
    pages = [Image.fromarray(np.full((4, 4), v, np.uint16)) for v in (1, 2)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    width_tag = struct.pack("<HHII", 256, 4, 1, 4)  # ImageWidth, LONG, 1 value: 4
    return patched(path, width_tag, struct.pack("<H", 0x0FFF) + width_tag[2:], occurrence=1)


DEEP = np.arange(4096, dtype=np.uint16).reshape(64, 64) * 16  # large enough that halving a file cuts pixel data
# Each kind of bad file: how to write it into a folder (the file's format is in its name).
BAD_FILES = {
    "empty.nii.gz": lambda f, _: raw(f / "empty.nii.gz", b""),
    "cut.nii.gz": lambda f, write_nifti: truncated(write_nifti(f / "cut.nii.gz", np.ones((20, 20, 20), np.float32))),
    "cut.nii": lambda f, write_nifti: truncated(write_nifti(f / "cut.nii", np.ones((20, 20, 20), np.float32))),
    "garbage.png": lambda f, _: raw(f / "garbage.png", b"not a png at all"),
    "half.png": lambda f, _: truncated(write_png(f / "half.png", DEEP)),
    "half.tif": lambda f, _: truncated(write_png(f / "half.tif", DEEP)),
    "scrambled.tif": lambda f, _: with_garbage_after(write_png(f / "scrambled.tif", DEEP), keep=8),  # header kept
    "page_without_width.tif": lambda f, _: second_tiff_page_without_width(f / "page_without_width.tif"),  # TypeError
    "half.jpg": lambda f, _: truncated(write_png(f / "half.jpg", (DEEP // 256).astype(np.uint8))),
    "garbage.jpeg": lambda f, _: raw(f / "garbage.jpeg", b"\xff\xd8\xff" + bytes(50)),  # JPEG magic, no image
    "empty.dcm": lambda f, _: raw(f / "empty.dcm", b""),
    "half.dcm": lambda f, _: truncated(write_dicom(f / "half.dcm", DEEP, generate_uid(), 1)),
    "text_geometry.dcm": lambda f, _: with_text_geometry(write_dicom(f / "text_geometry.dcm", RAMP, generate_uid(), 1,
                                                                     position=(0, 0, 0))),
    # pydicom: AttributeError, NotImplementedError (decode and parse), BytesLengthException, RuntimeError
    "no_bits_allocated.dcm": lambda f, _: edited_dicom(write_dicom(f / "no_bits_allocated.dcm", RAMP, generate_uid(), 1),
                                                       lambda dataset: delattr(dataset, "BitsAllocated")),
    "unknown_syntax.dcm": lambda f, _: edited_dicom(write_dicom(f / "unknown_syntax.dcm", RAMP, generate_uid(), 1),
                                                    lambda dataset: setattr(dataset.file_meta, "TransferSyntaxUID",
                                                                            "1.2.3.4.5")),
    "unknown_vr.dcm": lambda f, _: patched(write_dicom(f / "unknown_vr.dcm", RAMP, generate_uid(), 1),
                                           b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00Uq"),  # Modality
    "odd_rows.dcm": lambda f, _: patched(write_dicom(f / "odd_rows.dcm", RAMP, generate_uid(), 1),
                                         b"\x28\x00\x10\x00US\x02\x00\x02\x00\x28\x00",  # Rows: 2, 2 bytes
                                         b"\x28\x00\x10\x00US\x03\x00\x02\x00\x00\x28"),  # 3 bytes
    "undecodable_jpeg.dcm": lambda f, _: edited_dicom(write_dicom(f / "undecodable_jpeg.dcm", RAMP, generate_uid(), 1),
                                                      jpeg_series_with_undecodable_frame),
    "preamble_then_garbage": lambda f, _: with_garbage_after(write_dicom(f / "preamble_then_garbage", RAMP,
                                                                         generate_uid(), 1), keep=132),
}


def bad_files(folder: Path, write_nifti) -> list[Path]:
    """One file of each kind in BAD_FILES."""
    folder.mkdir(parents=True, exist_ok=True)
    return sorted(write(folder, write_nifti) for write in BAD_FILES.values())


@pytest.mark.parametrize("name", BAD_FILES)
def test_each_bad_file_is_a_one_line_error_naming_it(tmp_path, write_nifti, name):
    path = BAD_FILES[name](tmp_path, write_nifti)
    if name == "preamble_then_garbage":
        assert path.read_bytes()[128:132] == b"DICM"  # no extension: recognised as DICOM by its preamble
    with pytest.raises(BadFileError) as caught:
        read_file(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


@pytest.mark.parametrize("name", BAD_FILES)
def test_skip_warns_and_error_raises_for_each_bad_file(tmp_path, write_nifti, absl_warnings, name):
    path = BAD_FILES[name](tmp_path, write_nifti)
    write_png(tmp_path / "good.png", RAMP)
    (volume,) = read_path(str(tmp_path), on_bad_file="skip")
    assert volume.subject == "good"
    assert [m for m in absl_warnings() if m.startswith(f"skipping bad file: {path}: ")] != []
    with pytest.raises(BadFileError) as caught:
        read_path(str(tmp_path), on_bad_file="error")
    assert str(caught.value).startswith(f"{path}: ")


def test_skip_reports_every_bad_file_of_a_folder(tmp_path, write_nifti, absl_warnings):
    bad = bad_files(tmp_path, write_nifti)
    write_png(tmp_path / "good.png", RAMP)
    assert [v.subject for v in read_path(str(tmp_path), on_bad_file="skip")] == ["good"]
    reported = [m for m in absl_warnings() if m.startswith("skipping bad file: ")]
    assert len(reported) == len(bad) and all(any(f": {p}: " in m for m in reported) for p in bad)


@pytest.mark.parametrize("name, internal", [
    ("x.png", "_gray_pixels"), ("x.tif", "_gray_pixels"), ("x.dcm", "_tag_numbers"), ("x.nii.gz", "_to_axial"),
])
def test_a_bug_in_our_reader_surfaces_instead_of_a_bad_file(tmp_path, write_nifti, monkeypatch, absl_warnings,
                                                           name, internal):
    """Only what the libraries raise for bad files becomes BadFileError; our own TypeError is a bug to see."""
    path = tmp_path / name
    if name.endswith(".dcm"):
        write_dicom(path, RAMP, generate_uid(), 1)
    elif name.endswith(".nii.gz"):
        write_nifti(path, np.ones((2, 2, 2), np.float32))
    else:
        write_png(path, RAMP)

    def bug(*args, **kwargs):
        raise TypeError("a bug in our reader")

    monkeypatch.setattr(f"data.readers.{internal}", bug)
    for on_bad_file in ("skip", "error"):
        with pytest.raises(TypeError, match="a bug in our reader"):
            read_path(str(tmp_path), on_bad_file=on_bad_file)
    assert absl_warnings() == []


def test_jpeg_values_are_pillows_decode(tmp_path, absl_warnings):
    gray = (np.add.outer(np.arange(16), np.arange(12)) * 9).astype(np.uint8)
    colour = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    write_png(tmp_path / "gray.jpg", gray)
    write_png(tmp_path / "colour.jpeg", colour)
    read = {v.subject: v for v in read_path(str(tmp_path), on_bad_file="error")}
    with Image.open(tmp_path / "gray.jpg") as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(read["gray"].data, np.asarray(image, np.float32)[None])
    with Image.open(tmp_path / "colour.jpeg") as image:
        decoded = np.asarray(image.convert("RGB"), np.float64)  # lossy: compare with Pillow's pixels, not ours
    luma = decoded @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(read["colour"].data[0], luma, rtol=2**-24)  # float32 rounding of the float64 luma
    assert read["colour"].data.shape == (1, 16, 12)
    assert [m for m in absl_warnings() if "colour.jpeg" in m and "gray" in m] != []


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
    for volume in (t1[0], t2[-1]):
        with Image.open(volume.path) as image:
            np.testing.assert_array_equal(volume.data[0], np.asarray(image, np.float32))
    assert "Image #100" in {v.subject for v in t1}
    # the parent folders hold .DS_Store files: ignored too
    assert len(read_path(str(shared_data / "mri-t1t2-slices/Tr1"), on_bad_file="error")) == 43


def test_real_ixi_2d_pair(shared_data):
    t1, t2 = read_path(str(shared_data / "ixi002-slice90"), on_bad_file="error")
    assert t1.data.shape == t2.data.shape == (1, 256, 150)
    assert t2.data.min() < 0  # resampling negatives survive reading; preprocessing clips them
    for volume in (t1, t2):
        image = nib.load(volume.path)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # stored as DICOM lays out an axial slice
        np.testing.assert_array_equal(volume.data[0], image.get_fdata(dtype=np.float32).T)


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
