"""Reader fuzzing (issue 13): thousands of malformed PNG, TIFF, JPEG, DICOM and NIfTI files and folders.

Cases are made deterministically from small valid files: truncations, byte flips, header fields
set to zero or absurd values (10^9 voxels, negative or NaN spacing and slopes, wrong data types,
2-D headers on 3-D data and the reverse), plus empty files, folders named like files, unreadable
files, FIFOs, symlink loops and odd names. For every case `read_path` must, in both bad-file modes,
return volumes (float32 [S, H, W], finite, not empty) or raise BadFileError with one line naming
a file under the case; nothing else, within CASE_SECONDS, in a worker process whose address space
is capped at WORKER_MEMORY, so a reader that allocates what a lying header announces fails its case.

The default suite runs every structured case and SUBSET_RANDOM_CASES random ones (a fixed seed);
the full set is opt-in (BUILD.md, "Reader fuzzing"):

    FUZZ_CASES=5000 pytest -m fuzz tests/test_fuzz_readers.py
"""

import gzip
import io
import logging
import multiprocessing
import os
import re
import resource
import struct
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pydicom.dataelem
import pydicom.tag
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, RLELossless

from data import readers

CASE_SECONDS = 20  # a case reads a few KB: anything near this is a hang, not slowness
WORKERS = 2
# Address-space cap of a worker above its footprint after imports: room for a legitimate read of the largest
# volume the readers accept (readers.MAX_VOXELS: its stored bytes plus two float32 copies, about 2.5 GiB), less
# than a header announcing 10^9 voxels would make a reader allocate (4 GB as float32 alone).
WORKER_MEMORY = 3 << 30
SEED = 20240513
SUBSET_RANDOM_CASES = 300

TAGGED_UID = "1.2.826.0.1.3680043.8.498.1"  # fixed UIDs keep the base files byte-identical from run to run
OTHER_UID = "1.2.826.0.1.3680043.8.498.2"


# ---------------------------------------------------------------- valid base files (bytes)

def _image_bytes(pixels, suffix, **save) -> bytes:
    buffer = io.BytesIO()
    frames = [Image.fromarray(p) for p in pixels] if isinstance(pixels, list) else [Image.fromarray(pixels)]
    fmt = {".png": "PNG", ".tif": "TIFF", ".jpg": "JPEG"}[suffix]
    frames[0].save(buffer, fmt, save_all=len(frames) > 1, append_images=frames[1:], **save)
    return buffer.getvalue()


def _dicom_bytes(stored: np.ndarray, syntax=ExplicitVRLittleEndian, series=TAGGED_UID, position=0.0,
                 instance=1) -> bytes:
    """A minimal MR file (like tests/helpers.write_dicom) with geometry and rescale; several frames if 3-D."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, f"{series}.{instance}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax == RLELossless else syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.SeriesInstanceUID, ds.InstanceNumber = "MR", "P001", series, instance
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, position], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness, ds.RescaleSlope, ds.RescaleIntercept = [0.9, 0.9], 1.5, 2, -10
    ds.set_pixel_data(stored.astype(np.uint16), "MONOCHROME2", 16, generate_instance_uid=False)
    if syntax == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _mr_small_bytes() -> bytes:
    """pydicom's MR_small.dcm: a real scanner header (big-endian explicit VR), 64x64 int16."""
    return Path(pydicom.data.get_testdata_file("MR_small.dcm")).read_bytes()


def _nifti_bytes(image) -> bytes:
    return image.to_bytes()


RAMP = np.arange(16 * 12).reshape(16, 12)
VOXELS = (np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7) - 40) * 0.5


def base_files() -> dict[str, tuple[str, bytes]]:
    """Name -> (file name, bytes) of every valid file the cases start from."""
    scaled = nib.Nifti1Image(np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7), np.diag([-1.0, -1, 1, 1]))
    scaled.header.set_slope_inter(2.0, -3.0)
    return {
        "png8": ("a.png", _image_bytes(RAMP.astype(np.uint8), ".png")),
        "png16": ("a.png", _image_bytes((RAMP * 300).astype(np.uint16), ".png")),
        "png_rgb": ("a.png", _image_bytes(np.stack([RAMP, RAMP // 2, 255 - RAMP], -1).astype(np.uint8), ".png")),
        "tif16": ("a.tif", _image_bytes((RAMP * 300).astype(np.uint16), ".tif")),
        "tif_float": ("a.tiff", _image_bytes(RAMP.astype(np.float32) / 7, ".tif")),
        "tif_stack": ("a.tif", _image_bytes([(RAMP + k).astype(np.uint16) for k in range(3)], ".tif")),
        "tif_deflate": ("a.tif", _image_bytes(RAMP.astype(np.uint8), ".tif", compression="tiff_adobe_deflate")),
        "jpg_gray": ("a.jpg", _image_bytes(RAMP.astype(np.uint8), ".jpg")),
        "jpg_rgb": ("a.jpeg", _image_bytes(np.stack([RAMP, RAMP, RAMP // 3], -1).astype(np.uint8), ".jpg")),
        "dcm": ("a.dcm", _dicom_bytes(RAMP[:6, :5] * 40)),
        "dcm_implicit": ("IM0001", _dicom_bytes(RAMP[:6, :5], syntax=ImplicitVRLittleEndian)),
        "dcm_frames": ("a.ima", _dicom_bytes(np.stack([RAMP[:4, :3] + k for k in range(3)]))),
        "dcm_rle": ("a.dicom", _dicom_bytes(RAMP[:6, :5] * 40, syntax=RLELossless)),
        "dcm_mr_small": ("MR0001", _mr_small_bytes()),
        "nii": ("a.nii", _nifti_bytes(nib.Nifti1Image(VOXELS, np.eye(4)))),
        "nii_gz": ("a.nii.gz", gzip.compress(_nifti_bytes(scaled), mtime=0)),
        "nii_2d": ("a.nii", _nifti_bytes(nib.Nifti1Image(VOXELS[:, :, 0], np.diag([-1.0, -1, 1, 1])))),
        "nii_4d": ("a.nii.gz", gzip.compress(_nifti_bytes(nib.Nifti1Image(VOXELS[..., None], np.eye(4))), mtime=0)),
        "nii2": ("a.nii", _nifti_bytes(nib.Nifti2Image(VOXELS, np.eye(4)))),
    }


# ---------------------------------------------------------------- mutations of bytes

def _gunzipped(name: str, data: bytes) -> tuple[bytes, bool]:
    """The payload to mutate: a .nii.gz is mutated inside the compression, where its header is."""
    if name.endswith(".gz"):
        return gzip.decompress(data), True
    return data, False


def _regzipped(data: bytes, zipped: bool) -> bytes:
    return gzip.compress(data, mtime=0) if zipped else data


def truncate(name: str, data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def flip_bytes(name: str, data: bytes, seed: int, count: int, inside_gzip: bool) -> bytes:
    """XOR `count` bytes with random non-zero values, half of them in the first 512 bytes (the headers)."""
    rng = np.random.default_rng(seed)
    payload, zipped = _gunzipped(name, data) if inside_gzip else (data, False)
    buffer = bytearray(payload)
    for _ in range(count):
        end = min(len(buffer), 512) if rng.random() < 0.5 else len(buffer)
        buffer[rng.integers(0, end)] ^= int(rng.integers(1, 256))
    if name.endswith(".png"):
        buffer = _png_with_fixed_crcs(bytes(buffer))
    return _regzipped(bytes(buffer), zipped)


def _png_with_fixed_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC, so a flip reaches the decoder instead of stopping at the checksum."""
    out, at = bytearray(data), 8
    while at + 12 <= len(out):
        (length,) = struct.unpack(">I", out[at : at + 4])
        end = at + 8 + length
        if end + 4 > len(out):
            break
        out[end : end + 4] = struct.pack(">I", zlib.crc32(out[at + 4 : end]))
        at = end + 4
    return bytes(out)


def png_header(name: str, data: bytes, offset: int, fmt: str, value) -> bytes:
    """An IHDR field (width 16, height 20, bit depth 24, colour type 25, ..., interlace 28) set, CRC fixed."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return _png_with_fixed_crcs(bytes(out))


def _tiff_entries(data: bytes) -> list[tuple[int, int, int]]:
    """(tag, type, entry offset) of every entry of every IFD of a little-endian TIFF (as Pillow writes)."""
    entries, ifd, seen = [], struct.unpack_from("<I", data, 4)[0], set()
    while 0 < ifd < len(data) and ifd not in seen:
        seen.add(ifd)
        (count,) = struct.unpack_from("<H", data, ifd)
        for k in range(count):
            tag, kind = struct.unpack_from("<HH", data, ifd + 2 + 12 * k)
            entries.append((tag, kind, ifd + 2 + 12 * k))
        ifd = struct.unpack_from("<I", data, ifd + 2 + 12 * count)[0]
    return entries


def tiff_tag(name: str, data: bytes, tag: int, value: int) -> bytes:
    """Set a one-value SHORT/LONG tag in every IFD (as a LONG, so 10^9 fits)."""
    out = bytearray(data)
    for entry_tag, _, at in _tiff_entries(data):
        if entry_tag == tag:
            struct.pack_into("<HII", out, at + 2, 4, 1, value & 0xFFFFFFFF)
    return bytes(out)


def tiff_next_ifd(name: str, data: bytes, target: str) -> bytes:
    """The first IFD's next-IFD offset pointing at itself (a loop), at the header, or past the end."""
    out = bytearray(data)
    first = struct.unpack_from("<I", data, 4)[0]
    (count,) = struct.unpack_from("<H", data, first)
    value = {"itself": first, "header": 0, "past_end": len(data) + 1000}[target]
    struct.pack_into("<I", out, first + 2 + 12 * count, value)
    return bytes(out)


def jpeg_frame(name: str, data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """A field of the start-of-frame segment (precision 0, height 1, width 3, components 5) set."""
    at = data.index(b"\xff\xc0") + 4
    out = bytearray(data)
    struct.pack_into(fmt, out, at + offset, value)
    return bytes(out)


def nifti_field(name: str, data: bytes, field: str, value) -> bytes:
    """One header field set to `value`, written raw: nibabel's own checks never see it on the way in."""
    payload, zipped = _gunzipped(name, data)
    klass = nib.Nifti2Header if struct.unpack_from("<i", payload)[0] == 540 else nib.Nifti1Header
    header = klass(binaryblock=payload[: klass.template_dtype.itemsize], check=False)
    if isinstance(value, dict):  # entries of an array field (dim, pixdim, srow_x)
        array = header[field]
        for index, item in value.items():
            array[index] = item
        header[field] = array
    else:
        header[field] = value
    return _regzipped(header.binaryblock + payload[len(header.binaryblock):], zipped)


def dicom_edit(name: str, data: bytes, keyword: str, value, vr: str | None = None) -> bytes:
    """A DICOM element set (or deleted when value is None), with another VR when `vr` is given."""
    if keyword == "TransferSyntaxUID":
        return _with_transfer_syntax(data, value)
    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    target = dataset
    if value is None:
        if keyword in target:
            delattr(target, keyword)
    elif vr is not None:  # written raw: pydicom would refuse to build an invalid value
        tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
        raw = value.encode() if isinstance(value, str) else value
        raw = struct.pack("<" + {"US": "H", "SS": "h", "FD": "d"}[vr], value) if vr in ("US", "SS", "FD") else raw
        raw += b" " * (len(raw) % 2)
        target[tag] = pydicom.dataelem.RawDataElement(tag, vr, len(raw), raw, 0, False, True)
    else:
        setattr(target, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def _with_transfer_syntax(data: bytes, uid: str | None) -> bytes:
    """The file meta's TransferSyntaxUID replaced (or removed when None), the body left as it was encoded."""
    at = data.index(b"\x02\x00\x10\x00UI")
    (length,) = struct.unpack_from("<H", data, at + 6)
    element = b""
    if uid is not None:
        value = uid.encode() + b"\0" * (len(uid) % 2)
        element = data[at : at + 6] + struct.pack("<H", len(value)) + value
    meta_length = struct.unpack_from("<I", data, 140)[0] + len(element) - (8 + length)
    out = data[:140] + struct.pack("<I", meta_length) + data[144:at] + element + data[at + 8 + length :]
    return out


# Header edits, each applied to the named bases: (mutation, arguments).
PNG_EDITS = [(png_header, (16, ">I", v)) for v in (0, 1, 10**9, 2**31 - 1, 2**32 - 1)] + \
    [(png_header, (20, ">I", v)) for v in (0, 1, 10**9)] + \
    [(png_header, (24, "B", v)) for v in (0, 1, 3, 16, 99)] + \
    [(png_header, (25, "B", v)) for v in (1, 3, 4, 5, 7)] + \
    [(png_header, (26, "B", 1)), (png_header, (27, "B", 1)), (png_header, (28, "B", 1)), (png_header, (28, "B", 9))]
TIFF_EDITS = [(tiff_tag, (tag, v)) for tag, values in {
    256: (0, 1, 10**9, 65535), 257: (0, 1, 10**9), 258: (0, 1, 3, 7, 12, 64), 259: (0, 2, 5, 7, 99, 32773),
    262: (2, 3, 6, 9), 273: (0, 2**31, 10**9), 277: (0, 3, 65535), 278: (0, 1, 2**31), 279: (0, 1, 2**31),
    284: (2, 9), 317: (2, 3), 339: (2, 3, 99)}.items() for v in values] + \
    [(tiff_next_ifd, (target,)) for target in ("itself", "header", "past_end")]
JPEG_EDITS = [(jpeg_frame, (0, "B", v)) for v in (0, 1, 12, 16)] + \
    [(jpeg_frame, (1, ">H", v)) for v in (0, 1, 65535)] + [(jpeg_frame, (3, ">H", v)) for v in (0, 1, 65535)] + \
    [(jpeg_frame, (5, "B", v)) for v in (0, 2, 3, 4, 255)]
NAN, INF = float("nan"), float("inf")
NIFTI_EDITS = [(nifti_field, args) for args in [
    ("dim", {1: 0}), ("dim", {1: 1, 2: 1, 3: 1}), ("dim", {1: 1000, 2: 1000, 3: 1000}),
    ("dim", {1: 32767, 2: 32767, 3: 32767}), ("dim", {0: 2}), ("dim", {0: 3, 3: 7}), ("dim", {0: 4, 4: 2}),
    ("dim", {0: 4, 4: 0}), ("dim", {0: 7, 4: 1, 5: 1, 6: 1, 7: 1}), ("dim", {0: 0}), ("dim", {0: -1}),
    ("dim", {0: 8}), ("dim", {1: -5}), ("dim", {0: 3, 3: 5}), ("dim", {2: 1}),
    ("pixdim", {1: -1, 2: -1, 3: -1}), ("pixdim", {1: NAN, 2: NAN, 3: NAN}), ("pixdim", {1: 0, 2: 0, 3: 0}),
    ("pixdim", {1: INF}), ("pixdim", {1: 1e30}), ("pixdim", {0: 0}), ("pixdim", {0: NAN}), ("pixdim", {0: -5}),
    ("scl_slope", 0.0), ("scl_slope", NAN), ("scl_slope", INF), ("scl_slope", -1.0), ("scl_slope", 1e38),
    ("scl_slope", -INF), ("scl_inter", NAN), ("scl_inter", INF), ("scl_inter", 1e38),
    ("datatype", 0), ("datatype", 1), ("datatype", 2), ("datatype", 32), ("datatype", 128), ("datatype", 2304),
    ("datatype", 1536), ("datatype", 1792), ("datatype", 2048), ("datatype", 999), ("datatype", 64),
    ("datatype", 1024), ("bitpix", 0), ("bitpix", 8), ("bitpix", 128),
    ("vox_offset", 0.0), ("vox_offset", 1e9), ("vox_offset", -352.0), ("vox_offset", NAN), ("vox_offset", 349.0),
    ("vox_offset", 1e30), ("vox_offset", 2.0**31),
    ("sizeof_hdr", 0), ("sizeof_hdr", 1), ("magic", b"n+2"), ("magic", b"ni1"), ("magic", b"\0\0\0"),
    ("extents", 16384), ("qform_code", 1), ("sform_code", 0), ("qform_code", 99), ("sform_code", -1),
    ("quatern_b", NAN), ("quatern_c", 2.0), ("qoffset_x", INF),
    ("srow_x", {0: 0, 1: 0, 2: 0}), ("srow_x", {0: NAN}), ("srow_y", {1: INF}), ("srow_z", {2: 1e38}),
    ("xyzt_units", 255), ("intent_code", 1007), ("slice_code", 7), ("dim_info", 255),
]]
NIFTI2_EDITS = [(nifti_field, args) for args in [
    ("dim", {1: 10**9}), ("dim", {1: 2**40, 2: 2**40}), ("dim", {1: 2**62, 2: 4}), ("dim", {1: -1}),
    ("dim", {0: 2}), ("vox_offset", 2**62), ("vox_offset", -1),
]]
DICOM_EDITS = [(dicom_edit, args) for args in [
    ("Rows", 0), ("Rows", 1), ("Rows", 65535), ("Columns", 0), ("Columns", 65535), ("Rows", 7),
    ("NumberOfFrames", "1000000000", "IS"), ("NumberOfFrames", "0", "IS"), ("NumberOfFrames", "-1", "IS"),
    ("NumberOfFrames", "abc", "IS"), ("NumberOfFrames", "NaN", "IS"), ("NumberOfFrames", "2", "IS"),
    ("NumberOfFrames", 65535, "US"),
    ("BitsAllocated", 0), ("BitsAllocated", 1), ("BitsAllocated", 8), ("BitsAllocated", 12), ("BitsAllocated", 32),
    ("BitsAllocated", 64), ("BitsAllocated", 65535), ("BitsStored", 0), ("BitsStored", 17), ("HighBit", 99),
    ("PixelRepresentation", 1), ("PixelRepresentation", 2), ("SamplesPerPixel", 0), ("SamplesPerPixel", 3),
    ("SamplesPerPixel", 65535), ("PlanarConfiguration", 1),
    ("PhotometricInterpretation", "RGB"), ("PhotometricInterpretation", "PALETTE COLOR"),
    ("PhotometricInterpretation", "YBR_FULL_422"), ("PhotometricInterpretation", "MONOCHROME1"),
    ("PhotometricInterpretation", None), ("PhotometricInterpretation", "XYZ"),
    ("RescaleSlope", "0", "DS"), ("RescaleSlope", "-1", "DS"), ("RescaleSlope", "NaN", "DS"),
    ("RescaleSlope", "inf", "DS"), ("RescaleSlope", "-inf", "DS"), ("RescaleSlope", "1e308", "DS"),
    ("RescaleSlope", "abc", "DS"), ("RescaleIntercept", "NaN", "DS"), ("RescaleIntercept", "1e308", "DS"),
    ("RescaleIntercept", None), ("RescaleSlope", "1\\2", "DS"),
    ("PixelSpacing", "-1\\-1", "DS"), ("PixelSpacing", "NaN\\NaN", "DS"), ("PixelSpacing", "0\\0", "DS"),
    ("PixelSpacing", "1e9\\1e9", "DS"), ("PixelSpacing", "abc", "DS"), ("SliceThickness", "-1", "DS"),
    ("SliceThickness", "NaN", "DS"),
    ("ImageOrientationPatient", [0] * 6), ("ImageOrientationPatient", "NaN\\0\\0\\0\\1\\0", "DS"),
    ("ImageOrientationPatient", [1, 0, 0, 0, 1]), ("ImageOrientationPatient", [1, 0, 0, 0, 1, 0, 0]),
    ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0]), ("ImageOrientationPatient", [10, 0, 0, 0, 10, 0]),
    ("ImageOrientationPatient", "a\\b", "LO"), ("ImageOrientationPatient", [0, 1, 0, 0, 0, -1]),
    ("ImagePositionPatient", "NaN\\0\\0", "DS"), ("ImagePositionPatient", [0, 0]),
    ("ImagePositionPatient", "1e308\\1e308\\1e308", "DS"), ("ImagePositionPatient", "x\\y\\z", "LO"),
    ("InstanceNumber", "abc", "IS"), ("InstanceNumber", "NaN", "IS"), ("InstanceNumber", "1e400", "IS"),
    ("TransferSyntaxUID", "1.2.840.10008.1.2.4.50"), ("TransferSyntaxUID", "1.2.840.10008.1.2.1.99"),
    ("TransferSyntaxUID", "1.2.840.10008.1.2.2"), ("TransferSyntaxUID", "1.2.3"), ("TransferSyntaxUID", None),
    ("TransferSyntaxUID", "1.2.840.10008.1.2.5"), ("TransferSyntaxUID", "1.2.840.10008.1.2"),
    ("PixelData", None), ("PixelData", b""), ("PixelData", b"\0"), ("PixelData", b"\1\2\3"),
    ("PixelData", b"\0" * 4096), ("FloatPixelData", b"\0\0\x80\x7f" * 30, "OF"),
    ("Rows", "abc", "LO"), ("Rows", -1, "SS"), ("Columns", 1.5, "FD"), ("SeriesInstanceUID", 7, "US"),
    ("SeriesInstanceUID", None), ("PatientID", "\n\r\t", "LO"), ("PatientID", None),
]]
EDITS = {
    "png8": PNG_EDITS, "png16": PNG_EDITS, "png_rgb": PNG_EDITS[:8],
    "tif16": TIFF_EDITS, "tif_float": TIFF_EDITS, "tif_stack": TIFF_EDITS, "tif_deflate": TIFF_EDITS,
    "jpg_gray": JPEG_EDITS, "jpg_rgb": JPEG_EDITS,
    "dcm": DICOM_EDITS, "dcm_frames": DICOM_EDITS, "dcm_rle": DICOM_EDITS[:40], "dcm_implicit": DICOM_EDITS[:20],
    "dcm_mr_small": DICOM_EDITS[:30],
    "nii": NIFTI_EDITS, "nii_gz": NIFTI_EDITS, "nii_2d": NIFTI_EDITS[:20], "nii_4d": NIFTI_EDITS[:15],
    "nii2": NIFTI2_EDITS + NIFTI_EDITS[15:30],
}


# ---------------------------------------------------------------- cases

# A case: (id, base name, mutation or None, its arguments, placement, special). Placement "alone" reads the file
# itself; "folder" reads a folder holding it and a valid sibling, which the skip mode must still return.
def structured_cases() -> list[tuple]:
    """Every header edit of every base (alone and in a folder), every special case."""
    cases = []
    for base, edits in EDITS.items():
        for k, (mutation, args) in enumerate(edits):
            placement = "folder" if k % 3 == 0 else "alone"
            cases.append((f"{base}/{mutation.__name__}{args}", base, mutation, args, placement, None))
    for special in SPECIALS:
        cases.append((f"special/{special}", None, None, (), "alone", special))
    return cases


def random_cases(count: int, seed: int = SEED) -> list[tuple]:
    """`count` truncations and byte flips of the bases, round-robin, all drawn from `seed`."""
    rng = np.random.default_rng(seed)
    names = sorted(base_names())
    cases = []
    for k in range(count):
        base = names[k % len(names)]
        placement = "folder" if rng.random() < 0.25 else "alone"
        if rng.random() < 0.3:
            fraction = float(rng.random())
            cases.append((f"{base}/truncate({fraction:.4f})", base, truncate, (fraction,), placement, None))
        else:
            flips, case_seed, inside = int(rng.choice([1, 2, 4, 8, 32])), int(rng.integers(2**31)), rng.random() < 0.7
            cases.append((f"{base}/flip({case_seed},{flips},{inside})", base, flip_bytes, (case_seed, flips, inside),
                          placement, None))
    return cases


def base_names() -> list[str]:
    return list(EDITS)


def _valid_sibling(folder: Path, base: str, bases) -> Path:
    """A valid file of the same format next to the case (a DICOM file of another series)."""
    name, data = bases[base]
    sibling = folder / ("sibling-" + name)
    if base.startswith("dcm"):
        data = _dicom_bytes(RAMP[:6, :5], series=OTHER_UID)
    sibling.write_bytes(data)
    return sibling


def _series_folder(folder: Path, edit) -> Path:
    """A 3-slice DICOM series whose middle slice is changed by `edit(bytes) -> bytes`."""
    folder.mkdir()
    for k in range(3):
        data = _dicom_bytes(RAMP[:6, :5] + k, position=2.0 * k, instance=k + 1)
        (folder / f"IM{k:04d}").write_bytes(edit(data) if k == 1 else data)
    return folder


def _loop(folder: Path, name: str) -> Path:
    (folder / name).symlink_to(folder / ("other-" + name))
    (folder / ("other-" + name)).symlink_to(folder / name)
    return folder / name


def _unreadable(folder: Path, bases, base: str) -> Path:
    """A valid file with mode 000. As root this does not stop reads (the file is then read like any
    other); the "denied_*" cases make open() answer EACCES as the OS does for a user, root or not."""
    name, data = bases[base]
    path = folder / name
    path.write_bytes(data)
    path.chmod(0)
    return path


SPECIALS = {
    **{f"empty{suffix}": lambda f, b, s=suffix: _write(f / f"x{s}", b"") for suffix in
       readers.IMAGE_SUFFIXES + readers.NIFTI_SUFFIXES + readers.DICOM_SUFFIXES},
    "empty_folder": lambda f, b: _mkdir(f / "nothing"),
    "folder_of_empty_files": lambda f, b: [_write(f / n, b"") for n in ("a.png", "b.dcm", "c.nii")] and f,
    "folder_named_nii_gz": lambda f, b: _mkdir(f / "x.nii.gz"),
    "folder_named_dcm_in_folder": lambda f, b: _mkdir(f / "x.dcm") and f,
    "folder_named_png_holding_png": lambda f, b: _write(_mkdir(f / "x.png") / "a.png", b["png8"][1]).parent,
    "unreadable_png": lambda f, b: _unreadable(f, b, "png8"),
    "unreadable_nii_gz": lambda f, b: _unreadable(f, b, "nii_gz"),
    "unreadable_dcm_in_folder": lambda f, b: _unreadable(f, b, "dcm_implicit").parent,
    "denied_png": lambda f, b: _write(f / "denied.png", b["png8"][1]),
    "denied_nii": lambda f, b: _write(f / "denied.nii", b["nii"][1]),
    "denied_dcm": lambda f, b: _write(f / "denied.dcm", b["dcm"][1]),
    "denied_in_folder": lambda f, b: _write(f / "denied", b["dcm"][1]).parent,
    "fifo_png": lambda f, b: _fifo(f / "pipe.png"),
    "fifo_extensionless_in_folder": lambda f, b: _fifo(f / "pipe").parent,
    "dev_zero_as_dcm": lambda f, b: _symlink(f / "zero.dcm", "/dev/zero"),
    "dev_urandom_as_nii_in_folder": lambda f, b: _symlink(f / "random.nii", "/dev/urandom").parent,
    "symlink_loop_png": lambda f, b: _loop(f, "loop.png"),
    "symlink_loop_nii_gz_in_folder": lambda f, b: _loop(f, "loop.nii.gz").parent,
    "self_symlink_dcm": lambda f, b: _symlink(f / "self.dcm", f / "self.dcm"),
    "dangling_symlink_in_folder": lambda f, b: _symlink(f / "gone.nii", f / "missing.nii").parent,
    "folder_symlink_loop": lambda f, b: _symlink(_write(f / "a.png", b["png8"][1]).parent / "sub", f).parent,
    "newline_in_name": lambda f, b: _write(f / "two\nlines.png", b"junk"),
    "newline_in_folder_name": lambda f, b: _write(_mkdir(f / "a\nb") / "x.nii", b"junk").parent,
    "undecodable_name": lambda f, b: _write(f / os.fsdecode(b"\xff\xfe.dcm"), b"junk"),
    "series_mixed_rows": lambda f, b: _series_folder(f / "s", lambda d: dicom_edit("", d, "Rows", 5)),
    "series_duplicate_positions": lambda f, b: _series_folder(
        f / "s", lambda d: dicom_edit("", d, "ImagePositionPatient", [0.0, 0.0, 0.0])),
    "series_slice_without_geometry": lambda f, b: _series_folder(
        f / "s", lambda d: dicom_edit("", d, "ImagePositionPatient", None)),
    "series_slice_coronal": lambda f, b: _series_folder(
        f / "s", lambda d: dicom_edit("", d, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1])),
    "series_slice_multiframe": lambda f, b: _series_folder(f / "s", lambda d: _dicom_bytes(
        np.stack([RAMP[:6, :5]] * 2), position=2.0, instance=2)),
    "series_slice_8bit": lambda f, b: _series_folder(f / "s", lambda d: dicom_edit("", d, "BitsAllocated", 8)),
    "series_slice_truncated": lambda f, b: _series_folder(f / "s", lambda d: d[: len(d) - 7]),
    "glob_matching_nothing": lambda f, b: f / "*.nii.gz",
    "glob_of_bad_and_good": lambda f, b: [_write(f / "a.png", b["png8"][1]), _write(f / "b.png", b"x")] and f / "*",
    "missing_path": lambda f, b: f / "no such file.nii",
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _symlink(path: Path, target) -> Path:
    path.symlink_to(target)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# ---------------------------------------------------------------- the worker

_BASES: dict = {}
_ROOT: list = []


def _start_worker(bases, root: str) -> None:
    """Cap the address space, keep the bases, and silence the readers' warnings (thousands of them)."""
    from absl import logging as absl_logging
    import warnings

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    footprint = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (footprint + WORKER_MEMORY, hard))
    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # libtiff and libjpeg print their complaints on fd 2
    _BASES.update(bases)
    _ROOT.append(root)


def _materialise(case, folder: Path) -> tuple[Path, Path | None]:
    """Write a case under `folder`: the path to read, and the valid sibling the skip mode must return."""
    _, base, mutation, args, placement, special = case
    if special is not None:
        return SPECIALS[special](folder, _BASES), None
    name, data = _BASES[base]
    path = folder / name
    path.write_bytes(mutation(name, data, *args))
    if placement == "folder":
        return folder, _valid_sibling(folder, base, _BASES)
    return path, None


def _denied_open(denied: Path):
    """open() as the OS answers a user without read permission on `denied`, even when running as root."""
    import builtins

    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == str(denied):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    return guarded


def run_case(case) -> str | None:
    """Read one case in both bad-file modes; None when the contract holds, else what went wrong."""
    import builtins

    case_id, special = case[0], case[5]
    folder = Path(_ROOT[0]) / f"case{os.getpid()}-{time.monotonic_ns()}"
    folder.mkdir()
    path, sibling = _materialise(case, folder)
    real_open = builtins.open
    if special is not None and special.startswith("denied"):
        denied = path if path.is_file() else next(folder.glob("denied*"))
        builtins.open = _denied_open(denied.absolute())
    try:
        for mode in readers.ON_BAD_FILE:
            problem = _check_read(str(path), folder, mode, sibling)
            if problem:
                return f"{case_id} [{mode}]: {problem}"
        return None
    finally:
        builtins.open = real_open
        _remove(folder)


def _check_read(spec: str, folder: Path, mode: str, sibling: Path | None) -> str | None:
    try:
        volumes = readers.read_path(spec, on_bad_file=mode)
    except readers.BadFileError as error:
        message = str(error)
        if "\n" in message or "\r" in message:
            return f"BadFileError on more than one line: {message!r}"
        if str(folder) not in message:
            return f"BadFileError naming no file of the case: {message!r}"
        if mode == "skip" and sibling is not None:
            return f"the valid sibling was not returned: {message!r}"
        return None
    except Exception as error:  # noqa: BLE001 -- the contract: nothing but BadFileError
        return f"{type(error).__name__}: {error!r}"[:500]
    for volume in volumes:
        data = volume.data
        if not (isinstance(data, np.ndarray) and data.dtype == np.float32 and data.ndim == 3 and data.size > 0
                and np.isfinite(data).all()):
            return f"bad volume from {volume.path}: {getattr(data, 'dtype', None)} {getattr(data, 'shape', None)}"
    files = [os.path.realpath(f) for v in volumes for f in _source_files(v)]
    if len(set(files)) != len(files):
        return f"a file read more than once (a symlink loop walked?): {len(files)} reads of {len(set(files))} files"
    if mode == "skip" and sibling is not None and str(sibling) not in [v.path for v in volumes] and \
            not any(v.path == str(sibling.parent) for v in volumes):
        return f"the valid sibling was not returned: {[v.path for v in volumes]}"
    return None


def _source_files(volume: readers.Volume) -> list[str]:
    if volume.kind == "dicom":
        return [dataset.filename for dataset in volume.meta["datasets"]]
    return [volume.path]


def _remove(folder: Path) -> None:
    """Delete a case folder without following its symlinks."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files + dirs:
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)  # unlinking needs no permission on the file itself, even a mode-000 one
            else:
                os.rmdir(path)
    os.rmdir(folder)


# ---------------------------------------------------------------- the tests

def fuzz(cases: list[tuple], root: Path) -> tuple[list[str], float]:
    """Run the cases in WORKERS capped processes; the failures, and the wall time in seconds."""
    start = time.monotonic()
    context = multiprocessing.get_context("spawn")  # a clean interpreter: no TensorFlow, no pytest state
    failures = []
    with context.Pool(WORKERS, _start_worker, (base_files(), str(root))) as pool:
        pending = [(case[0], pool.apply_async(run_case, (case,))) for case in cases]
        for case_id, result in pending:
            try:
                problem = result.get(timeout=CASE_SECONDS)
            except multiprocessing.TimeoutError:
                failures.append(f"{case_id}: no answer within {CASE_SECONDS} s (a hang, or the worker died)")
                pool.terminate()
                break
            if problem:
                failures.append(problem)
    return failures, time.monotonic() - start


def test_fuzz_subset(tmp_path):
    """Every structured case and a fixed-seed sample of random ones: the default suite's share of the fuzzing."""
    cases = structured_cases() + random_cases(SUBSET_RANDOM_CASES)
    failures, _ = fuzz(cases, tmp_path)
    assert not failures, f"{len(failures)} of {len(cases)} cases broke the contract:\n" + "\n".join(failures[:40])


@pytest.mark.fuzz
def test_fuzz_full_set(tmp_path):
    """The full set, opt-in: FUZZ_CASES (the total, structured cases included) picks its size."""
    total = int(os.environ.get("FUZZ_CASES", "0"))
    if total <= 0:
        pytest.skip("the full reader fuzz is opt-in: FUZZ_CASES=5000 pytest -m fuzz tests/test_fuzz_readers.py")
    structured = structured_cases()
    cases = structured + random_cases(max(0, total - len(structured)))
    failures, seconds = fuzz(cases, tmp_path)
    denial = "simulated: running as root, mode 000 does not stop reads" if os.geteuid() == 0 else "by the OS"
    print(f"reader fuzz: {len(cases)} cases in {seconds:.1f} s, {len(failures)} failures; permission denial {denial}")
    assert not failures, f"{len(failures)} of {len(cases)} cases broke the contract:\n" + "\n".join(failures[:40])


def test_the_cases_are_deterministic():
    """Same seed, same cases, byte for byte: a failure seen once can be replayed."""
    first, second = random_cases(50), random_cases(50)
    assert [c[0] for c in first] == [c[0] for c in second]
    bases = base_files()
    for case in first[:10] + structured_cases()[:10]:
        name, data = bases[case[1]]
        assert case[2](name, data, *case[3]) == case[2](name, data, *case[3])
    assert base_files() == bases


def test_a_header_announcing_a_billion_voxels_is_refused_before_reading(tmp_path):
    """The memory guard itself: 1000^3 voxels in a NIfTI header, 10^9 frames in a DICOM one, named in one line."""
    bases = base_files()
    nifti = tmp_path / "huge.nii"
    nifti.write_bytes(nifti_field("huge.nii", bases["nii"][1], "dim", {1: 1000, 2: 1000, 3: 1000}))
    dicom = tmp_path / "huge.dcm"
    dicom.write_bytes(dicom_edit("huge.dcm", bases["dcm"][1], "NumberOfFrames", "1000000000", "IS"))
    for path in (nifti, dicom):
        with pytest.raises(readers.BadFileError, match=rf"^{re.escape(str(path))}: header announces \d+ voxels"):
            readers.read_file(str(path))
