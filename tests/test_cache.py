"""data/cache.py: cached slices equal the in-memory ones to the stored precision, are never silently stale,
survive interrupted builds, detect damaged shards; the memory estimate and refusal."""

import logging
import multiprocessing
import os

import numpy as np
import pytest

from data import cache, datasets, pipeline, readers
from data.datasets import DataSpec
from tests.helpers import write_dicom, write_png

# uint16 storage: half a quantisation step, plus float32 rounding of values up to 1.
TOLERANCE = cache.PRECISION + np.finfo(np.float32).eps
DEPTH = 6  # axial slices per volume
EMPTY = (0, DEPTH - 1)  # slices left empty, dropped by the foreground filter


def volume(seed: int, shape=(40, 48), depth: int = DEPTH, empty=EMPTY) -> np.ndarray:
    """[X, Y, Z]: a disc of random texture growing with z (foreground 15-40 %) in every slice but `empty`."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    data = np.zeros((*shape, depth), np.float32)
    for z in range(depth):
        if z not in empty:
            disc = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 < (min(shape) / 2.5 * (0.5 + z / depth)) ** 2
            data[..., z] = disc * rng.uniform(100, 3000, shape) * (1 + z / depth)
    return data


@pytest.fixture
def files_spec(tmp_path, write_nifti):
    """Two domains of NIfTI volumes in folders, as --train_a/--train_b; one volume has its axes swapped and lies in
    a subfolder that sorts before the files next to it (read_path orders by path, a folder walk would not)."""
    for i in range(3):
        write_nifti(tmp_path / "t1" / f"case{i}_t1.nii.gz", volume(i))
        write_nifti(tmp_path / "t2" / f"case{i + 3}_t2.nii", volume(10 + i, shape=(300, 200)))  # resized on the canvas
    swapped = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)  # superior is voxel axis 0
    write_nifti(tmp_path / "t1" / "a_nested" / "case9_t1.nii.gz", volume(9).transpose(2, 0, 1), swapped)
    return DataSpec(train_a=str(tmp_path / "t1"), train_b=str(tmp_path / "t2"))


@pytest.fixture
def absl_info(caplog):
    caplog.set_level(logging.INFO, logger="absl")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "absl"]


def assert_cached_equal(cached: cache.CachedSlices, in_memory: list[datasets.Slice]) -> None:
    assert len(cached) == len(in_memory) and cached.shape == (len(in_memory), 256, 256)
    for i, expected in enumerate(in_memory):
        got = cached.slice(i)
        assert got.image.dtype == np.float32
        np.testing.assert_allclose(got.image, expected.image, rtol=0, atol=TOLERANCE)
        np.testing.assert_array_equal(got.image == 0, expected.image == 0)  # background and padding stay exactly 0
        assert (got.subject, got.source, got.index, got.geometry) == (
            expected.subject, expected.source, expected.index, expected.geometry)


def test_cached_file_slices_equal_the_in_memory_slices(tmp_path, files_spec):
    slices_a, slices_b, manifest = cache.build_or_open(files_spec, str(tmp_path / "cache"))
    memory_a, memory_b = datasets.training_slices(files_spec)
    assert len(memory_a) == 4 * (DEPTH - len(EMPTY))  # the filter ran: empty slices are not cached
    assert_cached_equal(slices_a, memory_a)
    assert_cached_equal(slices_b, memory_b)
    assert manifest["domains"]["train_a"]["count"] == len(memory_a)
    assert manifest["dtype"] == "<u2" and manifest["unit"] == 65535


def test_cached_synthetic_slices_equal_the_in_memory_slices(tmp_path):
    spec = DataSpec(synthetic_subjects=3, synthetic_seed=5)
    slices_a, slices_b, _ = cache.build_or_open(spec, str(tmp_path))
    memory_a, memory_b = datasets.training_slices(spec)
    assert_cached_equal(slices_a, memory_a)
    assert_cached_equal(slices_b, memory_b)


def test_a_second_open_decodes_nothing(tmp_path, files_spec, monkeypatch):
    first = cache.build_or_open(files_spec, str(tmp_path / "cache"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file although the cache is valid")

    monkeypatch.setattr(readers, "read_path", no_decoding)
    monkeypatch.setattr(datasets, "volume_slices", no_decoding)
    second = cache.build_or_open(files_spec, str(tmp_path / "cache"))
    assert second[2]["folder"] == first[2]["folder"]
    np.testing.assert_array_equal(second[0][3], first[0][3])


def test_a_changed_data_flag_rebuilds_the_cache(tmp_path, files_spec, absl_info):
    cache_dir = str(tmp_path / "cache")
    cache.build_or_open(files_spec, cache_dir)
    stricter = DataSpec(train_a=files_spec.train_a, train_b=files_spec.train_b, min_foreground=0.2)
    slices_a, slices_b, manifest = cache.build_or_open(stricter, cache_dir)
    memory_a, memory_b = datasets.training_slices(stricter)
    assert len(memory_a) < 4 * (DEPTH - len(EMPTY))  # the flag changes what is cached
    assert_cached_equal(slices_a, memory_a)
    assert_cached_equal(slices_b, memory_b)
    assert manifest["key"]["settings"]["min_foreground"] == 0.2
    assert any("min_foreground 0.05 -> 0.2" in message for message in absl_info())
    assert sorted(os.listdir(cache_dir)) == [".lock", "manifest.json", manifest["folder"]]  # the old shards are gone


def test_a_flag_that_never_changes_training_slices_keeps_the_cache(tmp_path, files_spec):
    first = cache.build_or_open(files_spec, str(tmp_path / "cache"))[2]
    other_test_split = DataSpec(train_a=files_spec.train_a, train_b=files_spec.train_b, test_a="x", test_b="y")
    assert cache.build_or_open(other_test_split, str(tmp_path / "cache"))[2]["folder"] == first["folder"]


def test_a_modified_input_file_rebuilds_the_cache(tmp_path, files_spec, write_nifti, absl_info):
    cache_dir = str(tmp_path / "cache")
    cache.build_or_open(files_spec, cache_dir)
    write_nifti(tmp_path / "t2" / "case3_t2.nii", volume(99, shape=(300, 200)))
    slices_a, slices_b, _ = cache.build_or_open(files_spec, cache_dir)
    assert any("input files changed" in message for message in absl_info())
    assert_cached_equal(slices_b, datasets.training_slices(files_spec)[1])


def interrupt_after(monkeypatch, volumes: int) -> None:
    """Make the build fail while decoding volume number `volumes` + 1."""
    original, calls = datasets.volume_slices, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > volumes:
            raise KeyboardInterrupt("interrupted mid-build")
        return original(*args, **kwargs)

    monkeypatch.setattr(datasets, "volume_slices", failing)


def test_an_interrupted_build_leaves_nothing_trusted(tmp_path, files_spec, monkeypatch):
    cache_dir = str(tmp_path / "cache")
    interrupt_after(monkeypatch, 5)  # domain A is written, domain B is half-way
    with pytest.raises(KeyboardInterrupt):
        cache.build_or_open(files_spec, cache_dir)
    assert os.listdir(cache_dir) == [".lock"]
    monkeypatch.undo()
    slices_a, _, _ = cache.build_or_open(files_spec, cache_dir)
    assert_cached_equal(slices_a, datasets.training_slices(files_spec)[0])


def test_a_killed_build_is_not_trusted_and_its_leftovers_are_removed(tmp_path, files_spec, monkeypatch):
    """kill -9 runs no cleanup: the half-written shards stay on disk until the next build."""
    cache_dir = str(tmp_path / "cache")
    first_manifest = cache.build_or_open(files_spec, cache_dir)[2]
    changed = DataSpec(train_a=files_spec.train_a, train_b=files_spec.train_b, min_foreground=0.2)
    interrupt_after(monkeypatch, 5)
    monkeypatch.setattr(cache.shutil, "rmtree", lambda *args, **kwargs: None)
    with pytest.raises(KeyboardInterrupt):
        cache.build_or_open(changed, cache_dir)
    leftovers = [name for name in os.listdir(cache_dir) if name.startswith(".building-")]
    assert leftovers and os.listdir(os.path.join(cache_dir, leftovers[0]))  # a half-written shard exists
    with open(os.path.join(cache_dir, "manifest.json")) as file:
        assert file.read().count(first_manifest["folder"]) == 1  # the manifest still names the old build
    monkeypatch.undo()
    slices_a, _, manifest = cache.build_or_open(changed, cache_dir)  # the old key does not match: rebuilt
    assert manifest["folder"] != first_manifest["folder"]
    assert_cached_equal(slices_a, datasets.training_slices(changed)[0])
    assert sorted(os.listdir(cache_dir)) == [".lock", "manifest.json", manifest["folder"]]


def test_a_truncated_shard_is_detected_and_rebuilt(tmp_path, files_spec, absl_info):
    cache_dir = str(tmp_path / "cache")
    slices_a, _, manifest = cache.build_or_open(files_spec, cache_dir)
    os.truncate(slices_a.path, os.path.getsize(slices_a.path) - 1)
    rebuilt_a, _, rebuilt = cache.build_or_open(files_spec, cache_dir)
    expected = manifest["domains"]["train_a"]["count"] * cache.SLICE_BYTES
    assert any(f"{expected - 1} bytes, the manifest says {expected}" in message for message in absl_info())
    assert rebuilt["folder"] != manifest["folder"]
    assert_cached_equal(rebuilt_a, datasets.training_slices(files_spec)[0])


def test_a_slice_changed_on_disk_fails_its_checksum(tmp_path, files_spec):
    slices_a, _, _ = cache.build_or_open(files_spec, str(tmp_path / "cache"))
    with open(slices_a.path, "r+b") as file:
        file.seek(2 * cache.SLICE_BYTES + 1000)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 1]))  # one bit of slice 2
    slices_a[1]
    with pytest.raises(cache.CacheError, match=rf"^{slices_a.path}: slice 2 is corrupt [^\n]*$"):
        slices_a[2]


def open_folder(args) -> str:
    spec, cache_dir = args
    return cache.build_or_open(spec, cache_dir)[2]["folder"]


def test_processes_opening_at_once_share_one_build(tmp_path, files_spec):
    with multiprocessing.get_context("fork").Pool(3) as pool:
        folders = pool.map(open_folder, [(files_spec, str(tmp_path / "cache"))] * 3)
    assert len(set(folders)) == 1
    assert sorted(os.listdir(tmp_path / "cache")) == [".lock", "manifest.json", folders[0]]


def test_the_cache_refuses_to_become_one_array(tmp_path):
    slices_a, _, _ = cache.build_or_open(DataSpec(synthetic_subjects=2), str(tmp_path))
    with pytest.raises(cache.CacheError, match="refusing to load all 2 cached slices into memory"):
        np.asarray(slices_a)


def test_the_pipeline_reads_the_cache_in_the_order_it_reads_memory(tmp_path):
    spec = DataSpec(synthetic_subjects=4)
    slices_a, slices_b, _ = cache.build_or_open(spec, str(tmp_path))
    memory_a, memory_b = (datasets.stack(s) for s in datasets.training_slices(spec))
    from_cache = pipeline.unpaired_dataset(slices_a, slices_b, 2, seed=3, epoch=1)
    from_memory = pipeline.unpaired_dataset(memory_a, memory_b, 2, seed=3, epoch=1)
    for (cached_a, cached_b), (expected_a, expected_b) in zip(from_cache.take(4), from_memory.take(4)):
        # x * 2 - 1 in the pipeline doubles the stored error
        np.testing.assert_allclose(cached_a.numpy(), expected_a.numpy(), rtol=0, atol=2 * TOLERANCE)
        np.testing.assert_allclose(cached_b.numpy(), expected_b.numpy(), rtol=0, atol=2 * TOLERANCE)


def test_the_estimate_from_headers_is_within_10_percent_for_nifti(tmp_path, write_nifti, monkeypatch):
    """Volumes with foreground in every slice: the estimate counts what is kept (and reads no pixel)."""
    swapped = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)  # superior is voxel axis 1
    for i in range(2):
        write_nifti(tmp_path / "a" / f"s{i}_t1.nii.gz", volume(i, depth=7, empty=()))
        write_nifti(tmp_path / "b" / f"s{i}_t2.nii.gz", volume(i, depth=5, empty=()).transpose(0, 2, 1), swapped)
    spec = DataSpec(train_a=str(tmp_path / "a"), train_b=str(tmp_path / "b"))
    in_memory = sum(datasets.stack(slices).nbytes for slices in datasets.training_slices(spec))
    monkeypatch.setattr(readers, "read_path", lambda *args, **kwargs: pytest.fail("decoded pixels"))
    assert abs(cache.estimate_bytes(spec) - in_memory) <= 0.1 * in_memory


def test_dicom_series_and_png_files_are_cached_and_estimated_from_headers(tmp_path):
    """An axial and a sagittal series (3 files of 30 rows each: 30 axial slices) and three PNGs, textured throughout."""
    rng = np.random.default_rng(0)
    for uid, orientation, files in (("1.2.3.1", (1, 0, 0, 0, 1, 0), 4), ("1.2.3.2", (0, 1, 0, 0, 0, -1), 3)):
        (tmp_path / "a" / uid).mkdir(parents=True)
        for k in range(files):
            write_dicom(tmp_path / "a" / uid / f"IM{k}", rng.integers(100, 3000, (30, 40)), uid, k + 1,
                        position=(2.0 * k, 0, 2.0 * k), orientation=orientation)
    for k in range(3):
        write_png(tmp_path / "b" / f"s{k}.png", rng.integers(100, 3000, (50, 60)).astype(np.uint16))
    spec = DataSpec(train_a=str(tmp_path / "a"), train_b=str(tmp_path / "b"))
    memory_a, memory_b = datasets.training_slices(spec)
    assert (len(memory_a), len(memory_b)) == (4 + 30, 3)
    slices_a, slices_b, _ = cache.build_or_open(spec, str(tmp_path / "cache"))
    assert_cached_equal(slices_a, memory_a)
    assert_cached_equal(slices_b, memory_b)
    assert cache.estimate_bytes(spec) == (4 + 30 + 3) * 256 * 256 * 4


def test_the_estimate_is_an_upper_bound_when_slices_are_dropped(files_spec):
    in_memory = sum(datasets.stack(slices).nbytes for slices in datasets.training_slices(files_spec))
    assert in_memory < cache.estimate_bytes(files_spec) <= in_memory * DEPTH / (DEPTH - len(EMPTY))


def test_the_refusal_names_the_estimate_and_suggests_cache_dir():
    spec = DataSpec(synthetic_subjects=1000)  # 2 x 1000 slices of 256 KiB: 0.52 GB
    assert cache.estimate_bytes(spec) == 2 * 1000 * 256 * 256 * 4
    assert cache.memory_refusal(spec, available=2 * cache.estimate_bytes(spec)) is None
    message = cache.memory_refusal(spec, available=10**9)
    assert message == ("the training slices need about 0.5 GB in memory (estimated before decoding), more than half of "
                       "the 1.0 GB available; pass --cache_dir=DIR to preprocess them once to disk and stream them "
                       "from there")


def test_available_memory_is_positive_and_at_most_the_total():
    with open("/proc/meminfo") as file:
        total = next(int(line.split()[1]) * 1024 for line in file if line.startswith("MemTotal:"))
    assert 0 < cache.available_memory_bytes() <= total
