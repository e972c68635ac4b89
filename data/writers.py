"""Write translated slices back in the format, grid and orientation they were read from.

Each writer takes a `readers.Volume` (whose `meta` says how it was read) and its
translated axial slices [S, H, W], so the output lines up with the input voxel for
voxel in any viewer:

* NIfTI: the input's voxel order, shape, affine and header (qform/sform, zooms,
  units), with float32 data and `descrip` saying the image is synthetic.
* DICOM: a new series, one file per source file, with every source tag kept
  except those that would now be wrong (see `write_dicom_series`).
* PNG: 16-bit, for the [0, 1] images that PNG inputs give.
"""

import copy
import os

import nibabel as nib
import numpy as np
from PIL import Image
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from data import readers

UINT16_MAX = 65535
# A derived series gets this added to its source's SeriesNumber, so viewers list it next to the source.
SERIES_NUMBER_OFFSET = 1000
# Tags describing the source's stored pixels or display that no longer hold for the new pixels.
_STALE_PIXEL_TAGS = (
    "FloatPixelData", "DoubleFloatPixelData", "SmallestImagePixelValue", "LargestImagePixelValue",
    "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction", "VOILUTSequence",
    "ModalityLUTSequence", "RescaleType", "IconImageSequence",
)


def _make_parent(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)


def write_nifti(volume: readers.Volume, slices: np.ndarray, path: str, description: str) -> None:
    """Write axial `slices` (the reader's layout) as a NIfTI in the input file's voxel order.

    The input header is copied, so shape, affine, qform/sform codes and zooms match; the
    data type becomes float32 and nibabel writes no scaling (scl_slope NaN), so values are
    stored exactly as given. `description` goes to `descrip` (80 characters at most).
    """
    image = volume.meta["image"]
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    header["descrip"] = description
    data = readers.to_original_nifti(np.asarray(slices, np.float32), volume.meta)
    _make_parent(path)
    nib.save(type(image)(data, image.affine, header), path)


def write_dicom_series(volume: readers.Volume, slices: np.ndarray, folder: str, description: str) -> list[str]:
    """Write `slices` as a new DICOM series in `folder`, one file per source file; returns the paths.

    Each file is a copy of its source dataset (patient, study and geometry tags such as
    ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness and
    InstanceNumber kept) with:

    * new SeriesInstanceUID, SOPInstanceUIDs and SeriesNumber (source + 1000), ImageType
      DERIVED\\SECONDARY, `description` as SeriesDescription and DerivationDescription, and a
      SourceImageSequence pointing at the source image;
    * the pixels as unsigned 16-bit MONOCHROME2 (bright = more signal, also for MONOCHROME1
      sources) with one RescaleSlope for the whole series, series maximum / 65535, and
      intercept 0: the full 16-bit range, no clipping above, the same stored value meaning
      the same intensity in every slice; error at most half a slope (negative values, which
      MRI magnitude and the translations never have, are stored as 0);
    * window, LUT, padding and min/max-pixel tags removed (they described the source pixels);
    * uncompressed Explicit VR Little Endian.

    `slices` are in the reader's axial layout; each file gets its own image back, with the rows
    and columns it stores (`readers.to_stored_dicom`), so a sagittal or coronal source gives a
    sagittal or coronal series. Files keep their names relative to `dicom_series_folder(volume)`.
    Multi-frame files are refused: their per-frame functional groups would need rewriting.
    """
    datasets = volume.meta["datasets"]
    images = readers.to_stored_dicom(np.asarray(slices, np.float64), volume.meta)
    if len(datasets) != len(images):
        raise ValueError(f"{volume.path}: multi-frame DICOM output is not supported; convert the series to NIfTI")
    peak = float(np.max(images))
    slope = DSfloat(peak / UINT16_MAX if peak > 0 else 1.0, auto_format=True)  # DS: at most 16 characters
    stored = np.clip(np.round(images / float(slope)), 0, UINT16_MAX).astype(np.uint16)
    series_uid = generate_uid()
    source_folder = dicom_series_folder(volume)
    paths = []
    for source, pixels in zip(datasets, stored):
        missing = [keyword for keyword in ("SOPClassUID", "SOPInstanceUID") if keyword not in source]
        if missing:
            raise ValueError(f"{source.filename}: no {' or '.join(missing)}, so no DICOM can be derived from it")
        dataset = copy.deepcopy(source)
        for keyword in _STALE_PIXEL_TAGS:
            if keyword in dataset:
                delattr(dataset, keyword)
        dataset.ensure_file_meta()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        # a new SOPInstanceUID too; dcmwrite copies it to MediaStorageSOPInstanceUID
        dataset.set_pixel_data(pixels, "MONOCHROME2", 16)
        dataset.RescaleSlope, dataset.RescaleIntercept = slope, 0
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesNumber = int(source.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
        dataset.SeriesDescription = description
        dataset.DerivationDescription = description
        dataset.ImageType = ["DERIVED", "SECONDARY"]
        dataset.SourceImageSequence = [_reference_to(source)]
        path = os.path.join(folder, os.path.relpath(source.filename, source_folder))
        _make_parent(path)
        pydicom.dcmwrite(path, dataset, enforce_file_format=True)
        paths.append(path)
    return paths


def dicom_series_folder(volume: readers.Volume) -> str:
    """The folder a DICOM volume's files live in: the series folder, or the folder of a one-file series."""
    return volume.path if os.path.isdir(volume.path) else os.path.dirname(volume.path)


def _reference_to(source: Dataset) -> Dataset:
    """A SourceImageSequence item, so the synthetic image can be traced back to the scan it came from."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def write_png16(unit_image: np.ndarray, path: str) -> None:
    """Write a [0, 1] image as a 16-bit grayscale PNG holding round(value x 65535).

    16 bits keep the network's precision (8 bits would band smooth tissue); values
    outside [0, 1] are clipped.
    """
    pixels = np.round(np.clip(unit_image, 0.0, 1.0) * UINT16_MAX).astype(np.uint16)
    _make_parent(path)
    Image.fromarray(pixels).save(path)
