"""DICOM output that DICOM tools accept: dciodvfy (dicom3tools) finds no error in it, and dcm2niix converts it
back onto the input's grid, from DICOM series and from NIfTI volumes alike (data/writers.py).

The tools are independent references: dciodvfy checks each file against the MR Image IOD of the standard,
dcm2niix builds a NIfTI grid from the files' geometry tags with its own code.
"""

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from data.readers import read_path
from data.writers import write_dicom_series
from tests.helpers import write_dicom, write_mr_series

# The grid a converter rebuilds may differ from the input's by the rounding of DICOM's decimal strings (16
# characters: about 1e-12 mm at 100 mm) and of dcm2niix's float32 NIfTI header (about 1e-5 mm at 100 mm).
GRID_TOLERANCE_MM = 1e-3
# dcm2niix writes RescaleSlope as the NIfTI's float32 scl_slope: a value's error is half a slope (our rounding to
# 16 bits) plus the value times float32's relative rounding.
FLOAT32_EPS = float(np.finfo(np.float32).eps)
# A rotation of about 20 degrees about two axes: every voxel axis oblique to the patient's axes.
_ANGLE = np.deg2rad(20.0)
_ROTATION = np.array([[1, 0, 0], [0, np.cos(_ANGLE), -np.sin(_ANGLE)], [0, np.sin(_ANGLE), np.cos(_ANGLE)]]) @ \
    np.array([[np.cos(_ANGLE), 0, np.sin(_ANGLE)], [0, 1, 0], [-np.sin(_ANGLE), 0, np.cos(_ANGLE)]])
AFFINES = {
    "ras": np.diag([0.9, 1.1, 2.5, 1.0]) + np.array([[0, 0, 0, -20.5], [0, 0, 0, -30.25], [0, 0, 0, 12.0], [0] * 4]),
    # stored as a radiological sagittal series: i -> anterior-posterior, j -> inferior-superior, k -> left-right
    "sagittal": np.array([[0, 0, -1.2, 60.0], [-0.9, 0, 0, 80.0], [0, 1.1, 0, -40.0], [0, 0, 0, 1.0]]),
    "oblique": np.vstack([np.column_stack([_ROTATION @ np.diag([0.9, 1.1, 2.5]), [-91.3, 102.7, -33.1]]),
                          [0, 0, 0, 1.0]]),
}
DESCRIPTION = "SYNTHETIC T2w from T1w (mri-cyclegan, research use)"


def dciodvfy_errors(tools: dict[str, str], path: Path) -> list[str]:
    result = subprocess.run([tools["dciodvfy"], str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def dcm2niix(tools: dict[str, str], folder: Path, output: Path) -> nib.Nifti1Image:
    """dcm2niix's NIfTI of the one series in `folder`."""
    output.mkdir(parents=True)
    result = subprocess.run([tools["dcm2niix"], "-z", "n", "-b", "n", "-o", str(output), "-f", "converted",
                             str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = output.glob("converted*.nii")
    return nib.load(path)


def phantom(shape: tuple[int, int, int]) -> np.ndarray:
    """An int16 volume whose every voxel differs from its neighbours, so a flipped or swapped axis shows."""
    i, j, k = np.indices(shape)
    return (100 + 7 * i + 53 * j + 401 * k + 3 * (i * j % 5)).astype(np.int16)


def nifti_source(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(phantom((12, 10, 5)), AFFINES[name]), str(path))
    return path


def bare_series(folder: Path) -> Path:
    """A series with only what a derived image cannot make up (UIDs, geometry): no study, frame of reference,
    patient or MR acquisition attributes."""
    uid, voxels = generate_uid(), phantom((12, 10, 4)).astype(np.uint16)
    folder.mkdir(parents=True)
    for k in range(voxels.shape[2]):
        path = write_dicom(folder / f"{k:02d}.dcm", voxels[:, :, k].T, uid, k + 1, position=(-5.0, 7.5, 2.0 * k))
        dataset = pydicom.dcmread(path)
        dataset.PixelSpacing = [0.75, 0.5]
        dataset.save_as(path, enforce_file_format=True)
    return folder


def scanner_series(folder: Path) -> Path:
    """A series with a real scanner's header (pydicom's MR_small.dcm)."""
    write_mr_series(folder, np.moveaxis(phantom((12, 10, 4)), 2, 0).astype(np.uint16))
    return folder


SOURCES = {"bare_dicom": bare_series, "scanner_dicom": scanner_series,
           **{f"nifti_{name}": (lambda folder, name=name: nifti_source(folder, name)) for name in AFFINES}}


@pytest.mark.parametrize("source", list(SOURCES))
def test_every_written_file_passes_dciodvfy(dicom_tools, tmp_path, source):
    (volume,) = read_path(str(SOURCES[source](tmp_path / "in")), on_bad_file="error")
    paths = write_dicom_series(volume, volume.data * 0.37, str(tmp_path / "out"), DESCRIPTION)
    assert len(paths) == (5 if source.startswith("nifti") else 4)  # one file per slice of the file or series
    for path in paths:
        assert dciodvfy_errors(dicom_tools, Path(path)) == [], path


@pytest.mark.parametrize("name", list(AFFINES))
def test_dcm2niix_puts_a_nifti_translation_back_on_the_input_grid(dicom_tools, tmp_path, name):
    source = nifti_source(tmp_path, name)
    (volume,) = read_path(str(source), on_bad_file="error")
    paths = write_dicom_series(volume, volume.data * 0.37, str(tmp_path / "out"), DESCRIPTION)
    converted = nib.as_closest_canonical(dcm2niix(dicom_tools, tmp_path / "out", tmp_path / "back"))
    expected = nib.as_closest_canonical(nib.load(source))
    assert converted.shape == expected.shape
    assert np.abs(converted.affine - expected.affine).max() <= GRID_TOLERANCE_MM
    slope = float(pydicom.dcmread(paths[0]).RescaleSlope)
    expected_values = expected.get_fdata() * 0.37
    assert np.all(np.abs(converted.get_fdata() - expected_values) <= slope / 2 + np.abs(expected_values) * FLOAT32_EPS)


@pytest.mark.parametrize("make", [bare_series, scanner_series], ids=["bare", "scanner"])
def test_dcm2niix_puts_a_dicom_translation_on_its_source_series_grid(dicom_tools, tmp_path, make):
    (volume,) = read_path(str(make(tmp_path / "in")), on_bad_file="error")
    paths = write_dicom_series(volume, volume.data * 0.37, str(tmp_path / "out"), DESCRIPTION)
    source = nib.as_closest_canonical(dcm2niix(dicom_tools, tmp_path / "in", tmp_path / "source"))
    converted = nib.as_closest_canonical(dcm2niix(dicom_tools, tmp_path / "out", tmp_path / "back"))
    assert converted.shape == source.shape
    assert np.abs(converted.affine - source.affine).max() <= GRID_TOLERANCE_MM
    slope = float(pydicom.dcmread(paths[0]).RescaleSlope)
    expected_values = source.get_fdata() * 0.37
    assert np.all(np.abs(converted.get_fdata() - expected_values) <= slope / 2 + np.abs(expected_values) * FLOAT32_EPS)


def test_a_real_volume_written_as_dicom_validates_and_converts_back(shared_data, dicom_tools, tmp_path):
    """The shared BraTS T2 (240 x 240 x 155, skull-stripped), every slice a file."""
    source = shared_data / "brats/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2w.nii.gz"
    (volume,) = read_path(str(source), on_bad_file="error")
    paths = write_dicom_series(volume, volume.data, str(tmp_path / "out"), DESCRIPTION)
    for path in paths[::50]:
        assert dciodvfy_errors(dicom_tools, Path(path)) == [], path
    converted = nib.as_closest_canonical(dcm2niix(dicom_tools, tmp_path / "out", tmp_path / "back"))
    expected = nib.as_closest_canonical(nib.load(source))
    assert converted.shape == expected.shape
    assert np.abs(converted.affine - expected.affine).max() <= GRID_TOLERANCE_MM
    slope = float(pydicom.dcmread(paths[0]).RescaleSlope)
    expected_values = expected.get_fdata()
    assert np.all(np.abs(converted.get_fdata() - expected_values) <= slope / 2 + np.abs(expected_values) * FLOAT32_EPS)


def test_a_derived_image_keeps_what_its_source_has_and_fills_only_what_it_lacks(tmp_path):
    """The scanner header's study, frame of reference and acquisition survive; a bare source gets new UIDs, shared
    by its series, and the derived image's defaults."""
    (scanner,) = read_path(str(scanner_series(tmp_path / "scanner")))
    (bare,) = read_path(str(bare_series(tmp_path / "bare")))
    for volume, folder in ((scanner, "out_scanner"), (bare, "out_bare")):
        paths = write_dicom_series(volume, volume.data, str(tmp_path / folder), DESCRIPTION)
        outputs = [pydicom.dcmread(p) for p in paths]
        assert len({(d.StudyInstanceUID, d.FrameOfReferenceUID) for d in outputs}) == 1
        for source, out in zip(volume.meta["datasets"], outputs):
            assert list(out.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
            assert out.ContributingEquipmentSequence[0].Manufacturer == "mri-cyclegan"
            for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "ScanningSequence", "EchoTime", "PatientID",
                            "Manufacturer"):
                if source.get(keyword):
                    assert out[keyword].value == source[keyword].value, keyword
    source, out = scanner.meta["datasets"][0], pydicom.dcmread(tmp_path / "out_scanner" / "IM0000")
    assert (out.ScanningSequence, out.Manufacturer) == (source.ScanningSequence, source.Manufacturer)
    out = pydicom.dcmread(tmp_path / "out_bare" / "00.dcm")
    assert (out.ScanningSequence, out.SequenceVariant, out.BodyPartExamined) == ("RM", "NONE", "HEAD")
    assert out.PatientName == "" and out.EchoTime is None


def test_a_sheared_nifti_is_refused_naming_the_file(tmp_path):
    affine = AFFINES["ras"].copy()
    affine[0, 1] = 0.3  # the second voxel axis leans on the first
    path = tmp_path / "sheared.nii.gz"
    nib.save(nib.Nifti1Image(phantom((6, 5, 2)), affine), str(path))
    (volume,) = read_path(str(path))
    with pytest.raises(ValueError, match=r"sheared\.nii\.gz: .*not orthogonal"):
        write_dicom_series(volume, volume.data, str(tmp_path / "out"), DESCRIPTION)
