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
  to InstanceNumber when the geometry tags are missing. The series is then laid out
  exactly like a NIfTI volume (below): axial, sagittal and coronal series alike become
  axial slices, from ImageOrientationPatient (`meta["ornt"]`, `to_stored_dicom` undoes
  it; `meta["datasets"]` holds the files' datasets in slice-normal order). Limits:
  an oblique series is laid out as the plane it is closest to, not resampled (as
  NIfTI); a series without geometry tags and multi-frame files (warned about) are
  taken as stored, as standard axial images; a series mixing orientations and a
  single slice that is not axial are refused. MONOCHROME1 is inverted (volume max -
  value) so bright always means more signal. The subject is the PatientID, else taken
  from the file/folder name.
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
`BadFileError` whose message is one line naming the file (line breaks in a file name are
escaped). Only the exceptions the libraries raise for corrupt files, and only around
library calls, become BadFileError, so an exception from a bug in this module surfaces as
itself. Headers are checked before any pixel is read: a NIfTI or DICOM header announcing
more than MAX_VOXELS voxels (or, for an uncompressed .nii, more bytes than the file holds)
is refused before anything is allocated; so are pixel types that are not real numbers,
non-finite affines and DICOM pixel attributes that are not positive integers. Only regular
files are read (a FIFO or device named like an image is refused, never opened), and a
folder reached twice through symlinks is walked once. `tests/test_fuzz_readers.py` holds
the readers to this over thousands of malformed files.
"""

import dataclasses
import glob
import io
import math
import os
import re
import stat
import struct
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pydicom.errors
import pydicom.multival
import pydicom.pixels
from absl import logging
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image, ImageSequence

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
ON_BAD_FILE = ("skip", "error")
# Largest volume a header may announce: 512^3 voxels, 0.5 GiB as float32, several times a 0.5 mm
# whole-head scan. Checked before reading, so a corrupt header cannot make a reader allocate 10^9 voxels.
MAX_VOXELS = 512**3

_GRAY_MODES = ("L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
_RAS = axcodes2ornt("RAS")
_SUBJECT_IN_NAME = (
    re.compile(r"^IXI\d+(?=-)"),
    re.compile(r"^sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?(?=_)"),
    re.compile(r"^.+?(?=[-_](?:t1n|t2w|t1|t2)$)", re.IGNORECASE),
)

# What the libraries raise for corrupt or truncated files (found by truncating and corrupting
# files of each format). Only library calls run under these, so a bug in our own code is
# never reported as a bad file. Pillow raises TypeError for a TIFF without dimensions, KeyError
# for a TIFF whose tags name an unknown mode (found by the fuzz test).
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, KeyError, Image.DecompressionBombError)
_NIFTI_ERRORS = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
    OSError,
    EOFError,
    ValueError,
    zlib.error,
)
# Parsing: corrupt element headers and values (a UID that is not a string raises TypeError).
_DICOM_PARSE_ERRORS = (
    pydicom.errors.InvalidDicomError,
    pydicom.errors.BytesLengthException,
    OSError,
    EOFError,
    ValueError,
    TypeError,
    NotImplementedError,  # an unknown value representation
    OverflowError,  # an IS value beyond float range ('1e400')
    struct.error,
    zlib.error,  # a corrupt deflated transfer syntax
)
# Decoding pixel data: AttributeError when file meta has no transfer syntax, NotImplementedError
# for a transfer syntax pydicom has no decoder for, RuntimeError when every decoder plugin fails,
# struct.error for a corrupt encapsulated (compressed) frame table, TypeError for an empty Pixel Data
# value, StopIteration for an RLE file with fewer fragments than frames (found by the fuzz test).
_DICOM_DECODE_ERRORS = (ValueError, AttributeError, NotImplementedError, RuntimeError, OSError, EOFError,
                        struct.error, TypeError, StopIteration)
# Axes that cosines may differ by and still count as one orientation (DS values carry ~6 digits).
_COSINE_TOLERANCE = 1e-4
# DICOM patient coordinates are LPS; NIfTI world coordinates are RAS.
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
# A series without geometry tags is taken as stored: a standard axial image (rows anterior to
# posterior, columns right to left, slices inferior to superior).
_STORED_AS_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class BadFileError(Exception):
    """An unusable file, series or folder; the message is one line that names it."""

    def __init__(self, message: str):
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))  # a file name may hold line breaks


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
    """All non-hidden files under `folder`, sorted; hidden files and folders are skipped silently.

    Symlinked folders are followed, each real folder once, so a link to a parent cannot loop.
    """
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        identity = os.stat(root)
        if (identity.st_dev, identity.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((identity.st_dev, identity.st_ino))
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
    return _from_axial(data, meta["ornt"]).reshape(meta["image"].shape)


def to_stored_dicom(data: np.ndarray, meta: dict) -> np.ndarray:
    """Undo the DICOM reorientation: [S, H, W] slices -> [frames, rows, columns] as the files store them.

    Frame k belongs to `meta["datasets"][k]` (the series sorted along its slice normal).
    """
    return _from_axial(data, meta["ornt"]).transpose(2, 1, 0)


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
    """'image', 'nifti' or 'dicom'; None for files that are none of these (ignored in folders).

    Only regular files are opened: reading a FIFO would wait forever, a device never end.
    """
    if os.path.basename(path).upper() == "DICOMDIR":  # an index of the media, not an image
        return None
    try:
        mode = os.stat(path).st_mode
        regular = stat.S_ISREG(mode)
        kind = _kind_by_name(path) or ("dicom" if regular and _has_dicom_preamble(path) else None)
        empty = kind is not None and regular and os.path.getsize(path) == 0
    except OSError as error:
        raise BadFileError(f"{path}: cannot open ({error.strerror or error})") from error
    if kind is not None and not regular:
        what = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
        raise BadFileError(f"{path}: not a regular file ({what})")
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


class _FileInMemory(io.BytesIO):
    """A file's bytes, for Pillow and pydicom: a corrupt length field (a PNG chunk, a DICOM element)
    then reads what the file holds, where a real file's read(n) would allocate all n bytes first.
    Library messages show the path, not a buffer."""

    def __init__(self, path: str):
        with open(path, "rb") as file:
            super().__init__(file.read())
        self.name = path

    def __repr__(self) -> str:
        return repr(self.name)


def _read_image(path: str) -> Volume:
    try:
        with Image.open(_FileInMemory(path)) as image:
            mode, pages, pixels = image.mode, [], 0
            for page in ImageSequence.Iterator(image):
                pixels += page.width * page.height
                _check_voxel_count(path, (pixels,), f"{len(pages) + 1} pages, this one {page.width}x{page.height}")
                pages.append(np.asarray(page if page.mode in _GRAY_MODES else page.convert("RGB")))
    except _IMAGE_ERRORS as error:
        raise BadFileError(f"{path}: unreadable image ({_one_line(error)})") from error
    if mode not in _GRAY_MODES:
        logging.warning("%s: colour image (mode %s) converted to gray (ITU-R 601 luma)", path, mode)
    frames = [_gray_pixels(page) for page in pages]
    if len({frame.shape for frame in frames}) > 1:
        raise BadFileError(f"{path}: pages of different sizes in one image stack")
    return Volume(path, "image", np.stack(frames), subject_from_name(path), {"mode": mode})


def _gray_pixels(page: np.ndarray) -> np.ndarray:
    """A decoded page as float32 gray values exactly as stored; RGB [H, W, 3] goes through luma."""
    if page.ndim == 2:
        return page.astype(np.float32)
    return (page.astype(np.float64) @ _LUMA_WEIGHTS).astype(np.float32)


def _read_nifti(path: str) -> Volume:
    try:
        image = nib.load(path, mmap=False)  # the header only: the data are read below
    except _NIFTI_ERRORS as error:
        raise BadFileError(f"{path}: unreadable NIfTI ({_one_line(error)})") from error
    _check_nifti_header(path, image)
    try:
        data = image.get_fdata(dtype=np.float32)
    except _NIFTI_ERRORS as error:
        raise BadFileError(f"{path}: unreadable NIfTI ({_one_line(error)})") from error
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise BadFileError(f"{path}: 4D NIfTI with {data.shape[3]} volumes; extract the anatomical 3D volume first")
    if data.ndim not in (2, 3):
        raise BadFileError(f"{path}: NIfTI of shape {image.shape} is not a 2D or 3D image")
    data = data.reshape(data.shape[:2] + (-1,))
    ornt = _orientation(path, image.affine, data.shape[2], "2D NIfTI")
    return Volume(path, "nifti", _to_axial(data, ornt), subject_from_name(path), {"image": image, "ornt": ornt})


def _check_nifti_header(path: str, image) -> None:
    """Refuse, before reading any voxel, what the header says that cannot be (or should not be) read."""
    _check_voxel_count(path, image.shape, "x".join(map(str, image.shape)))
    dtype = image.get_data_dtype()
    if dtype.kind not in "biuf":
        raise BadFileError(f"{path}: NIfTI data type {dtype} is not a real-valued scalar (RGB or complex?)")
    if not path.lower().endswith(".gz"):
        announced = int(image.dataobj.offset) + math.prod(image.shape) * dtype.itemsize
        size = os.path.getsize(path)
        if announced > size:
            raise BadFileError(f"{path}: truncated NIfTI: its header announces {announced} bytes, the file has {size}")


def _check_voxel_count(path: str, dimensions, described: str) -> None:
    count = math.prod(int(d) for d in dimensions)
    if count > MAX_VOXELS:
        raise BadFileError(f"{path}: header announces {count} voxels ({described}), more than the limit of "
                           f"{MAX_VOXELS}; a corrupt header, or a volume to crop first")


def _orientation(path: str, affine: np.ndarray, depth: int, what: str) -> np.ndarray:
    """The voxel axes' closest RAS axes (nibabel `io_orientation`); one slice must be axial."""
    if not np.isfinite(affine).all():
        raise BadFileError(f"{path}: orientation unknown (the affine holds NaN or Inf)")
    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        raise BadFileError(f"{path}: orientation unknown (degenerate affine or ImageOrientationPatient)")
    if depth == 1 and ornt[2, 0] != 2:
        raise BadFileError(f"{path}: {what} is not an axial slice (its geometry puts it in another plane)")
    return ornt


def _to_axial(voxels: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Voxels [I, J, K] -> axial slices [S, H, W] laid out as the module docstring says."""
    canonical = apply_orientation(voxels, ornt)
    return np.ascontiguousarray(canonical[::-1, ::-1, :].transpose(2, 1, 0), dtype=np.float32)


def _from_axial(slices: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """The inverse of `_to_axial`: axial slices back to voxels [I, J, K] in the source's order."""
    canonical = np.asarray(slices).transpose(2, 1, 0)[::-1, ::-1, :]
    return apply_orientation(canonical, ornt_transform(_RAS, ornt))


@dataclasses.dataclass
class _DicomSlice:
    path: str
    dataset: pydicom.Dataset
    pixels: np.ndarray  # float32 [frames, rows, columns], rescale applied
    orientation: np.ndarray | None  # ImageOrientationPatient: row and column cosines (LPS), 6 values
    position: np.ndarray | None  # ImagePositionPatient (LPS mm), 3 values
    instance: float | None  # InstanceNumber

    @property
    def has_geometry(self) -> bool:
        return self.orientation is not None and len(self.orientation) == 6 and self.position is not None and \
            len(self.position) == 3


def _read_dicom(path: str) -> _DicomSlice:
    try:
        has_preamble = _has_dicom_preamble(path)
    except OSError as error:
        raise BadFileError(f"{path}: cannot open ({error.strerror or error})") from error
    try:
        # without the preamble we only get here because the extension claims DICOM
        dataset = pydicom.dcmread(_FileInMemory(path), force=not has_preamble)
        for _ in dataset.iterall():  # values are parsed lazily: parse them here, where errors mean a bad file
            pass
    except _DICOM_PARSE_ERRORS as error:
        raise _unreadable_dicom(path, error) from error
    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise BadFileError(f"{path}: DICOM without pixel data")
    if dataset.get("SamplesPerPixel", 1) != 1:
        raise BadFileError(f"{path}: colour DICOM (SamplesPerPixel={dataset.SamplesPerPixel}) is not supported")
    rows, columns = _pixel_dimensions(path, dataset)
    for keyword in ("RescaleSlope", "RescaleIntercept"):  # pydicom keeps a value that is not a number as text
        values = _tag_numbers(path, dataset, keyword)
        if values is not None and len(values) != 1:
            raise BadFileError(f"{path}: {keyword} has {len(values)} values, not one")
    try:
        pixels = pydicom.pixels.apply_rescale(dataset.pixel_array, dataset)
    except _DICOM_DECODE_ERRORS as error:
        raise _unreadable_dicom(path, error) from error
    pixels = pixels.reshape(-1, rows, columns).astype(np.float32)
    instance = _tag_numbers(path, dataset, "InstanceNumber")
    return _DicomSlice(path, dataset, pixels, _tag_numbers(path, dataset, "ImageOrientationPatient"),
                       _tag_numbers(path, dataset, "ImagePositionPatient"), None if instance is None else instance[0])


def _pixel_dimensions(path: str, dataset: pydicom.Dataset) -> tuple[int, int]:
    """Rows and Columns, checked with NumberOfFrames (positive integers, MAX_VOXELS in all) before decoding."""
    dimensions = {}
    for keyword in ("Rows", "Columns", "NumberOfFrames"):
        values = _tag_numbers(path, dataset, keyword)
        if values is None and keyword != "NumberOfFrames":
            raise BadFileError(f"{path}: DICOM without {keyword}")
        value = 1 if values is None else values[0]
        if len(values if values is not None else [1]) != 1 or value != int(value) or value < 0:
            raise BadFileError(f"{path}: {keyword} is not one positive integer ({dataset.get(keyword)!r})")
        dimensions[keyword] = max(int(value), 1) if keyword == "NumberOfFrames" else int(value)  # 0 frames: 1
    if not dimensions["Rows"] or not dimensions["Columns"]:
        raise BadFileError(f"{path}: no pixels (Rows {dimensions['Rows']}, Columns {dimensions['Columns']})")
    _check_voxel_count(path, dimensions.values(), "rows x columns x frames " + "x".join(
        map(str, dimensions.values())))
    return dimensions["Rows"], dimensions["Columns"]


def _tag_numbers(path: str, dataset: pydicom.Dataset, keyword: str) -> np.ndarray | None:
    """A numeric tag's values as float64; None when absent or empty.

    pydicom keeps values that are not numbers as text (with a warning), so they are checked here.
    """
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
    try:
        numbers = np.array([float(v) for v in values])
    except (ValueError, TypeError) as error:  # text, or bytes kept raw
        raise BadFileError(f"{path}: {keyword} is not numeric ({_one_line(error)})") from error
    if not np.isfinite(numbers).all():
        raise BadFileError(f"{path}: {keyword} is not finite ({numbers.tolist()})")
    return numbers


def _unreadable_dicom(path: str, error: Exception) -> BadFileError:
    return BadFileError(f"{path}: unreadable DICOM ({type(error).__name__}: {_one_line(error)})")


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
    if all(s.has_geometry for s in series):
        normal = np.cross(series[0].orientation[:3], series[0].orientation[3:])
        return lambda s: float(np.dot(s.position, normal))
    if all(s.instance is not None for s in series):
        return lambda s: s.instance
    return lambda s: s.path


def _voxel_axes(series: list[_DicomSlice], path: str) -> np.ndarray:
    """The RAS directions of the voxel axes (column, row, slice) of a sorted series, as an affine.

    Slices are sorted along the normal row x column, so that is the slice axis. Without
    geometry tags, and for multi-frame files (whose per-frame geometry is not read), the
    slices are taken as stored: a standard axial image.
    """
    cosines = np.asarray(_STORED_AS_AXIAL)
    if any(len(s.pixels) > 1 for s in series):
        logging.warning("%s: multi-frame DICOM: frames kept in stored order and layout, not reoriented", path)
    elif all(s.has_geometry for s in series):
        all_cosines = np.array([s.orientation for s in series])
        if np.abs(all_cosines - all_cosines[0]).max() > _COSINE_TOLERANCE:
            raise BadFileError(f"{path}: series mixes slice orientations (ImageOrientationPatient differs)")
        cosines = all_cosines[0]
    row, column = cosines[:3], cosines[3:]
    axes = np.eye(4)
    axes[:3, :3] = np.column_stack([row, column, np.cross(row, column)]) * _LPS_TO_RAS[:, None]
    return axes


def _dicom_volume(series: list[_DicomSlice], path: str) -> Volume:
    series = sorted(series, key=_slice_order_key(series))
    shapes = sorted({s.pixels.shape[1:] for s in series})
    if len(shapes) > 1:
        uid = series[0].dataset.get("SeriesInstanceUID", "?")
        raise BadFileError(f"{path}: series {uid} mixes slice shapes {shapes}")
    data = np.concatenate([s.pixels for s in series])  # [slices, rows, columns]
    first = series[0].dataset
    if first.get("PhotometricInterpretation") == "MONOCHROME1":
        data = data.max() - data
    ornt = _orientation(path, _voxel_axes(series, path), len(data), "a single DICOM slice")
    subject = str(first.get("PatientID", "") or "").strip() or subject_from_name(path)
    meta = {"datasets": [s.dataset for s in series], "ornt": ornt}
    return Volume(path, "dicom", _to_axial(data.transpose(2, 1, 0), ornt), subject, meta)
