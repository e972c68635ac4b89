"""Read the scans researchers have as float32 axial slices, without losing precision.

Every reader returns `Volume`s whose `data` is float32 [S, H, W] holding the raw
intensities (DICOM rescale and NIfTI scl_slope applied; 16-bit values kept exactly,
never quantised to 8 bit). Only colour images are reduced, to ITU-R 601 luma, with a
warning. NaN/Inf become 0 with a warning, so they never reach the networks.

Formats and choices:

* PNG / TIFF / JPEG: one volume per file, S == 1 (a multi-page TIFF stack gives one
  slice per page).
* DICOM: files are recognised by extension (.dcm, .dicom, .ima) or by the 'DICM'
  preamble, so extension-less exports work. `read_path` groups files by
  SeriesInstanceUID and sorts each series along its slice normal (row x column
  cosines of ImageOrientationPatient, dotted with ImagePositionPatient), falling back
  to InstanceNumber when the geometry tags are missing. Slices keep their stored
  row/column layout. MONOCHROME1 is inverted (volume max - value) so bright always
  means more signal. The subject is the PatientID, else taken from the file/folder name.
* NIfTI (.nii, .nii.gz): reoriented to the closest canonical RAS orientation
  (`meta["ornt"]`), then cut along the superior axis (slice 0 is the most inferior).
  In-plane, a slice is laid out as DICOM stores a standard axial image (radiological
  convention): row 0 is anterior, column 0 is the patient's right, i.e.
  ``slice[r, c] = canonical[X-1-c, Y-1-r, s]``. `to_original_nifti` undoes this.
  2D NIfTI (X, Y) or (X, Y, 1) gives S == 1 and must be axial.
  4D NIfTI with more than one volume is refused (BadFileError): a T1/T2 translator has
  no right answer for an fMRI/DWI series, and silently taking the first volume would
  train on, say, a b0 image. Trailing length-1 dimensions are dropped.

Subjects: a volume's `subject` pairs the T1 and T2 of one subject across domains. It is
the subject id the file name carries in IXI (IXI002-Guys-0828-T1 -> IXI002), BIDS
(sub-01_ses-1_T1w -> sub-01_ses-1) or BraTS naming, or with a trailing contrast tag
(case7_t1, BraTS-GLI-00001-000-t1n -> case7, BraTS-GLI-00001-000); else the file stem.

Bad input never produces a traceback from `read_path`: every failure is a
`BadFileError` whose message is one line naming the file.
"""

import dataclasses
import glob
import os
import re
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pydicom.errors
import pydicom.pixels
from absl import logging
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image, ImageSequence

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
ON_BAD_FILE = ("skip", "error")

_GRAY_MODES = ("L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
_RAS = axcodes2ornt("RAS")
_SUBJECT_IN_NAME = (
    re.compile(r"^IXI\d+(?=-)"),
    re.compile(r"^sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?(?=_)"),
    re.compile(r"^.+?(?=[-_](?:t1n|t2w|t1|t2)$)", re.IGNORECASE),
)

_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_NIFTI_ERRORS = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
    OSError,
    EOFError,
    ValueError,
    zlib.error,
)
# pydicom raises a variety of these on corrupt elements or undecodable pixel data.
_DICOM_ERRORS = (
    pydicom.errors.InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    AttributeError,
    TypeError,
    NotImplementedError,  # pydicom's answer to compressed pixel data it has no decoder for
    RuntimeError,
)


class BadFileError(Exception):
    """An unusable file, series or folder; the message is one line that names it."""


@dataclasses.dataclass
class Volume:
    path: str  # the file, or the folder of a DICOM series
    kind: str  # "image" | "dicom" | "nifti"
    data: np.ndarray  # float32 [S, H, W] raw intensities, axial slices; S == 1 for 2D inputs
    subject: str  # pairs test files across domains (see the module docstring); layouts may override
    meta: dict  # what a writer needs to put results back (see the module docstring)


def file_stem(path: str) -> str:
    """The name without a known image suffix ('a.nii.gz' -> 'a'); DICOM UIDs keep their dots."""
    name = os.path.basename(os.path.normpath(path))
    for suffix in NIFTI_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def subject_from_name(path: str) -> str:
    """The subject id a file or folder name carries (IXI, BIDS, BraTS, a _t1/_t2 tag), else its stem."""
    stem = file_stem(path)
    for pattern in _SUBJECT_IN_NAME:
        match = pattern.match(stem)
        if match:
            return match.group(0)
    return stem


def walk_files(folder: str) -> list[str]:
    """All non-hidden files under `folder`, sorted; hidden files and folders are skipped silently."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return found


def read_file(path: str) -> list[Volume]:
    """Read one file; a single DICOM file gives a volume of its own frames (usually one)."""
    kind = _file_kind(path)
    if kind == "image":
        volume = _read_image(path)
    elif kind == "nifti":
        volume = _read_nifti(path)
    elif kind == "dicom":
        volume = _dicom_volume([_read_dicom(path)], path)
    else:
        raise BadFileError(f"{path}: not a PNG/TIFF/JPEG image, NIfTI or DICOM file")
    return [_checked(volume)]


def read_path(spec: str, on_bad_file: str = "skip") -> list[Volume]:
    """Read a file, folder (recursively) or glob; DICOM files are grouped into series.

    on_bad_file="skip" logs a warning per bad file and goes on; "error" raises on the first.
    Raises BadFileError when nothing usable is found.
    """
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file must be one of {ON_BAD_FILE}, not {on_bad_file!r}")

    def reject(error: BadFileError) -> None:
        if on_bad_file == "error":
            raise error
        logging.warning("skipping bad file: %s", error)

    paths, nothing_found = _expand(spec)
    volumes, dicom_slices, ignored, bad = [], [], 0, 0
    for path in paths:
        try:
            kind = _file_kind(path)
            if kind is None:
                ignored += 1
            elif kind == "dicom":
                dicom_slices.append(_read_dicom(path))
            else:
                volumes += read_file(path)
        except BadFileError as error:
            bad += 1
            reject(error)
    for series in _group_series(dicom_slices):
        try:
            volumes.append(_checked(_dicom_volume(series, _series_path(series))))
        except BadFileError as error:
            bad += 1
            reject(error)
    if ignored:
        logging.info("%s: ignored %d files that are not images, NIfTI or DICOM", spec, ignored)
    if not volumes:
        reason = nothing_found or f"bad files: {bad}, files not images/NIfTI/DICOM: {ignored}"
        raise BadFileError(f"no usable images in {spec} ({reason})")
    return sorted(volumes, key=lambda volume: volume.path)


def to_original_nifti(data: np.ndarray, meta: dict) -> np.ndarray:
    """Undo the NIfTI slicing: [S, H, W] slices -> an array in the source file's voxel order and shape.

    Save it with `nib.Nifti1Image(array, meta["image"].affine, meta["image"].header)`.
    """
    canonical = np.asarray(data).transpose(2, 1, 0)[::-1, ::-1, :]
    original = apply_orientation(canonical, ornt_transform(_RAS, meta["ornt"]))
    return original.reshape(meta["image"].shape)


def _expand(spec: str) -> tuple[list[str], str]:
    """The files a spec names, and why there are none (empty string when there are some)."""
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        files = walk_files(path)
        return files, "" if files else "empty folder"
    if os.path.exists(path):  # checked before globbing so '[' or '#' in a real name is literal
        return [path], ""
    matches = sorted(glob.glob(path, recursive=True))
    if not matches:
        return [], "no such file or folder" if not glob.has_magic(path) else "nothing matches"
    files = []
    for match in matches:
        files += walk_files(match) if os.path.isdir(match) else [match]
    return files, "" if files else "only empty folders match"


def _file_kind(path: str) -> str | None:
    """'image', 'nifti' or 'dicom'; None for files that are none of these (ignored in folders)."""
    if os.path.basename(path).upper() == "DICOMDIR":  # an index of the media, not an image
        return None
    try:
        kind = _kind_by_name(path) or ("dicom" if _has_dicom_preamble(path) else None)
        empty = kind is not None and os.path.getsize(path) == 0
    except OSError as error:
        raise BadFileError(f"{path}: cannot open ({error.strerror or error})") from error
    if empty:
        raise BadFileError(f"{path}: empty file (0 bytes)")
    return kind


def _kind_by_name(path: str) -> str | None:
    name = path.lower()
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    return None


def _has_dicom_preamble(path: str) -> bool:
    with open(path, "rb") as file:
        return file.read(132)[128:] == b"DICM"


def _one_line(error: Exception) -> str:
    """Library messages can span lines (nibabel's do); a BadFileError is one line."""
    return " ".join(str(error).split())


def _checked(volume: Volume) -> Volume:
    """Refuse empty data, zero non-finite values and report constant volumes, naming the file."""
    if volume.data.size == 0:
        raise BadFileError(f"{volume.path}: no pixels (shape {volume.data.shape})")
    finite = np.isfinite(volume.data)
    if not finite.all():
        logging.warning("%s: %d NaN/Inf values replaced with 0", volume.path, finite.size - finite.sum())
        volume.data = np.where(finite, volume.data, np.float32(0))
    if volume.data.min() == volume.data.max():
        value = volume.data.flat[0]
        logging.warning("%s: constant image (every value is %g); it carries no signal", volume.path, value)
    return volume


def _read_image(path: str) -> Volume:
    try:
        with Image.open(path) as image:
            mode = image.mode
            frames = [_gray_pixels(frame) for frame in ImageSequence.Iterator(image)]
    except _IMAGE_ERRORS as error:
        raise BadFileError(f"{path}: unreadable image ({_one_line(error)})") from error
    if mode not in _GRAY_MODES:
        logging.warning("%s: colour image (mode %s) converted to gray (ITU-R 601 luma)", path, mode)
    if len({frame.shape for frame in frames}) > 1:
        raise BadFileError(f"{path}: pages of different sizes in one image stack")
    return Volume(path, "image", np.stack(frames), subject_from_name(path), {"mode": mode})


def _gray_pixels(frame: Image.Image) -> np.ndarray:
    """A frame as float32 gray values exactly as stored; colour goes through luma."""
    if frame.mode in _GRAY_MODES:
        return np.asarray(frame, dtype=np.float32)
    rgb = np.asarray(frame.convert("RGB"), dtype=np.float64)
    return (rgb @ _LUMA_WEIGHTS).astype(np.float32)


def _read_nifti(path: str) -> Volume:
    try:
        image = nib.load(path, mmap=False)
        data = image.get_fdata(dtype=np.float32)
    except _NIFTI_ERRORS as error:
        raise BadFileError(f"{path}: unreadable NIfTI ({_one_line(error)})") from error
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise BadFileError(f"{path}: 4D NIfTI with {data.shape[3]} volumes; extract the anatomical 3D volume first")
    if data.ndim not in (2, 3):
        raise BadFileError(f"{path}: NIfTI of shape {image.shape} is not a 2D or 3D image")
    is_2d = data.ndim == 2 or data.shape[2] == 1
    data = data.reshape(data.shape[:2] + (-1,))
    ornt = io_orientation(image.affine)
    if np.isnan(ornt).any():
        raise BadFileError(f"{path}: degenerate affine, orientation unknown")
    if is_2d and ornt[2, 0] != 2:
        raise BadFileError(f"{path}: 2D NIfTI is not an axial slice (affine puts it in another plane)")
    canonical = apply_orientation(data, ornt)
    slices = np.ascontiguousarray(canonical[::-1, ::-1, :].transpose(2, 1, 0), dtype=np.float32)
    return Volume(path, "nifti", slices, subject_from_name(path), {"image": image, "ornt": ornt})


@dataclasses.dataclass
class _DicomSlice:
    path: str
    dataset: pydicom.Dataset
    pixels: np.ndarray  # float32 [frames, rows, columns], rescale applied


def _read_dicom(path: str) -> _DicomSlice:
    try:
        # without the preamble we only get here because the extension claims DICOM
        dataset = pydicom.dcmread(path, force=not _has_dicom_preamble(path))
        if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise BadFileError(f"{path}: DICOM without pixel data")
        if dataset.get("SamplesPerPixel", 1) != 1:
            raise BadFileError(f"{path}: colour DICOM (SamplesPerPixel={dataset.SamplesPerPixel}) is not supported")
        pixels = pydicom.pixels.apply_rescale(dataset.pixel_array, dataset)
        pixels = pixels.reshape(-1, dataset.Rows, dataset.Columns).astype(np.float32)
    except _DICOM_ERRORS as error:
        raise BadFileError(f"{path}: unreadable DICOM ({type(error).__name__}: {_one_line(error)})") from error
    return _DicomSlice(path, dataset, pixels)


def _group_series(slices: list[_DicomSlice]) -> list[list[_DicomSlice]]:
    """Group by SeriesInstanceUID (the folder when missing), in order of first appearance."""
    series: dict[str, list[_DicomSlice]] = {}
    for dicom_slice in slices:
        key = str(dicom_slice.dataset.get("SeriesInstanceUID", "")) or os.path.dirname(dicom_slice.path)
        series.setdefault(key, []).append(dicom_slice)
    return list(series.values())


def _series_path(series: list[_DicomSlice]) -> str:
    if len(series) == 1:
        return series[0].path
    return os.path.commonpath([os.path.dirname(s.path) for s in series])


def _slice_order_key(series: list[_DicomSlice]):
    """Position along the slice normal when every slice has geometry, else InstanceNumber, else path."""
    datasets = [s.dataset for s in series]
    if all(len(d.get("ImageOrientationPatient") or ()) == 6 and len(d.get("ImagePositionPatient") or ()) == 3
           for d in datasets):
        cosines = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(cosines[:3], cosines[3:])
        return lambda s: float(np.dot(np.asarray(s.dataset.ImagePositionPatient, dtype=float), normal))
    if all(d.get("InstanceNumber") is not None for d in datasets):
        return lambda s: int(s.dataset.InstanceNumber)
    return lambda s: s.path


def _dicom_volume(series: list[_DicomSlice], path: str) -> Volume:
    series = sorted(series, key=_slice_order_key(series))
    shapes = sorted({s.pixels.shape[1:] for s in series})
    if len(shapes) > 1:
        uid = series[0].dataset.get("SeriesInstanceUID", "?")
        raise BadFileError(f"{path}: series {uid} mixes slice shapes {shapes}")
    data = np.concatenate([s.pixels for s in series])
    first = series[0].dataset
    if first.get("PhotometricInterpretation") == "MONOCHROME1":
        data = data.max() - data
    subject = str(first.get("PatientID", "") or "").strip() or subject_from_name(path)
    return Volume(path, "dicom", data, subject, {"datasets": [s.dataset for s in series]})
