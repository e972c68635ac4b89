"""Write translated slices back in the format, grid and orientation they were read from.

Each writer takes a `readers.Volume` (whose `meta` says how it was read) and its
translated axial slices [S, H, W], so the output lines up with the input voxel for
voxel in any viewer:

* NIfTI: the input's voxel order, shape, affine and header (qform/sform, zooms,
  units), with float32 data and `descrip` saying the image is synthetic.
* DICOM: a new MR series, from a DICOM series (one file per source file, every source tag
  kept except those that would now be wrong) or from a NIfTI volume (one file per slice of
  its grid); each file a complete derived MR image (see `write_dicom_series`).
* PNG: 16-bit, for the [0, 1] images that PNG inputs give.
"""

import copy
import datetime
import importlib.metadata
import os

import nibabel as nib
import numpy as np
from PIL import Image
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
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
# What a derived image copies from its source and cannot make up: its provenance and its place in the patient.
_REQUIRED_FROM_SOURCE = ("SOPClassUID", "SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
                         "PixelSpacing")
# Type 1 attributes of the MR Image IOD a source may lack: the values a derived, computed image has. And the body
# part (these are brain scans), which tells a reader that Laterality (Type 2C, for paired body parts) does not apply.
_DERIVED_DEFAULTS = {"Modality": "MR", "ScanningSequence": "RM", "SequenceVariant": "NONE", "BodyPartExamined": "HEAD"}
# Type 2 attributes of the MR Image IOD's modules (patient, study, series, frame of reference, equipment, image
# plane, MR image): present, and empty when the source does not have them.
_REQUIRED_TYPE_2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "PatientPosition", "PositionReferenceIndicator", "Manufacturer", "SliceThickness",
    "ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength", "InstanceNumber",
)
# NIfTI voxel axes whose direction cosines differ from orthogonal by more than this are a shear.
_ORTHOGONAL_TOLERANCE = 1e-4


def _make_parent(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)


def write_nifti(volume: readers.Volume, slices: np.ndarray, path: str, description: str) -> None:
    """Write axial `slices` (the reader's layout) as a NIfTI in the input file's voxel order.

    The input header is copied, so shape, affine, qform/sform codes and zooms match, with one
    change (`_qform_as_read`): the qform holds the affine the volume was read with, so readers
    that prefer the qform (ITK, SimpleITK) see the same grid as nibabel. The data type becomes
    float32 and nibabel writes no scaling (scl_slope NaN), so values are stored exactly as given. `description` goes to `descrip` (80 characters at most).
    """
    image = volume.meta["image"]
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    _qform_as_read(header, image.affine)
    header["descrip"] = description
    data = readers.to_original_nifti(np.asarray(slices, np.float32), volume.meta)
    _make_parent(path)
    nib.save(type(image)(data, image.affine, header), path)


def _qform_as_read(header, affine: np.ndarray) -> None:
    """Make `header`'s qform the `affine` that nibabel (and so the reader) took from the sform or qform.

    nibabel prefers the sform when its code is set; ITK prefers the qform unless the sform code is
    "scanner". An input whose two differ would be read on two grids; the output is read on one. A
    sheared affine, which a qform cannot hold, leaves the qform code 0, so every reader takes the sform.
    """
    try:
        header.set_qform(affine, code=int(header["qform_code"]), strip_shears=False)
    except nib.spatialimages.HeaderDataError:
        header.set_qform(None, code=0)


def write_dicom_series(volume: readers.Volume, slices: np.ndarray, folder: str, description: str) -> list[str]:
    """Write `slices` as a new MR DICOM series in `folder`, one file per slice; returns the paths.

    From a DICOM series, each file is a copy of its source file (same name, relative to
    `dicom_series_folder(volume)`): patient, study, frame of reference, equipment, geometry and
    acquisition tags are kept. From a NIfTI volume, the series is built on the file's voxel grid:
    slice k of the file is `IM{k + 1:04d}.dcm`, rows along its second voxel axis and columns along
    its first, with ImagePositionPatient, ImageOrientationPatient, PixelSpacing and SliceThickness
    from the affine (RAS turned into DICOM's LPS), so a converter such as dcm2niix gives the input's
    grid back. Either way every file gets (`_as_derived`):

    * new SeriesInstanceUID, SOPInstanceUIDs and SeriesNumber (source + 1000), ImageType
      DERIVED\\SECONDARY\\OTHER, `description` as SeriesDescription and DerivationDescription, a
      SourceImageSequence pointing at the source image (DICOM input), and this program in the
      ContributingEquipmentSequence;
    * every attribute the MR Image IOD requires that the source lacks: new StudyInstanceUID and
      FrameOfReferenceUID (shared by the series), ScanningSequence RM (research mode),
      SequenceVariant NONE and BodyPartExamined HEAD, the Type 2 attributes present and empty
      (an empty Laterality is removed: the head is not a paired body part);
    * the pixels as unsigned 16-bit MONOCHROME2 (bright = more signal, also for MONOCHROME1
      sources) with one RescaleSlope for the whole series, series maximum / 65535, and
      intercept 0: the full 16-bit range, no clipping above, the same stored value meaning
      the same intensity in every slice; error at most half a slope (negative values, which
      MRI magnitude and the translations never have, are stored as 0);
    * window, LUT, padding and min/max-pixel tags removed (they described the source pixels);
    * uncompressed Explicit VR Little Endian.

    Refused (ValueError naming the file): multi-frame sources (their per-frame functional groups
    would need rewriting), sources without SOP UIDs or without the Image Plane geometry, and NIfTI
    affines whose axes are not orthogonal (DICOM cannot store a shear).
    """
    refusal = dicom_refusal(volume)
    if refusal:
        raise ValueError(refusal)
    if volume.kind == "nifti":
        images = np.moveaxis(readers.to_original_nifti(np.asarray(slices, np.float64), volume.meta), 2, 0)
        images = images.transpose(0, 2, 1)  # slice k, rows along voxel axis j, columns along i
        sources = _nifti_slice_datasets(volume, len(images))
        names = [f"IM{k + 1:04d}.dcm" for k in range(len(images))]
    else:
        images = readers.to_stored_dicom(np.asarray(slices, np.float64), volume.meta)
        sources = volume.meta["datasets"]
        source_folder = dicom_series_folder(volume)
        names = [os.path.relpath(source.filename, source_folder) for source in sources]
    peak = float(np.max(images))
    slope = DSfloat(peak / UINT16_MAX if peak > 0 else 1.0, auto_format=True)  # DS: at most 16 characters
    stored = np.clip(np.round(images / float(slope)), 0, UINT16_MAX).astype(np.uint16)
    series = {"SeriesInstanceUID": generate_uid(), "StudyInstanceUID": generate_uid(),
              "FrameOfReferenceUID": generate_uid()}  # the last two used only where the source has none
    paths = []
    for source, pixels, name in zip(sources, stored, names):
        dataset = _as_derived(source, series, description, reference=volume.kind == "dicom")
        dataset.set_pixel_data(pixels, "MONOCHROME2", 16)
        dataset.RescaleSlope, dataset.RescaleIntercept = slope, 0
        path = os.path.join(folder, name)
        _make_parent(path)
        pydicom.dcmwrite(path, dataset, enforce_file_format=True)
        paths.append(path)
    return paths


def dicom_refusal(volume: readers.Volume) -> str | None:
    """Why `volume` cannot be written as DICOM (one line naming the file), or None; cheap, so callers check
    before translating."""
    if volume.kind == "image":
        return f"{volume.path}: an image has no patient geometry, so no DICOM can be written from it"
    if volume.kind == "nifti":
        axes = volume.meta["image"].affine[:3, :3]
        lengths = np.linalg.norm(axes, axis=0)
        cosines = (axes / lengths).T @ (axes / lengths)
        if not np.all(lengths > 0) or np.abs(cosines - np.eye(3)).max() > _ORTHOGONAL_TOLERANCE:
            return f"{volume.path}: its affine's voxel axes are not orthogonal (sheared), which DICOM cannot store"
        return None
    datasets = volume.meta["datasets"]
    if len(datasets) != len(readers.to_stored_dicom(volume.data, volume.meta)):
        return f"{volume.path}: multi-frame DICOM output is not supported; convert the series to NIfTI"
    for source in datasets:
        missing = [keyword for keyword in _REQUIRED_FROM_SOURCE if keyword not in source]
        if missing:
            return f"{source.filename}: no {' or '.join(missing)}, so no DICOM can be derived from it"
    return None


def dicom_series_folder(volume: readers.Volume) -> str:
    """The folder a DICOM volume's files live in: the series folder, or the folder of a one-file series."""
    return volume.path if os.path.isdir(volume.path) else os.path.dirname(volume.path)


def _nifti_slice_datasets(volume: readers.Volume, count: int) -> list[Dataset]:
    """One dataset per slice of a NIfTI file's third voxel axis, holding its geometry in DICOM's LPS."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.meta["image"].affine  # RAS -> LPS
    lengths = np.linalg.norm(affine[:3, :3], axis=0)
    row, column = affine[:3, 0] / lengths[0], affine[:3, 1] / lengths[1]
    datasets = []
    for k in range(count):
        dataset = Dataset()
        dataset.SOPClassUID, dataset.Modality = MRImageStorage, "MR"
        dataset.PatientID = volume.subject
        dataset.InstanceNumber = k + 1
        dataset.ImagePositionPatient = [_ds(v) for v in affine[:3, :] @ [0.0, 0.0, k, 1.0]]
        dataset.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row, column])]
        dataset.PixelSpacing = [_ds(lengths[1]), _ds(lengths[0])]  # between rows, between columns
        dataset.SliceThickness = _ds(lengths[2])
        datasets.append(dataset)
    return datasets


def _as_derived(source: Dataset, series: dict[str, str], description: str, reference: bool) -> Dataset:
    """A copy of `source` made a valid derived MR image of the new series (see `write_dicom_series`)."""
    dataset = copy.deepcopy(source)
    for keyword in _STALE_PIXEL_TAGS:
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPInstanceUID = generate_uid()  # dcmwrite copies it to MediaStorageSOPInstanceUID
    dataset.SeriesInstanceUID = series["SeriesInstanceUID"]
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if not dataset.get(keyword):
            setattr(dataset, keyword, series[keyword])
    for keyword, value in _DERIVED_DEFAULTS.items():
        if dataset.get(keyword) in (None, ""):
            setattr(dataset, keyword, value)
    for keyword in _REQUIRED_TYPE_2:
        if keyword not in dataset:
            setattr(dataset, keyword, None)
    if "Laterality" in dataset and not dataset.Laterality:
        del dataset.Laterality  # empty means unknown; for an unpaired body part, the head, it must be absent
    dataset.SeriesNumber = int(source.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
    dataset.SeriesDescription = description
    dataset.DerivationDescription = description
    dataset.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    now = datetime.datetime.now()
    dataset.ContentDate, dataset.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    dataset.ContributingEquipmentSequence = [_this_program(description)]
    if reference:
        dataset.SourceImageSequence = [_reference_to(source)]
    return dataset


def _reference_to(source: Dataset) -> Dataset:
    """A SourceImageSequence item, so the synthetic image can be traced back to the scan it came from."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _this_program(description: str) -> Dataset:
    """A ContributingEquipmentSequence item: this program, as the processing equipment that made the image."""
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = "109102", "DCM", "Processing Equipment"
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = "mri-cyclegan"
    item.SoftwareVersions = importlib.metadata.version("mri-cyclegan")
    item.ContributionDescription = description
    return item


def _ds(value: float) -> DSfloat:
    """A DICOM decimal string (at most 16 characters) as close to `value` as that allows."""
    return DSfloat(float(value), auto_format=True)


def write_png16(unit_image: np.ndarray, path: str) -> None:
    """Write a [0, 1] image as a 16-bit grayscale PNG holding round(value x 65535).

    16 bits keep the network's precision (8 bits would band smooth tissue); values
    outside [0, 1] are clipped.
    """
    pixels = np.round(np.clip(unit_image, 0.0, 1.0) * UINT16_MAX).astype(np.uint16)
    _make_parent(path)
    Image.fromarray(pixels).save(path)
