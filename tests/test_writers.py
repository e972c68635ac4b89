"""data/writers.py: outputs line up with their inputs (NIfTI header and orientation, DICOM tags) and keep values."""

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image

from data.readers import read_path
from data.writers import write_dicom_series, write_nifti, write_png16
from tests.helpers import PERMUTED_LPS, write_mr_series

# Voxel axes permuted and flipped: i -> anterior-posterior, j -> right-left, k -> inferior-superior.
GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "InstanceNumber")


def nifti_input(path: Path, data: np.ndarray, affine: np.ndarray, slope=2.0, inter=10.0) -> Path:
    """An int16 NIfTI with scaling, qform code 1 (scanner) and sform code 2 (aligned): a scanner export."""
    image = nib.Nifti1Image(data.astype(np.int16), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    image.header.set_slope_inter(slope, inter)
    nib.save(image, str(path))
    return path


@pytest.mark.parametrize("affine", [np.diag([-1.0, -1.0, 1.0, 1.0]), PERMUTED_LPS], ids=["lps", "permuted"])
def test_nifti_round_trip_keeps_grid_header_and_values(tmp_path, affine):
    raw = np.arange(5 * 6 * 4).reshape(5, 6, 4)
    (volume,) = read_path(str(nifti_input(tmp_path / "in.nii.gz", raw, affine)))
    given = volume.data * 0.5 + 0.25  # elementwise, so in the input's voxel order it is (raw * 2 + 10) * 0.5 + 0.25
    write_nifti(volume, given, str(tmp_path / "out" / "out.nii.gz"), "synthetic T2w from T1w")

    source, out = nib.load(tmp_path / "in.nii.gz"), nib.load(tmp_path / "out" / "out.nii.gz")
    assert out.shape == source.shape
    np.testing.assert_array_equal(out.affine, source.affine)
    for field in ("qform_code", "sform_code", "xyzt_units", "dim", "pixdim", "srow_x", "srow_y", "srow_z"):
        np.testing.assert_array_equal(out.header[field], source.header[field], err_msg=field)
    assert out.header.get_zooms() == source.header.get_zooms()
    assert out.header.get_data_dtype() == np.float32
    assert out.header["descrip"].tobytes().rstrip(b"\0") == b"synthetic T2w from T1w"
    assert out.dataobj.slope == 1 and out.dataobj.inter == 0  # the input's scaling is not applied twice
    np.testing.assert_array_equal(out.get_fdata(), (raw * 2.0 + 10.0) * 0.5 + 0.25)
    np.testing.assert_array_equal(read_path(str(tmp_path / "out"))[0].data, given)


@pytest.mark.parametrize("shape", [(5, 4), (5, 4, 1)])
def test_nifti_2d_round_trip(tmp_path, shape):
    raw = np.arange(20).reshape(shape)
    (volume,) = read_path(str(nifti_input(tmp_path / "in.nii", raw, np.diag([-0.8, 0.8, 3.0, 1.0]), 1.0, 0.0)))
    write_nifti(volume, volume.data + 0.5, str(tmp_path / "out.nii"), "synthetic")
    out = nib.load(tmp_path / "out.nii")
    assert out.shape == shape
    np.testing.assert_array_equal(out.affine, nib.load(tmp_path / "in.nii").affine)
    np.testing.assert_array_equal(out.get_fdata(), raw + 0.5)


def test_dicom_series_round_trip(tmp_path):
    stored = np.arange(3 * 8 * 6, dtype=np.uint16).reshape(3, 8, 6) * 7
    sources = write_mr_series(tmp_path / "t1", stored)
    (volume,) = read_path(str(tmp_path / "t1"))
    given = volume.data * 0.37  # non-integer values, as a network gives
    paths = write_dicom_series(volume, given, str(tmp_path / "out"), "SYNTHETIC T2w from T1w (test)")

    assert sorted(os.path.basename(p) for p in paths) == [p.name for p in sources]  # source names kept
    outputs = {Path(p).name: pydicom.dcmread(p) for p in paths}
    source_uids = {pydicom.dcmread(p).SOPInstanceUID for p in sources}
    new_uids = [d.SOPInstanceUID for d in outputs.values()]
    assert len(set(new_uids)) == len(new_uids) and not source_uids & set(new_uids)
    assert len({d.SeriesInstanceUID for d in outputs.values()}) == 1
    for source_path in sources:
        source, out = pydicom.dcmread(source_path), outputs[source_path.name]
        for tag in GEOMETRY_TAGS:
            assert out[tag].value == source[tag].value, tag
        assert out.SeriesInstanceUID != source.SeriesInstanceUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert list(out.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
        assert out.SeriesDescription == "SYNTHETIC T2w from T1w (test)"
        assert out.SeriesNumber == source.SeriesNumber + 1000
        assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert out.PatientID == source.PatientID and out.StudyInstanceUID == source.StudyInstanceUID
        assert out.PhotometricInterpretation == "MONOCHROME2" and out.BitsStored == 16
        assert "WindowCenter" not in out
    slope = float(outputs["IM0000"].RescaleSlope)
    assert slope == pytest.approx(given.max() / 65535)
    (back,) = read_path(str(tmp_path / "out"))
    np.testing.assert_allclose(back.data, given, atol=slope / 2 + 1e-6)


def test_sagittal_dicom_round_trip_gives_each_file_its_own_image_and_geometry(tmp_path):
    """The writer undoes the reader's reorientation: every file gets back its own pixels, rows and columns."""
    stored = np.random.default_rng(0).integers(0, 65536, (4, 6, 5)).astype(np.uint16)
    stored[0, 0, 0] = 65535  # series maximum 65535: RescaleSlope exactly 1, so the round trip is exact
    sources = write_mr_series(tmp_path / "in", stored)
    for k, path in zip(np.random.default_rng(1).permutation(len(sources)), sources):  # file order != position order
        dataset = pydicom.dcmread(path)
        dataset.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal: normal = row x column = patient right
        dataset.ImagePositionPatient = [-0.8 * float(k), -91.2, 20.0]
        dataset.save_as(path, enforce_file_format=True)
    (volume,) = read_path(str(tmp_path / "in"))
    assert volume.data.shape == (6, 5, 4)  # axial slices: superior (rows), anterior-posterior, right-left (files)
    paths = write_dicom_series(volume, volume.data, str(tmp_path / "out"), "SYNTHETIC")

    for source_path, path in zip(sorted(sources), sorted(paths)):
        source, out = pydicom.dcmread(source_path), pydicom.dcmread(path)
        assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        for tag in GEOMETRY_TAGS:
            assert out[tag].value == source[tag].value, tag
        assert float(out.RescaleSlope) == 1 and float(out.RescaleIntercept) == 0
        np.testing.assert_array_equal(out.pixel_array, source.pixel_array)
    (back,) = read_path(str(tmp_path / "out"))
    np.testing.assert_array_equal(back.data, volume.data)


def test_dicom_monochrome1_becomes_monochrome2_bright_is_signal(tmp_path):
    stored = np.array([[[0, 100], [200, 300]]], np.uint16)
    write_mr_series(tmp_path / "in", stored, photometric="MONOCHROME1")
    (volume,) = read_path(str(tmp_path / "in"))  # the reader inverts: bright = more signal
    (path,) = write_dicom_series(volume, volume.data, str(tmp_path / "out"), "SYNTHETIC")
    assert pydicom.dcmread(path).PhotometricInterpretation == "MONOCHROME2"
    np.testing.assert_allclose(read_path(str(tmp_path / "out"))[0].data, [[[300, 200], [100, 0]]], atol=0.01)


def test_multiframe_dicom_refused(tmp_path):
    (path,) = write_mr_series(tmp_path / "in", np.zeros((1, 4, 4)))
    dataset = pydicom.dcmread(path)
    dataset.set_pixel_data(np.arange(32, dtype=np.uint16).reshape(2, 4, 4), "MONOCHROME2", 16)
    dataset.save_as(path, enforce_file_format=True)
    (volume,) = read_path(str(path))
    with pytest.raises(ValueError, match="IM0000: multi-frame"):
        write_dicom_series(volume, volume.data, str(tmp_path / "out"), "SYNTHETIC")


def test_dicom_without_sop_uids_refused_naming_the_file(tmp_path):
    (path,) = write_mr_series(tmp_path / "in", np.ones((1, 4, 4)))
    dataset = pydicom.dcmread(path)
    del dataset.SOPClassUID
    dataset.save_as(path)
    (volume,) = read_path(str(path))
    with pytest.raises(ValueError, match="IM0000: no SOPClassUID"):
        write_dicom_series(volume, volume.data, str(tmp_path / "out"), "SYNTHETIC")


def test_png16_round_trip_exact(tmp_path):
    unit = np.array([[0.0, 1 / 65535, 0.5], [1.0, 1.5, -0.2]], np.float32)
    write_png16(unit, str(tmp_path / "sub" / "x.png"))
    with Image.open(tmp_path / "sub" / "x.png") as image:
        assert image.mode == "I;16" and image.format == "PNG"
        pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels, np.array([[0, 1, 32768], [65535, 65535, 0]], np.uint16))


def simpleitk_affine(path: Path) -> np.ndarray:
    """The voxel-to-RAS affine SimpleITK (ITK's own NIfTI reader, an independent reference) reads from `path`."""
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.ReadImage(str(path))
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK's LPS -> RAS


@pytest.mark.parametrize("qform_code, sform_code", [(1, 2), (1, 4), (0, 2), (2, 0), (1, 1)])
def test_simpleitk_reads_the_output_on_nibabels_grid(tmp_path, qform_code, sform_code):
    """An input whose qform and sform differ (a registered scan keeps its scanner qform) is read on two grids: ITK
    prefers the qform unless the sform code is 1, nibabel the sform. The output is read on nibabel's by both."""
    zooms = (0.9, 1.1, 2.0)
    image = nib.Nifti1Image(np.arange(5 * 6 * 4, dtype=np.int16).reshape(5, 6, 4), None)
    image.header.set_qform(np.diag([-0.9, -1.1, 2.0, 1.0]), code=qform_code)
    sform = np.array([[0, -1.1, 0, 30], [-0.9, 0, 0, 20], [0, 0, 2.0, -10], [0, 0, 0, 1]])  # the zooms, permuted
    image.header.set_sform(sform, code=sform_code)
    image.header.set_zooms(zooms)
    nib.save(image, str(tmp_path / "in.nii.gz"))
    (volume,) = read_path(str(tmp_path / "in.nii.gz"))
    write_nifti(volume, volume.data, str(tmp_path / "out.nii.gz"), "synthetic")

    read_with = nib.load(tmp_path / "in.nii.gz").affine
    np.testing.assert_allclose(nib.load(tmp_path / "out.nii.gz").affine, read_with, atol=1e-6)
    np.testing.assert_allclose(simpleitk_affine(tmp_path / "out.nii.gz"), read_with, atol=1e-5)
