"""Pairs on one grid: volumes saved on other grids come back aligned from their scanner coordinates, and rigid
registration (the `registration` extra) recovers a known motion.

The volumes are an analytic head sampled directly in scanner (RAS) millimetres on each grid, so the
reference on the fixed grid never goes through the code under test.
"""

import sys

import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from data import datasets, readers, resample
from tests.helpers import write_dicom

# Smooth edges (4 mm): trilinear interpolation of a 2 mm grid then errs by a few percent of the peak at most
# (measured 3.6 %, bound 5 %).
EDGE_MM = 4.0
MAX_ERROR = 0.05
# Correlation of a resampled volume with the analytic one on the fixed grid: measured 0.99986 for the rotated,
# axis-permuted NIfTI; the truth one voxel off along any axis gives 0.961 to 0.992, so the bound tells them apart.
CORRELATION_BOUND = 0.999
FIXED_AFFINE = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -46], [0, 0, 2.5, -30], [0, 0, 0, 1]])
FIXED_SHAPE = (40, 46, 24)


def analytic_head(points: np.ndarray, contrast: str) -> np.ndarray:
    """Intensity at RAS points [..., 3]: an ellipsoid head with an off-centre 'ventricle' and 'lesion' (asymmetric,
    so that a rotation shows), smooth edges; T1 and T2 give the structures different brightness."""
    def inside(centre, radii):
        distance = np.linalg.norm((points - np.array(centre)) / np.array(radii), axis=-1)
        return 1 / (1 + np.exp((distance - 1) * min(radii) / (EDGE_MM / 4)))
    brightness = {"t1": (800, -500, 300), "t2": (500, 700, -300)}[contrast]
    return (brightness[0] * inside((0, 0, 0), (30, 36, 22)) + brightness[1] * inside((8, 6, 2), (6, 12, 6))
            + brightness[2] * inside((-12, -10, -6), (7, 5, 5))).astype(np.float32)


def grid_points(affine: np.ndarray, shape) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return index @ affine[:3, :3].T + affine[:3, 3]


# Voxel axes stored as (z, -x, y): readers.py reorients such a file, so the axial grid is not the file's voxel grid.
PERMUTED_AXES = np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]], float)


def rotated_affine(degrees=(20, -10, 15), shift=(3.0, -4.0, 2.0), spacing=(1.6, 2.2, 1.8)) -> np.ndarray:
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    affine[:3, :3] = rotation @ PERMUTED_AXES @ np.diag(spacing)
    centre = affine[:3, :3] @ (np.array((48, 40, 36)) / 2)
    affine[:3, 3] = np.array(shift) - centre
    return affine


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def write_pair(tmp_path, write_nifti, moving_affine, moving_shape=(48, 40, 36)):
    fixed = write_nifti(tmp_path / "t1" / "sub-01_T1w.nii.gz",
                        analytic_head(grid_points(FIXED_AFFINE, FIXED_SHAPE), "t1"), FIXED_AFFINE)
    moving = write_nifti(tmp_path / "t2" / "sub-01_T2w.nii.gz",
                         analytic_head(grid_points(moving_affine, moving_shape), "t2"), moving_affine)
    return readers.read_path(str(fixed))[0], readers.read_path(str(moving))[0]


def test_rotated_shifted_nifti_on_another_voxel_size_comes_back_aligned(tmp_path, write_nifti):
    fixed, moving = write_pair(tmp_path, write_nifti, rotated_affine())
    resampled = resample.resample_like(moving, fixed)
    assert resampled.shape == fixed.data.shape
    # The T2 the fixed grid should hold, read back through the reader (so laid out like fixed.data).
    truth_path = tmp_path / "truth_t2.nii.gz"
    write_nifti(truth_path, analytic_head(grid_points(FIXED_AFFINE, FIXED_SHAPE), "t2"), FIXED_AFFINE)
    truth = readers.read_path(str(truth_path))[0].data
    inside = resampled != 0  # the moving field of view
    assert inside.mean() > 0.5
    assert correlation(resampled[inside], truth[inside]) > CORRELATION_BOUND
    assert np.abs(resampled - truth)[inside].max() < MAX_ERROR * np.abs(truth).max()
    for axis in range(3):  # the bound is tight enough to see a single voxel of misplacement
        assert correlation(resampled[inside], np.roll(truth, 1, axis=axis)[inside]) < CORRELATION_BOUND


def test_pairs_on_different_grids_are_resampled_onto_the_source_grid(tmp_path, write_nifti):
    """test_pairs_on_grids: grid 0 keeps T1 as read and resamples T2; grid 1 the reverse; none skips the pair."""
    fixed, moving = write_pair(tmp_path, write_nifti, rotated_affine())
    spec = datasets.DataSpec(test_a=str(tmp_path / "t1"), test_b=str(tmp_path / "t2"), min_foreground=0.2)
    grids = datasets.test_pairs_on_grids(spec, "world", (0, 1))
    for grid, native in ((0, fixed), (1, moving)):
        assert grids[grid]
        for pair in grids[grid]:
            assert pair[0].original.shape == pair[1].original.shape == native.data.shape[1:]
            scale = np.percentile(native.data[native.data > 0], 99.5)
            np.testing.assert_allclose(pair[grid].original, np.clip(native.data[pair[grid].index] / scale, 0, 1),
                                       rtol=1e-6, atol=1e-7)
    with pytest.raises(readers.BadFileError, match="no paired test slices"):
        datasets.test_pairs(spec, register="none")


def write_sagittal_series(folder, affine_ras: np.ndarray, shape) -> None:
    """A DICOM series of sagittal slices (rows head to feet, columns anterior to posterior) with its geometry tags."""
    points = grid_points(affine_ras, shape)  # [slice (x), row, column]
    values = analytic_head(points, "t2")
    lps = np.diag([-1.0, -1.0, 1.0])
    row_cosine, column_cosine = lps @ affine_ras[:3, 2] / 2.0, lps @ affine_ras[:3, 1] / 2.5
    folder.mkdir(parents=True)
    for k in range(shape[0]):
        stored = np.clip(values[k], 0, None).round()
        path = write_dicom(folder / f"IM{k:03d}.dcm", stored, "1.2.3.4", k + 1,
                           position=lps @ (affine_ras[:3, :3] @ (k, 0, 0) + affine_ras[:3, 3]),
                           orientation=(*row_cosine, *column_cosine))
        dataset = pydicom.dcmread(path)
        dataset.PixelSpacing = [2.5, 2.0]  # between rows, between columns
        dataset.save_as(path, enforce_file_format=True)


def test_dicom_series_in_another_orientation_comes_back_aligned(tmp_path, write_nifti):
    # Sagittal: slices along x (1.5 mm), rows from superior to inferior (2.5 mm), columns anterior to posterior (2 mm).
    affine = np.array([[1.5, 0, 0, -36], [0, 0, -2.0, 44], [0, -2.5, 0, 28], [0, 0, 0, 1]])
    write_sagittal_series(tmp_path / "dicom", affine, (48, 24, 46))
    fixed, _ = write_pair(tmp_path, write_nifti, rotated_affine())
    moving = readers.read_path(str(tmp_path / "dicom"))[0]
    resampled = resample.resample_like(moving, fixed)
    truth_path = tmp_path / "truth_t2.nii.gz"
    write_nifti(truth_path, np.clip(analytic_head(grid_points(FIXED_AFFINE, FIXED_SHAPE), "t2"), 0, None),
                FIXED_AFFINE)
    truth = readers.read_path(str(truth_path))[0].data
    inside = resampled != 0
    assert inside.mean() > 0.3
    assert correlation(resampled[inside], truth[inside]) > CORRELATION_BOUND


# ---------------------------------------------------------------- two files are a pair


def test_one_file_per_contrast_is_a_pair_whatever_the_names(tmp_path, write_nifti, caplog):
    volume = analytic_head(grid_points(FIXED_AFFINE, FIXED_SHAPE), "t1")
    a = write_nifti(tmp_path / "t1n.nii.gz", volume, FIXED_AFFINE)
    b = write_nifti(tmp_path / "t2w.nii.gz", 2 * volume, FIXED_AFFINE)
    caplog.set_level("INFO", logger="absl")
    pairs = datasets.test_pairs(datasets.DataSpec(test_a=str(a), test_b=str(b)))
    assert pairs and all(x.source == str(a) and y.source == str(b) for x, y in pairs)
    assert any("one test volume per contrast: pairing" in r.getMessage() for r in caplog.records)


def test_unpaired_ids_are_listed_with_how_to_name_files(tmp_path, write_nifti):
    volume = analytic_head(grid_points(FIXED_AFFINE, FIXED_SHAPE), "t1")
    for name in ("t1/alice.nii.gz", "t1/bob.nii.gz", "t2/carol.nii.gz", "t2/dave.nii.gz"):
        write_nifti(tmp_path / name, volume, FIXED_AFFINE)
    spec = datasets.DataSpec(test_a=str(tmp_path / "t1"), test_b=str(tmp_path / "t2"))
    with pytest.raises(readers.BadFileError) as error:
        datasets.test_pairs(spec)
    message = str(error.value)
    assert "\n" not in message and "T1 ids alice, bob; T2 ids carol, dave" in message and "sub-01_T1w" in message


# ---------------------------------------------------------------- rigid registration


def test_rigid_registration_recovers_a_known_motion(tmp_path, write_nifti):
    pytest.importorskip("SimpleITK", reason='rigid registration needs the optional extra: pip install -e ".[registration]"')
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", (4, -3, 5), degrees=True).as_matrix()
    motion[:3, 3] = (3.0, -2.0, 2.5)
    # The head sits 80 mm from the scanner origin (so the rotation centre matters), and moved by `motion`
    # between the series, but both series carry the same scanner geometry.
    offset = np.array([60.0, -40.0, 35.0])
    affine = FIXED_AFFINE.copy()
    affine[:3, 3] += offset
    fixed_points = grid_points(affine, FIXED_SHAPE)
    moved = analytic_head((fixed_points - motion[:3, 3]) @ np.linalg.inv(motion[:3, :3]).T - offset, "t2")
    fixed = readers.read_path(str(write_nifti(tmp_path / "t1.nii.gz", analytic_head(fixed_points - offset, "t1"),
                                              affine)))[0]
    moving = readers.read_path(str(write_nifti(tmp_path / "t2.nii.gz", moved, affine)))[0]
    found = resample.rigid_transform(fixed.data, resample.axial_affine(fixed), moving.data,
                                     resample.axial_affine(moving))
    angle = np.degrees(Rotation.from_matrix(found[:3, :3] @ motion[:3, :3].T).magnitude())
    assert angle < 1.0
    head = fixed_points[::4, ::4, ::4].reshape(-1, 3)
    head = head[np.linalg.norm((head - offset) / (30, 36, 22), axis=1) < 1]  # points of the head
    error = np.linalg.norm(head @ (found - motion)[:3, :3].T + (found - motion)[:3, 3], axis=1).max()
    assert error < 2.0  # within a voxel (2 to 2.5 mm) everywhere in the head
    world_only = resample.resample_like(moving, fixed, "world")
    registered = resample.resample_like(moving, fixed, "rigid")
    truth = analytic_head(fixed_points - offset, "t2")
    truth_axial = readers.read_path(str(write_nifti(tmp_path / "truth.nii.gz", truth, affine)))[0].data
    assert correlation(registered, truth_axial) > CORRELATION_BOUND > correlation(world_only, truth_axial)


def test_rigid_without_simpleitk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK now raises ImportError
    volume = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[registration\]"'):
        resample.rigid_transform(volume, np.eye(4), volume, np.eye(4))
