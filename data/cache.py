"""Training slices preprocessed once and kept on disk, for data sets larger than memory (--cache_dir).

The first run decodes every training volume through the one preprocessing path
(readers.read_path, datasets.volume_slices; the built-in phantoms through
datasets' own synthetic path), one volume at a time, and writes each domain as a
shard of raw slices; later runs, and every worker of a distributed run, read the
shards slice by slice instead of decoding files again.

Storage: little-endian uint16, value = round(x * 65535) for x in [0, 1], so a cached
slice differs from the in-memory float32 slice by at most 0.5 / 65535 (7.6e-6) plus
float32 rounding; 0 and 1 are exact. (float16 would be 6.4 times coarser near 1.)
A shard is [N, 256, 256] in C order, openable as np.memmap(path, "<u2", "r", shape=...).

Reading: `CachedSlices[i]` reads slice i with one pread, checks its CRC32 and returns
float32 in [0, 1]. Resident memory stays flat: nothing is mapped into the process, the
kernel's page cache holds what was read recently and gives it back under pressure.
A CachedSlices refuses to be turned into one array (`np.asarray`), which would load
every slice; the input pipeline indexes it per slice.

Validity: manifest.json holds a key made of the data settings (every DataSpec field but
those that never change the training slices, _NOT_IN_KEY), the source of the modules
that compute slices, and the input files with sizes and modification times. A key that
differs from the current one rebuilds the cache, logging one line saying why; so does a
shard whose size is not the manifest's. A slice whose bytes changed on disk fails its
CRC32 when read, with a one-line CacheError naming the shard.

Crash safety: a build writes its shards into a temporary folder, renames it into place
and only then replaces manifest.json (write, fsync, os.replace). Until that last step
the previous manifest, or none, is what readers see; a build killed at any point leaves
nothing a later run trusts, and the next build deletes its leftovers.

Concurrency: every process may call `build_or_open` at once (the workers of a
multi-worker run, on one host or on a shared file system with working flock). Opening
takes a shared lock on cache_dir/.lock just long enough to read the manifest and open
the shards; a build holds the lock exclusively, so one process builds while the others
wait, and then open what it built. Where the file system has no working locks, build
the cache with one process before starting the others.
"""

import dataclasses
import fcntl
import hashlib
import json
import operator
import os
import shutil
import uuid
import zlib
from collections.abc import Iterable, Iterator

import nibabel as nib
import numpy as np
import pydicom
from absl import logging
from nibabel.orientations import io_orientation
from PIL import Image

from data import datasets, layouts, masks, phantom, preprocess, readers, resample

FORMAT = 1  # bump when the shard or manifest layout changes
DTYPE = np.dtype("<u2")
UNIT = 65535  # a stored value of UNIT is 1.0
PRECISION = 0.5 / UNIT  # largest difference between a cached and an in-memory slice, before float32 rounding
SLICE_SHAPE = (preprocess.CANVAS, preprocess.CANVAS)
SLICE_BYTES = SLICE_SHAPE[0] * SLICE_SHAPE[1] * DTYPE.itemsize
FLOAT32_SLICE_BYTES = SLICE_SHAPE[0] * SLICE_SHAPE[1] * 4
DOMAINS = ("train_a", "train_b")
MANIFEST = "manifest.json"
# Data settings that never change the training slices: the test split, and where the cache lives.
_NOT_IN_KEY = ("test_a", "test_b", "synthetic_test_subjects", "cache_dir")
# The modules whose code decides a slice's values: editing one rebuilds every cache.
_SLICE_CODE = (datasets, layouts, masks, phantom, preprocess, readers, resample)
_LOCK = ".lock"
_BUILDING = ".building-"
_SHARDS = "shards-"
_NO_CACHE = "no cache yet"


class CacheError(Exception):
    """A cache that cannot be used as it is; the message is one line naming the file."""


class CachedSlices:
    """One domain's cached slices: `len`, `shape` and `[i]` (float32 [256, 256] in [0, 1]) like the in-memory stack.

    Reads are positional (pread), so tf.data's parallel lookups share one file descriptor safely.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, path: str, domain: dict):
        self.path = path
        self._file = open(path, "rb", buffering=0)
        self._crc32 = np.asarray(domain["slices"]["crc32"], dtype=np.uint32)
        self._source = np.asarray(domain["slices"]["source"], dtype=np.int64)
        self._index = np.asarray(domain["slices"]["index"], dtype=np.int64)
        self._geometry = np.asarray(domain["slices"]["geometry"], dtype=np.int64).reshape(-1, 6)
        self._sources = domain["sources"]
        self.shape = (len(self._crc32), *SLICE_SHAPE)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        index = operator.index(index)  # tf.numpy_function passes a 0-d int64 array
        if not -len(self) <= index < len(self):
            raise IndexError(f"slice {index} out of range for {len(self)} slices in {self.path}")
        index %= len(self)
        data = os.pread(self._file.fileno(), SLICE_BYTES, index * SLICE_BYTES)
        if len(data) != SLICE_BYTES or zlib.crc32(data) != self._crc32[index]:
            raise CacheError(f"{self.path}: slice {index} is corrupt (truncated or checksum mismatch); delete the "
                             "cache folder to rebuild it")
        return np.frombuffer(data, DTYPE).reshape(SLICE_SHAPE).astype(np.float32) / np.float32(UNIT)

    def __array__(self, *args, **kwargs):
        raise CacheError(f"{self.path}: refusing to load all {len(self)} cached slices into memory; index them one "
                         "at a time")

    def slice(self, index: int) -> datasets.Slice:
        """Slice `index` with its provenance, as datasets.training_slices gives it (for summaries and reports)."""
        source = self._sources[self._source[index]]
        geometry = preprocess.Geometry(*(int(v) for v in self._geometry[index]))
        return datasets.Slice(self[index], geometry, source["subject"], source["path"], int(self._index[index]))


def build_or_open(spec: datasets.DataSpec, cache_dir: str) -> tuple[CachedSlices, CachedSlices, dict]:
    """The training slices of domains A and B from `cache_dir`, building (or rebuilding) the cache first if needed."""
    os.makedirs(cache_dir, exist_ok=True)
    key = cache_key(spec)
    with _locked(cache_dir, fcntl.LOCK_SH):
        manifest, mismatch = _trusted_manifest(cache_dir, key)
        if manifest is not None and not mismatch:
            return _open(cache_dir, manifest)
    with _locked(cache_dir, fcntl.LOCK_EX):
        manifest, mismatch = _trusted_manifest(cache_dir, key)  # another process may have built it meanwhile
        if manifest is None or mismatch:
            logging.log(logging.INFO if mismatch == _NO_CACHE else logging.WARNING, "cache %s: building: %s",
                        cache_dir, mismatch)
            manifest = _write(cache_dir, key, _decoded_domains(spec))
        return _open(cache_dir, manifest)


def write_cache(cache_dir: str, spec: datasets.DataSpec, domains: dict[str, Iterable[datasets.Slice]]) -> dict:
    """Write `domains` (train_a, train_b: slices in [0, 1], streamed) as the cache of `spec`; returns the manifest.

    `build_or_open` calls this with the decoded files; benchmarks may hand it generated slices.
    """
    os.makedirs(cache_dir, exist_ok=True)
    with _locked(cache_dir, fcntl.LOCK_EX):
        return _write(cache_dir, cache_key(spec), domains)


def cache_key(spec: datasets.DataSpec) -> dict:
    """What the cached slices depend on: data settings, slice code and input files; equal keys, equal slices."""
    settings = {field.name: getattr(spec, field.name) for field in dataclasses.fields(spec)
                if field.name not in _NOT_IN_KEY}
    code = hashlib.sha256(str(FORMAT).encode())
    for module in _SLICE_CODE:
        with open(module.__file__, "rb") as file:
            code.update(file.read())
    inputs = {} if spec.synthetic else {domain: [_file_identity(path) for path in _files(specs)]
                                        for domain, specs in _domain_specs(spec).items()}
    inputs_digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return {"settings": settings, "code": code.hexdigest(), "inputs": inputs_digest, "input_files": inputs}


def estimate_bytes(spec: datasets.DataSpec) -> int:
    """The float32 size of the training slices, from file headers only (no pixel is decoded).

    An upper bound: every axial slice counts, including those --min_foreground will drop
    (typically a third of a brain volume). Unreadable headers count 0; decoding reports them.
    """
    if spec.synthetic:
        return 2 * spec.synthetic_subjects * FLOAT32_SLICE_BYTES
    slices = 0
    for specs in _domain_specs(spec).values():
        files = _files(specs)
        kinds = {path: _kind(path) for path in files}
        slices += sum(_header_slices(path) for path in files if kinds[path] != "dicom")
        slices += _dicom_header_slices([path for path in files if kinds[path] == "dicom"])
    return slices * FLOAT32_SLICE_BYTES


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo, capped by this process's cgroup memory limit less the cgroup's anonymous memory.

    Page cache is left out of the cgroup's usage, as MemAvailable leaves it out: the kernel reclaims it.
    """
    with open("/proc/meminfo") as file:
        available = next(int(line.split()[1]) * 1024 for line in file if line.startswith("MemAvailable:"))
    for limit_file, stat_file, anon_field in (("memory.max", "memory.stat", "anon"),  # cgroup v2
                                              ("memory/memory.limit_in_bytes", "memory/memory.stat", "total_rss")):
        try:
            with open(os.path.join("/sys/fs/cgroup", limit_file)) as limit:
                limit_text = limit.read().strip()
            with open(os.path.join("/sys/fs/cgroup", stat_file)) as stat:
                anon = next(int(line.split()[1]) for line in stat if line.split()[0] == anon_field)
        except (OSError, ValueError, StopIteration):
            continue
        if limit_text.isdigit():
            available = min(available, max(0, int(limit_text) - anon))
    return available


def memory_refusal(spec: datasets.DataSpec, available: int | None = None) -> str | None:
    """A one-line refusal when the training slices would take more than half the available memory, else None."""
    available = available_memory_bytes() if available is None else available
    needed = estimate_bytes(spec)
    if needed <= available / 2:
        return None
    return (f"the training slices need about {needed / 1e9:.1f} GB in memory (estimated before decoding), more than "
            f"half of the {available / 1e9:.1f} GB available; pass --cache_dir=DIR to preprocess them once to disk "
            "and stream them from there")


# ---------------------------------------------------------------- validity


def _trusted_manifest(cache_dir: str, key: dict) -> tuple[dict | None, str]:
    """The manifest when it matches `key` and its shards have their sizes; else None and why not (one line)."""
    path = os.path.join(cache_dir, MANIFEST)
    try:
        with open(path) as file:
            manifest = json.load(file)
        return manifest, _mismatch(cache_dir, manifest, key)
    except FileNotFoundError:
        return None, _NO_CACHE
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"{path}: unreadable or incomplete manifest ({type(error).__name__}: {error})"


def _mismatch(cache_dir: str, manifest: dict, key: dict) -> str:
    """Why `manifest` cannot serve `key`, or "" when it can."""
    path = os.path.join(cache_dir, MANIFEST)
    if manifest["format"] != FORMAT:
        return f"{path}: cache format {manifest['format']}, this code reads {FORMAT}"
    old = manifest["key"]
    changed = [name for name in sorted(set(old["settings"]) | set(key["settings"]))
               if old["settings"].get(name) != key["settings"].get(name)]
    if changed:
        return f"{path}: data settings changed: " + ", ".join(
            f"{name} {old['settings'].get(name)!r} -> {key['settings'].get(name)!r}" for name in changed)
    if old["code"] != key["code"]:
        return f"{path}: the preprocessing code changed ({', '.join(m.__name__ for m in _SLICE_CODE)})"
    if old["inputs"] != key["inputs"]:
        return f"{path}: input files changed (added, removed, resized or modified)"
    for domain in DOMAINS:
        shard = os.path.join(cache_dir, manifest["folder"], manifest["domains"][domain]["shard"])
        expected = manifest["domains"][domain]["count"] * SLICE_BYTES
        size = os.path.getsize(shard) if os.path.exists(shard) else None
        if size != expected:
            return f"{shard}: {'missing' if size is None else f'{size} bytes'}, the manifest says {expected}"
    return ""


# ---------------------------------------------------------------- writing


def _write(cache_dir: str, key: dict, domains: dict[str, Iterable[datasets.Slice]]) -> dict:
    """Shards into a temporary folder, renamed into place, then the manifest: see the module docstring."""
    _remove_untrusted(cache_dir)
    building = os.path.join(cache_dir, f"{_BUILDING}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(building)
    try:
        entries = {domain: _write_shard(os.path.join(building, f"{domain}.u16"), domain, domains[domain])
                   for domain in DOMAINS}
        folder = _SHARDS + os.path.basename(building)[len(_BUILDING):]
        os.rename(building, os.path.join(cache_dir, folder))
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    manifest = {"format": FORMAT, "key": key, "dtype": DTYPE.str, "unit": UNIT, "slice_shape": list(SLICE_SHAPE),
                "folder": folder, "domains": entries}
    temporary = os.path.join(cache_dir, MANIFEST + ".partial")
    with open(temporary, "w") as file:
        json.dump(manifest, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, os.path.join(cache_dir, MANIFEST))
    _fsync_folder(cache_dir)
    _remove_untrusted(cache_dir)
    logging.info("cache %s: %s", cache_dir, ", ".join(f"{d} {e['count']} slices" for d, e in entries.items()))
    return manifest


def _write_shard(path: str, domain: str, slices: Iterable[datasets.Slice]) -> dict:
    """Streams slices into one shard; returns its manifest entry (provenance per slice, columns for compactness)."""
    sources, source_ids = [], {}
    columns = {"source": [], "index": [], "geometry": [], "crc32": []}
    with open(path, "wb") as file:
        for item in slices:
            data = _quantized(item).tobytes()
            file.write(data)
            if item.source not in source_ids:
                source_ids[item.source] = len(sources)
                sources.append({"path": item.source, "subject": item.subject})
            columns["source"].append(source_ids[item.source])
            columns["index"].append(item.index)
            columns["geometry"].append(list(dataclasses.astuple(item.geometry)))
            columns["crc32"].append(zlib.crc32(data))
        file.flush()
        os.fsync(file.fileno())
    count = len(columns["crc32"])
    if not count:
        raise ValueError(f"{domain}: no training slice to cache")
    return {"shard": os.path.basename(path), "count": count, "bytes": count * SLICE_BYTES, "sources": sources,
            "slices": columns}


def _quantized(item: datasets.Slice) -> np.ndarray:
    image = np.asarray(item.image, dtype=np.float64)
    if image.shape != SLICE_SHAPE or not (image.min() >= 0 and image.max() <= 1):
        raise ValueError(f"{item.source} slice {item.index}: expected {SLICE_SHAPE} values in [0, 1], got shape "
                         f"{image.shape} in [{image.min()}, {image.max()}]")
    return np.rint(image * UNIT).astype(DTYPE)


def _remove_untrusted(cache_dir: str) -> None:
    """Delete interrupted builds and shard folders the manifest does not name (called with the lock held)."""
    try:
        with open(os.path.join(cache_dir, MANIFEST)) as file:
            current = json.load(file).get("folder")
    except (OSError, ValueError):
        current = None
    for name in os.listdir(cache_dir):
        if name.startswith((_BUILDING, _SHARDS)) and name != current:
            shutil.rmtree(os.path.join(cache_dir, name), ignore_errors=True)


def _fsync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class _locked:
    """flock on cache_dir/.lock: shared to open, exclusive to build."""

    def __init__(self, cache_dir: str, mode: int):
        self._path, self._mode = os.path.join(cache_dir, _LOCK), mode

    def __enter__(self):
        self._file = open(self._path, "a")
        fcntl.flock(self._file, self._mode)

    def __exit__(self, *exc):
        self._file.close()  # releases the lock


def _open(cache_dir: str, manifest: dict) -> tuple[CachedSlices, CachedSlices, dict]:
    folder = os.path.join(cache_dir, manifest["folder"])
    a, b = (CachedSlices(os.path.join(folder, manifest["domains"][d]["shard"]), manifest["domains"][d])
            for d in DOMAINS)
    logging.info("cache %s: %d T1 and %d T2 slices", cache_dir, len(a), len(b))
    return a, b, manifest


# ---------------------------------------------------------------- decoding (the datasets path, streamed)


def _decoded_domains(spec: datasets.DataSpec) -> dict[str, Iterator[datasets.Slice]]:
    """Each domain's training slices, in datasets.training_slices' order, decoded one volume at a time."""
    if spec.synthetic:
        n = spec.synthetic_subjects
        return {"train_a": _synthetic(range(n), "t1", spec.synthetic_seed),
                "train_b": _synthetic(range(n, 2 * n), "t2", spec.synthetic_seed)}
    return {domain: _file_slices(specs, spec, domain) for domain, specs in _domain_specs(spec).items()}


def _synthetic(subjects: range, contrast: str, seed: int) -> Iterator[datasets.Slice]:
    for subject in subjects:
        yield from datasets._synthetic_slices(phantom.render(subject, contrast, seed)[np.newaxis], contrast, subject)


def _file_slices(specs: list[str], spec: datasets.DataSpec, what: str) -> Iterator[datasets.Slice]:
    """datasets._file_slices, streamed: NIfTI and image files are read one at a time, in read_path's order.

    A spec holding DICOM files is read whole (read_path groups its files into series), so its
    series are in memory together while they are cut into slices.
    """
    count = 0
    for path_spec in specs:
        paths = sorted(readers._expand(path_spec)[0])
        kinds = {path: _kind_or_reject(path, spec.on_bad_file) for path in paths}
        whole = "dicom" in kinds.values() or len(paths) == 1
        units = [path_spec] if whole else [path for path in paths if kinds[path] is not None]
        found = False
        for unit in units:
            try:
                volumes = readers.read_path(unit, spec.on_bad_file)
            except readers.BadFileError:
                if whole or spec.on_bad_file == "error":
                    raise
                continue  # read_path has warned about the bad file
            for volume in volumes:
                found = True
                for item in datasets.volume_slices(volume, spec.min_foreground, intensity=spec.intensity,
                                                   spacing=spec.spacing):
                    count += 1
                    yield item
        if not found:
            readers.read_path(path_spec, spec.on_bad_file)  # raises read_path's own "no usable images" error
    if not count:
        raise readers.BadFileError(
            f"{what}: no slice with at least {spec.min_foreground:.0%} foreground in {', '.join(specs)}")


def _kind_or_reject(path: str, on_bad_file: str) -> str | None:
    """readers._file_kind, with read_path's handling of an entry it cannot open (skip: warn; error: raise)."""
    try:
        return readers._file_kind(path)
    except readers.BadFileError as error:
        if on_bad_file == "error":
            raise
        logging.warning("skipping bad file: %s", error)
        return None


def _domain_specs(spec: datasets.DataSpec) -> dict[str, list[str]]:
    """The file, folder or glob specs of each training domain, as datasets.training_slices resolves them."""
    if spec.data_dir:
        files = datasets._layout(spec)
        return {"train_a": files.train_a, "train_b": files.train_b}
    if not (spec.train_a and spec.train_b):
        raise ValueError("give both --train_a and --train_b (or --data_dir)")
    return {"train_a": [spec.train_a], "train_b": [spec.train_b]}


def _files(specs: list[str]) -> list[str]:
    """The image, NIfTI and DICOM files the specs name, sorted as read_path sorts its volumes."""
    return sorted(path for spec in specs for path in readers._expand(spec)[0] if _kind(path) is not None)


def _kind(path: str) -> str | None:
    try:
        return readers._file_kind(path)
    except readers.BadFileError:
        return None  # an unreadable entry: decoding reports it


def _file_identity(path: str) -> list:
    status = os.stat(path)
    return [os.path.abspath(path), status.st_size, status.st_mtime_ns]


def _header_slices(path: str) -> int:
    """Axial slices a NIfTI or image file will give, from its header."""
    try:
        if readers._kind_by_name(path) == "nifti":
            image = nib.load(path)  # header only: the data stay on disk until asked for
            shape = [d for d in image.shape[:3]] + [1] * (3 - len(image.shape[:3]))
            superior = int(np.flatnonzero(io_orientation(image.affine)[:, 0] == 2)[0])
            return shape[superior] if len(image.shape) >= 3 else 1
        with Image.open(path) as image:
            return getattr(image, "n_frames", 1)
    except (*readers._NIFTI_ERRORS, *readers._IMAGE_ERRORS, IndexError):
        return 0


def _dicom_header_slices(paths: list[str]) -> int:
    """Axial slices DICOM series will give: per series, the extent along the axis closest to superior."""
    series: dict[str, list] = {}
    for path in paths:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            frames = int(dataset.get("NumberOfFrames", 1) or 1)
            rows, columns = int(dataset.Rows), int(dataset.Columns)
            cosines = [float(v) for v in dataset.get("ImageOrientationPatient", readers._STORED_AS_AXIAL)]
        except (*readers._DICOM_PARSE_ERRORS, AttributeError):
            continue
        entry = series.setdefault(str(dataset.get("SeriesInstanceUID", path)), [0, rows, columns, cosines])
        entry[0] += frames
    total = 0
    for depth, rows, columns, cosines in series.values():
        row, column = np.asarray(cosines[:3]), np.asarray(cosines[3:])
        superior = np.abs([row[2], column[2], np.cross(row, column)[2]])  # LPS: z is superior
        total += (columns, rows, depth)[int(np.argmax(superior))]
    return total
